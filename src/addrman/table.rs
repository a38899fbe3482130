//! The tables: Bitcoin Core's `AddrManImpl` (`src/addrman.cpp`), as data
//! and synchronous functions over a clock in unix seconds.

use std::{collections::HashMap, hash::Hash};

use siphasher::sip::SipHasher24;
use std::hash::Hasher;

use crate::policy::{Host, NetGroup, Network, PeerAddr, is_routable};

/// Buckets of the new table.
pub const NEW_BUCKETS: usize = 1024;
/// Buckets of the tried table.
pub const TRIED_BUCKETS: usize = 256;
/// Places in a bucket.
pub const BUCKET_SIZE: usize = 64;
/// The most addresses the tables hold: one place each at least.
pub const MAX_ENTRIES: usize = (NEW_BUCKETS + TRIED_BUCKETS) * BUCKET_SIZE;
/// New buckets one source group can reach.
const NEW_BUCKETS_PER_SOURCE_GROUP: u64 = 64;
/// New buckets one address can sit in.
const NEW_BUCKETS_PER_ADDRESS: u8 = 8;
/// Tried buckets one group can reach.
const TRIED_BUCKETS_PER_GROUP: u64 = 8;
/// How many test-before-evict collisions wait at most.
const MAX_COLLISIONS: usize = 10;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// An address not heard of for this long is terrible.
const HORIZON: u64 = 30 * DAY;
/// Failures of a never-successful address before it is terrible.
const RETRIES: u32 = 3;
/// Failures in `MIN_FAIL` before a once-good address is terrible.
const MAX_FAILURES: u32 = 10;
const MIN_FAIL: u64 = 7 * DAY;
/// A tried occupant that worked this recently keeps its place.
const REPLACEMENT: u64 = 4 * HOUR;
/// How long a collision waits for its test before the newcomer wins.
const TEST_WINDOW: u64 = 40 * MINUTE;

/// Where an address came from: what bucketing is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// A peer told us (`addr` messages): its host.
    Peer(Host),
    /// A DNS seed answered, by the seed's name ([`Host::name`]).
    Seed(Host),
    /// The node's operator, or a saved file of unknown origin.
    User,
}

impl Source {
    /// The group bucketing uses for this source.
    pub(crate) fn group(self) -> NetGroup {
        match self {
            Self::Peer(h) | Self::Seed(h) => h.netgroup(),
            Self::User => NetGroup::Local,
        }
    }
}

/// What the table knows of one address.
#[derive(Clone, Debug)]
pub(crate) struct Info<A> {
    pub(crate) addr: A,
    pub(crate) source: NetGroup,
    /// When it was last heard of (unix seconds).
    pub(crate) time: u64,
    pub(crate) last_try: u64,
    pub(crate) last_count_attempt: u64,
    pub(crate) last_success: u64,
    pub(crate) attempts: u32,
    /// How many new buckets hold it (0 in tried): the first `refs` of
    /// `buckets`.
    pub(crate) refs: u8,
    pub(crate) buckets: [u16; NEW_BUCKETS_PER_ADDRESS as usize],
    pub(crate) tried: bool,
}

impl<A> Info<A> {
    /// Core's `IsTerrible`: too old, from the future, or failing.
    pub(crate) fn is_terrible(&self, now: u64) -> bool {
        if self.last_try > 0 && now.saturating_sub(self.last_try) <= MINUTE {
            return false;
        }
        if self.time > now + 10 * MINUTE {
            return true;
        }
        if now.saturating_sub(self.time) > HORIZON {
            return true;
        }
        if self.last_success == 0 && self.attempts >= RETRIES {
            return true;
        }
        now.saturating_sub(self.last_success) > MIN_FAIL && self.attempts >= MAX_FAILURES
    }

    /// Core's `GetChance`: recent tries and failures make selection less
    /// likely.
    pub(crate) fn chance(&self, now: u64) -> f64 {
        let mut chance = 1.0;
        if now.saturating_sub(self.last_try) < 10 * MINUTE {
            chance *= 0.01;
        }
        chance * 0.66f64.powi(self.attempts.min(8) as i32)
    }
}

/// Why `add` refused an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddError {
    Unroutable,
    Known,
    NoRoom,
}

/// The tables. Ids index `entries`; a place holds an id or `EMPTY`.
pub(crate) struct Table<A> {
    key: (u64, u64),
    pub(crate) admit_local: bool,
    entries: Vec<Option<Info<A>>>,
    free: Vec<u32>,
    ids: HashMap<A, u32>,
    new: Vec<u32>,
    tried: Vec<u32>,
    new_count: [u8; NEW_BUCKETS],
    tried_count: [u8; TRIED_BUCKETS],
    pub(crate) n_new: usize,
    pub(crate) n_tried: usize,
    collisions: Vec<u32>,
    /// When any address last worked (Core's `m_last_good`, 1 at start).
    last_good: u64,
    rng: fastrand::Rng,
}

const EMPTY: u32 = u32::MAX;

impl<A: PeerAddr + Clone + Eq + Hash> Table<A> {
    pub(crate) fn new(key: (u64, u64), seed: u64) -> Self {
        Self {
            key,
            admit_local: false,
            entries: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            new: vec![EMPTY; NEW_BUCKETS * BUCKET_SIZE],
            tried: vec![EMPTY; TRIED_BUCKETS * BUCKET_SIZE],
            new_count: [0; NEW_BUCKETS],
            tried_count: [0; TRIED_BUCKETS],
            n_new: 0,
            n_tried: 0,
            collisions: Vec::new(),
            last_good: 1,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    pub(crate) fn key(&self) -> (u64, u64) {
        self.key
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    // ===== keyed hashes =====

    fn hasher(&self) -> SipHasher24 {
        SipHasher24::new_with_keys(self.key.0, self.key.1)
    }

    fn hash_group(&self, h: &mut SipHasher24, g: NetGroup) {
        g.hash(h);
    }

    /// Core's `GetNewBucket`: an address's group and its source's group
    /// choose one of 64 buckets per source group.
    fn new_bucket(&self, addr: &A, source: NetGroup) -> usize {
        let mut h = self.hasher();
        h.write_u8(b'1');
        self.hash_group(&mut h, addr.host().netgroup());
        self.hash_group(&mut h, source);
        let slice = h.finish() % NEW_BUCKETS_PER_SOURCE_GROUP;
        let mut h = self.hasher();
        h.write_u8(b'2');
        self.hash_group(&mut h, source);
        h.write_u64(slice);
        (h.finish() % NEW_BUCKETS as u64) as usize
    }

    /// Core's `GetTriedBucket`: one of 8 buckets per group.
    fn tried_bucket(&self, addr: &A) -> usize {
        let mut h = self.hasher();
        h.write_u8(b'3');
        addr.hash(&mut h);
        let slice = h.finish() % TRIED_BUCKETS_PER_GROUP;
        let mut h = self.hasher();
        h.write_u8(b'4');
        self.hash_group(&mut h, addr.host().netgroup());
        h.write_u64(slice);
        (h.finish() % TRIED_BUCKETS as u64) as usize
    }

    /// Core's `GetBucketPosition`.
    fn position(&self, addr: &A, new: bool, bucket: usize) -> usize {
        let mut h = self.hasher();
        h.write_u8(if new { b'N' } else { b'K' });
        h.write_u64(bucket as u64);
        addr.hash(&mut h);
        (h.finish() % BUCKET_SIZE as u64) as usize
    }

    // ===== entries =====

    fn info(&self, id: u32) -> Option<&Info<A>> {
        self.entries.get(id as usize).and_then(Option::as_ref)
    }

    fn info_mut(&mut self, id: u32) -> Option<&mut Info<A>> {
        self.entries.get_mut(id as usize).and_then(Option::as_mut)
    }

    pub(crate) fn get(&self, addr: &A) -> Option<&Info<A>> {
        self.ids.get(addr).and_then(|&id| self.info(id))
    }

    fn create(&mut self, info: Info<A>) -> u32 {
        let addr = info.addr.clone();
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(info);
                id
            }
            None => {
                self.entries.push(Some(info));
                (self.entries.len() - 1) as u32
            }
        };
        self.ids.insert(addr, id);
        id
    }

    fn delete(&mut self, id: u32) {
        if let Some(info) = self.entries.get_mut(id as usize).and_then(Option::take) {
            self.ids.remove(&info.addr);
            self.free.push(id);
            self.collisions.retain(|&c| c != id);
        }
    }

    /// Puts entry `id` in a new place.
    fn link_new(&mut self, id: u32, bucket: usize, pos: usize) {
        self.new[bucket * BUCKET_SIZE + pos] = id;
        self.new_count[bucket] += 1;
        if let Some(info) = self.info_mut(id) {
            if let Some(slot) = info.buckets.get_mut(usize::from(info.refs)) {
                *slot = bucket as u16;
                info.refs += 1;
            }
        }
    }

    /// Empties a new place; returns the entry's id and whether no bucket
    /// holds it any more.
    fn unlink_new(&mut self, bucket: usize, pos: usize) -> Option<(u32, bool)> {
        let place = bucket * BUCKET_SIZE + pos;
        let id = self.new[place];
        if id == EMPTY {
            return None;
        }
        self.new[place] = EMPTY;
        self.new_count[bucket] -= 1;
        let info = self.info_mut(id)?;
        let n = usize::from(info.refs);
        if let Some(i) = info.buckets[..n]
            .iter()
            .position(|&b| usize::from(b) == bucket)
        {
            info.buckets.copy_within(i + 1..n, i);
            info.refs -= 1;
        }
        Some((id, info.refs == 0))
    }

    /// Empties a new place, deleting its entry when no bucket holds it.
    fn clear_new(&mut self, bucket: usize, pos: usize) {
        if let Some((id, true)) = self.unlink_new(bucket, pos) {
            self.n_new -= 1;
            self.delete(id);
        }
    }

    /// Whether an address may enter at all.
    pub(crate) fn admissible(&self, addr: &A) -> bool {
        let host = addr.host();
        match host {
            Host::Ip(ip) => self.admit_local || is_routable(ip),
            _ => host.network() != Network::Local,
        }
    }

    /// Core's `AddSingle`: a new address goes into a bucket of its source
    /// group; a known one may get one more reference, less likely the
    /// more it has.
    pub(crate) fn add(
        &mut self,
        addr: A,
        source: Source,
        time: u64,
        now: u64,
    ) -> Result<bool, AddError> {
        if !self.admissible(&addr) {
            return Err(AddError::Unroutable);
        }
        // A time in the future, or none, is taken as a while ago (Core's
        // penalty for unverified timestamps).
        let time = if time == 0 || time > now + 10 * MINUTE {
            now.saturating_sub(5 * DAY)
        } else {
            time
        };
        let src = source.group();
        let id = match self.ids.get(&addr) {
            Some(&id) => {
                let Some(info) = self.info_mut(id) else {
                    return Err(AddError::Known);
                };
                info.time = info.time.max(time);
                if info.tried || info.refs >= NEW_BUCKETS_PER_ADDRESS {
                    return Err(AddError::Known);
                }
                // 1 in 2^refs: an address many sources repeat does not
                // spread over many buckets.
                let factor = 1u32 << info.refs;
                if factor > 1 && self.rng.u32(..factor) != 0 {
                    return Err(AddError::Known);
                }
                id
            }
            None => {
                self.n_new += 1;
                self.create(Info {
                    addr: addr.clone(),
                    source: src,
                    time,
                    last_try: 0,
                    last_count_attempt: 0,
                    last_success: 0,
                    attempts: 0,
                    refs: 0,
                    buckets: [0; NEW_BUCKETS_PER_ADDRESS as usize],
                    tried: false,
                })
            }
        };
        let bucket = self.new_bucket(&addr, src);
        let pos = self.position(&addr, true, bucket);
        let place = bucket * BUCKET_SIZE + pos;
        let occupant = self.new[place];
        if occupant == id {
            return Ok(false);
        }
        let mut insert = occupant == EMPTY;
        if !insert {
            let (mine, theirs) = (self.info(id).map_or(0, |i| i.refs), self.info(occupant));
            // Overwrite a terrible occupant, or one held elsewhere too
            // when this one has no other place.
            insert = theirs.is_none_or(|t| t.is_terrible(now) || (t.refs > 1 && mine == 0));
            if insert {
                self.clear_new(bucket, pos);
            }
        }
        if insert {
            self.link_new(id, bucket, pos);
            return Ok(true);
        }
        if self.info(id).is_some_and(|i| i.refs == 0) {
            self.n_new -= 1;
            self.delete(id);
        }
        Err(AddError::NoRoom)
    }

    /// Core's `Attempt_`: a dial to `addr` began; a failure counts once per
    /// success.
    pub(crate) fn attempt(&mut self, addr: &A, count_failure: bool, now: u64) {
        let Some(&id) = self.ids.get(addr) else {
            return;
        };
        let last_good = self.last_good;
        if let Some(info) = self.info_mut(id) {
            info.last_try = now;
            // One failure counts per success *anywhere* (Core's
            // `m_last_good`): while the node is online, each failure
            // counts; while it is offline, failures do not pile up.
            if count_failure && info.last_count_attempt < last_good {
                info.last_count_attempt = now;
                info.attempts = info.attempts.saturating_add(1);
            }
        }
    }

    /// Core's `Connected_`: heard from now.
    pub(crate) fn connected(&mut self, addr: &A, now: u64) {
        let Some(&id) = self.ids.get(addr) else {
            return;
        };
        if let Some(info) = self.info_mut(id) {
            if now.saturating_sub(info.time) > 20 * MINUTE {
                info.time = now;
            }
        }
    }

    /// Core's `Good_`: a connection worked. The address moves to tried,
    /// unless its place there is taken: then the occupant is tested first
    /// (test-before-evict) and the move waits in the collision set.
    pub(crate) fn good(&mut self, addr: &A, now: u64) -> bool {
        let Some(&id) = self.ids.get(addr) else {
            return false;
        };
        self.last_good = self.last_good.max(now);
        let Some(info) = self.info_mut(id) else {
            return false;
        };
        info.last_success = now;
        info.last_try = now;
        info.attempts = 0;
        if info.tried {
            return false;
        }
        self.make_tried_or_collide(id, true)
    }

    fn make_tried_or_collide(&mut self, id: u32, test_before_evict: bool) -> bool {
        let Some(addr) = self.info(id).map(|i| i.addr.clone()) else {
            return false;
        };
        let bucket = self.tried_bucket(&addr);
        let pos = self.position(&addr, false, bucket);
        let occupant = self.tried[bucket * BUCKET_SIZE + pos];
        if test_before_evict && occupant != EMPTY && occupant != id {
            if self.collisions.len() < MAX_COLLISIONS && !self.collisions.contains(&id) {
                self.collisions.push(id);
            }
            return false;
        }
        self.make_tried(id);
        true
    }

    /// Core's `MakeTried`: out of every new bucket, into its tried place;
    /// an occupant goes back to new.
    fn make_tried(&mut self, id: u32) {
        let Some(addr) = self.info(id).map(|i| i.addr.clone()) else {
            return;
        };
        // Out of every new bucket that holds it (Core looks at all 1024;
        // the entry knows its few).
        let held: Vec<u16> = self
            .info(id)
            .map(|i| i.buckets[..usize::from(i.refs)].to_vec())
            .unwrap_or_default();
        for bucket in held {
            let bucket = usize::from(bucket);
            let pos = self.position(&addr, true, bucket);
            if self.new[bucket * BUCKET_SIZE + pos] == id {
                self.unlink_new(bucket, pos);
            }
        }
        self.n_new -= 1;
        let bucket = self.tried_bucket(&addr);
        let pos = self.position(&addr, false, bucket);
        let place = bucket * BUCKET_SIZE + pos;
        let evicted = self.tried[place];
        if evicted != EMPTY && evicted != id {
            // The occupant goes back to new, in a bucket of its source.
            self.tried[place] = EMPTY;
            self.tried_count[bucket] -= 1;
            self.n_tried -= 1;
            if let Some(old) = self.info_mut(evicted) {
                old.tried = false;
                old.refs = 0;
            }
            self.n_new += 1;
            self.put_back_in_new(evicted);
        }
        if self.tried[place] == EMPTY {
            self.tried[place] = id;
            self.tried_count[bucket] += 1;
            self.n_tried += 1;
        }
        if let Some(info) = self.info_mut(id) {
            info.tried = true;
            info.refs = 0;
        }
    }

    /// Puts an entry evicted from tried into its new place, clearing it.
    fn put_back_in_new(&mut self, id: u32) {
        let Some((addr, src)) = self.info(id).map(|i| (i.addr.clone(), i.source)) else {
            return;
        };
        let bucket = self.new_bucket(&addr, src);
        let pos = self.position(&addr, true, bucket);
        self.clear_new(bucket, pos);
        self.link_new(id, bucket, pos);
    }

    /// Core's `ResolveCollisions_`: settles the waiting tried collisions.
    pub(crate) fn resolve_collisions(&mut self, now: u64) {
        let pending = std::mem::take(&mut self.collisions);
        for id in pending {
            let Some(addr) = self.info(id).map(|i| i.addr.clone()) else {
                continue;
            };
            let bucket = self.tried_bucket(&addr);
            let pos = self.position(&addr, false, bucket);
            let occupant = self.tried[bucket * BUCKET_SIZE + pos];
            let Some(old) = self.info(occupant).cloned() else {
                // The place is free now.
                self.make_tried(id);
                continue;
            };
            let new_success = self.info(id).map_or(0, |i| i.last_success);
            if now.saturating_sub(old.last_success) < REPLACEMENT {
                // The occupant works: it stays.
            } else if now.saturating_sub(old.last_try) < REPLACEMENT {
                if now.saturating_sub(old.last_try) > MINUTE {
                    // Tried and failed to connect: replace it.
                    self.make_tried(id);
                } else {
                    self.collisions.push(id);
                }
            } else if now.saturating_sub(new_success) > TEST_WINDOW {
                // The test never happened: the newcomer wins.
                self.make_tried(id);
            } else {
                self.collisions.push(id);
            }
        }
    }

    /// The tried occupant a collision waits on: dial it to test it (a
    /// feeler).
    pub(crate) fn collision_to_test(&mut self) -> Option<A> {
        if self.collisions.is_empty() {
            return None;
        }
        let id = self.collisions[self.rng.usize(..self.collisions.len())];
        let addr = self.info(id)?.addr.clone();
        let bucket = self.tried_bucket(&addr);
        let pos = self.position(&addr, false, bucket);
        let occupant = self.tried[bucket * BUCKET_SIZE + pos];
        self.info(occupant).map(|i| i.addr.clone())
    }

    /// Core's `Select_`: new or tried with even odds, then random places,
    /// each accepted with its chance, the bar lowering as it goes.
    /// `usable` filters (say, addresses in use).
    pub(crate) fn select(
        &mut self,
        new_only: bool,
        now: u64,
        usable: impl Fn(&A) -> bool,
    ) -> Option<A> {
        if self.n_new == 0 && (new_only || self.n_tried == 0) {
            return None;
        }
        let use_tried = !new_only && self.n_tried > 0 && (self.n_new == 0 || self.rng.bool());
        // The table chosen first; the other when nothing usable is found
        // there (Core has no filter, so it needs no second look).
        let order = if new_only {
            [false, false]
        } else {
            [use_tried, !use_tried]
        };
        let tables = if new_only { &order[..1] } else { &order[..] };
        for &tried in tables {
            if let Some(addr) = self.select_in(tried, now, &usable) {
                return Some(addr);
            }
        }
        None
    }

    fn select_in(&mut self, tried: bool, now: u64, usable: &impl Fn(&A) -> bool) -> Option<A> {
        let (table, counts, buckets, n) = if tried {
            (
                &self.tried,
                &self.tried_count[..],
                TRIED_BUCKETS,
                self.n_tried,
            )
        } else {
            (&self.new, &self.new_count[..], NEW_BUCKETS, self.n_new)
        };
        if n == 0 {
            return None;
        }
        let mut factor = 1.0f64;
        // Bounded: a table whose every entry is unusable gives up. The bar
        // falls by 1.2 a miss, so after 64 usable entries any is taken
        // (the least chance is 0.01 × 0.66^8 ≈ 3.6e-4 and 1.2^64 ≈ 1.2e5).
        let mut found = 0;
        for _ in 0..(64 * buckets) {
            let bucket = self.rng.usize(..buckets);
            if counts[bucket] == 0 {
                continue;
            }
            let start = self.rng.usize(..BUCKET_SIZE);
            let id = (0..BUCKET_SIZE)
                .map(|i| table[bucket * BUCKET_SIZE + (start + i) % BUCKET_SIZE])
                .find(|&id| id != EMPTY);
            let Some(info) = id.and_then(|id| self.entries.get(id as usize)?.as_ref()) else {
                continue;
            };
            if !usable(&info.addr) {
                found += 1;
                if found > 64 * BUCKET_SIZE {
                    return None;
                }
                continue;
            }
            if self.rng.f64() < factor * info.chance(now) {
                return Some(info.addr.clone());
            }
            factor *= 1.2;
        }
        None
    }

    /// Every entry, for saving.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Info<A>> {
        self.entries.iter().flatten()
    }

    /// Puts a saved entry back where it was: a tried one in its tried
    /// place, a new one in each new bucket it was in (its place there
    /// follows from the key). A place that is taken (a file made by hand)
    /// is skipped; a new entry left with no place is dropped. A file
    /// without bucket lists puts a new entry in its source's bucket.
    pub(crate) fn restore(&mut self, info: Info<A>) {
        if !self.admissible(&info.addr) || self.ids.contains_key(&info.addr) {
            return;
        }
        let tried = info.tried;
        let held = info.buckets;
        let refs = usize::from(info.refs).min(held.len());
        let addr = info.addr.clone();
        let src = info.source;
        let id = self.create(Info {
            refs: 0,
            buckets: [0; NEW_BUCKETS_PER_ADDRESS as usize],
            tried: false,
            ..info
        });
        if tried {
            let bucket = self.tried_bucket(&addr);
            let pos = self.position(&addr, false, bucket);
            let place = bucket * BUCKET_SIZE + pos;
            if self.tried[place] == EMPTY {
                self.tried[place] = id;
                self.tried_count[bucket] += 1;
                self.n_tried += 1;
                if let Some(i) = self.info_mut(id) {
                    i.tried = true;
                }
                return;
            }
        }
        let wanted: Vec<usize> = if tried || refs == 0 {
            vec![self.new_bucket(&addr, src)]
        } else {
            held[..refs]
                .iter()
                .map(|&b| usize::from(b) % NEW_BUCKETS)
                .collect()
        };
        for bucket in wanted {
            let pos = self.position(&addr, true, bucket);
            if self.new[bucket * BUCKET_SIZE + pos] == EMPTY {
                self.link_new(id, bucket, pos);
            }
        }
        if self.info(id).is_some_and(|i| i.refs > 0) {
            self.n_new += 1;
        } else {
            self.delete(id);
        }
    }

    /// Core's `CheckAddrman`: every invariant of the tables; the first
    /// broken one, described.
    pub(crate) fn check(&self) -> Result<(), String> {
        let (mut n_new, mut n_tried) = (0, 0);
        let mut refs: HashMap<u32, u8> = HashMap::new();
        for bucket in 0..TRIED_BUCKETS {
            let mut count = 0;
            for pos in 0..BUCKET_SIZE {
                let id = self.tried[bucket * BUCKET_SIZE + pos];
                if id == EMPTY {
                    continue;
                }
                count += 1;
                let info = self
                    .info(id)
                    .ok_or(format!("tried place holds dead id {id}"))?;
                if !info.tried {
                    return Err(format!("tried place holds a new entry {id}"));
                }
                if self.tried_bucket(&info.addr) != bucket
                    || self.position(&info.addr, false, bucket) != pos
                {
                    return Err(format!("tried entry {id} in the wrong place"));
                }
                n_tried += 1;
            }
            if count != usize::from(self.tried_count[bucket]) {
                return Err(format!("tried bucket {bucket} count"));
            }
        }
        for bucket in 0..NEW_BUCKETS {
            let mut count = 0;
            for pos in 0..BUCKET_SIZE {
                let id = self.new[bucket * BUCKET_SIZE + pos];
                if id == EMPTY {
                    continue;
                }
                count += 1;
                let info = self
                    .info(id)
                    .ok_or(format!("new place holds dead id {id}"))?;
                if info.tried {
                    return Err(format!("new place holds a tried entry {id}"));
                }
                if self.position(&info.addr, true, bucket) != pos {
                    return Err(format!("new entry {id} in the wrong position"));
                }
                *refs.entry(id).or_insert(0) += 1;
            }
            if count != usize::from(self.new_count[bucket]) {
                return Err(format!("new bucket {bucket} count"));
            }
        }
        for (id, slot) in self.entries.iter().enumerate() {
            let Some(info) = slot else { continue };
            let id = id as u32;
            if self.ids.get(&info.addr) != Some(&id) {
                return Err(format!("entry {id} not in the index"));
            }
            let held = refs.get(&id).copied().unwrap_or(0);
            if info.tried {
                if held != 0 || info.refs != 0 {
                    return Err(format!("tried entry {id} also in new"));
                }
            } else {
                if held != info.refs || held == 0 || held > NEW_BUCKETS_PER_ADDRESS {
                    return Err(format!("entry {id}: {held} places, {} refs", info.refs));
                }
                for &b in &info.buckets[..usize::from(info.refs)] {
                    let b = usize::from(b);
                    if self.new[b * BUCKET_SIZE + self.position(&info.addr, true, b)] != id {
                        return Err(format!("entry {id} not where its bucket list says"));
                    }
                }
                n_new += 1;
            }
        }
        if n_new != self.n_new || n_tried != self.n_tried {
            return Err(format!(
                "counts: new {n_new} / {}, tried {n_tried} / {}",
                self.n_new, self.n_tried
            ));
        }
        if self.ids.len() != n_new + n_tried {
            return Err("index size".into());
        }
        Ok(())
    }

    /// The new buckets that hold entries whose source is `source`.
    #[cfg(test)]
    pub(crate) fn buckets_of_source(&self, source: NetGroup) -> std::collections::HashSet<usize> {
        (0..NEW_BUCKETS)
            .filter(|&b| {
                (0..BUCKET_SIZE).any(|p| {
                    let id = self.new[b * BUCKET_SIZE + p];
                    self.info(id).is_some_and(|i| i.source == source)
                })
            })
            .collect()
    }
}
