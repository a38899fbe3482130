//! An address manager with Bitcoin Core's structure (`src/addrman.cpp`):
//! the first line against eclipse attacks (Heilman, Kendler, Zohar and
//! Goldberg, 2015).
//!
//! - A **new** table of 1024 buckets × 64 places for addresses heard of,
//!   and a **tried** table of 256 × 64 for addresses that worked. Bucket
//!   and place come from SipHash-2-4 keyed with a random secret of the
//!   table, saved with it, so an attacker cannot aim at a bucket.
//! - A new address goes to a bucket chosen by its group *and the group of
//!   its [`Source`]*: one source group reaches at most 64 of the 1024 new
//!   buckets, whatever it sends, and one address sits in at most 8.
//! - A tried address goes to one of 8 buckets of its group. When its place
//!   is taken, the occupant is tested first (test-before-evict): the move
//!   waits until the occupant fails or the test window passes.
//! - Addresses too old or failing too often are dropped when they collide
//!   (Core's `IsTerrible`); selection picks new or tried with even odds and
//!   weights each address by its last try and failures (Core's
//!   `GetChance`).
//! - Unroutable addresses (`0.0.0.0`, loopback, private, multicast, ...)
//!   are refused at [`add`](AddrMan::add) and counted, unless
//!   [`admit_local`](AddrMan::admit_local) is set for a network on one
//!   machine.
//! - At most 81 920 entries (one place each at least). The tables take
//!   320 KiB of places; each entry about 100 bytes more.
//! - [`save`](AddrMan::save) and [`load`](AddrMan::load) keep it, with the
//!   bans, in one versioned, checksummed file written atomically; a bad
//!   file is a typed [`PersistError`], never a panic.
//!
//! SipHash comes from `siphasher` (the keyed hash Core's own `GetCheapHash`
//! plays the part of, well kept and dependency-free); randomness from
//! `fastrand`, as in the rest of the crate.

mod file;
mod table;

use std::{
    collections::HashSet,
    fmt,
    hash::Hash,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use futures_util::future::BoxFuture;

use self::table::{AddError, Table};
pub use self::{
    file::{AddrCodec, PersistError, VERSION},
    table::{BUCKET_SIZE, MAX_ENTRIES, NEW_BUCKETS, Source, TRIED_BUCKETS},
};
use crate::{
    policy::{Ban, Host, PeerAddr},
    seed::DnsSeeder,
    source::{AddressSource, Observer},
};

/// Default least time between two seedings.
pub const DEFAULT_RESEED: Duration = Duration::from_secs(60);

/// What the address manager has seen, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddrManStats {
    /// Entries in the new table.
    pub new: usize,
    /// Entries in the tried table.
    pub tried: usize,
    /// Addresses added (new entries or new places).
    pub added: u64,
    /// Addresses refused as unroutable.
    pub unroutable: u64,
    /// Addresses already known that got no new place.
    pub known: u64,
    /// Addresses refused because their place was held by a better one.
    pub no_room: u64,
    /// Seedings run.
    pub seedings: u64,
}

/// Seeds an address manager: each DNS seed's answers go in as they arrive.
type SeedFn<A> = Arc<dyn Fn(AddrMan<A>) -> BoxFuture<'static, ()> + Send + Sync>;

struct Inner<A> {
    table: Table<A>,
    stats: AddrManStats,
    /// Addresses handed to the manager and not yet given back (failed,
    /// disconnected, skipped): selection passes them over.
    in_use: HashSet<A>,
    seeder: Option<SeedFn<A>>,
    /// The least time between two seedings.
    reseed: Duration,
    last_seed: Option<tokio::time::Instant>,
    /// The block-relay peers at the last stop, to dial first at the next
    /// start (Core's `anchors.dat`).
    anchors: Vec<A>,
    /// Unix seconds at `base`, so that time follows tokio's clock (and
    /// pauses with it in tests) but is saved as wall time.
    wall: u64,
    base: tokio::time::Instant,
}

impl<A> Inner<A> {
    fn now(&self) -> u64 {
        self.wall + self.base.elapsed().as_secs()
    }
}

/// An address manager; cheap to clone, every clone is the same table. See
/// the [module docs](self).
pub struct AddrMan<A = std::net::SocketAddr> {
    inner: Arc<Mutex<Inner<A>>>,
    /// Woken when addresses take new places (a seeding in progress).
    added: Arc<tokio::sync::Notify>,
}

impl<A> Clone for AddrMan<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            added: self.added.clone(),
        }
    }
}

impl<A> fmt::Debug for AddrMan<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddrMan").finish_non_exhaustive()
    }
}

impl<A: PeerAddr + Clone + Eq + Hash> Default for AddrMan<A> {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> u64 {
    file::unix(SystemTime::now())
}

impl<A: PeerAddr + Clone + Eq + Hash> AddrMan<A> {
    /// An empty table with a random secret.
    pub fn new() -> Self {
        Self::with_key((fastrand::u64(..), fastrand::u64(..)), fastrand::u64(..))
    }

    /// An empty table whose secret and randomness come from `seed`: for
    /// simulations and tests that must repeat.
    pub fn seeded(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        Self::with_key((rng.u64(..), rng.u64(..)), rng.u64(..))
    }

    fn with_key(key: (u64, u64), seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                table: Table::new(key, seed),
                stats: AddrManStats::default(),
                in_use: HashSet::new(),
                seeder: None,
                reseed: DEFAULT_RESEED,
                last_seed: None,
                anchors: Vec::new(),
                wall: unix_now(),
                base: tokio::time::Instant::now(),
            })),
            added: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Admits local and unroutable addresses too (loopback, private): for
    /// a network on one machine (regtest, tests, examples). Default is
    /// `false`.
    pub fn admit_local(self, admit: bool) -> Self {
        self.lock().table.admit_local = admit;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner<A>> {
        // A panic while holding the lock leaves a consistent table: every
        // change is made whole before anything that could panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds addresses heard of from `source`; returns how many took a new
    /// place. Unroutable ones are refused and counted.
    pub fn add(&self, addrs: impl IntoIterator<Item = A>, source: Source) -> usize {
        let mut inner = self.lock();
        let now = inner.now();
        let mut added = 0;
        for addr in addrs {
            match inner.table.add(addr, source, now, now) {
                Ok(true) => {
                    added += 1;
                    inner.stats.added += 1;
                }
                Ok(false) | Err(AddError::Known) => inner.stats.known += 1,
                Err(AddError::Unroutable) => inner.stats.unroutable += 1,
                Err(AddError::NoRoom) => inner.stats.no_room += 1,
            }
        }
        drop(inner);
        if added > 0 {
            self.added.notify_waiters();
        }
        added
    }

    /// An address to dial, or `None` when the tables are empty (or every
    /// address is unusable). `usable` can rule addresses out (those in use,
    /// say).
    pub fn select_where(&self, usable: impl Fn(&A) -> bool) -> Option<A> {
        let mut inner = self.lock();
        let now = inner.now();
        inner.table.select(false, now, usable)
    }

    /// An address to dial (see [`select_where`](Self::select_where)).
    pub fn select(&self) -> Option<A> {
        self.select_where(|_| true)
    }

    /// An address from the new table only, for a feeler.
    pub fn select_new(&self) -> Option<A> {
        let mut inner = self.lock();
        let now = inner.now();
        inner.table.select(true, now, |_| true)
    }

    /// A dial to `addr` began; `count_failure` when it is to count as a
    /// failure should it fail (Core's `Attempt`).
    pub fn attempt(&self, addr: &A, count_failure: bool) {
        let mut inner = self.lock();
        let now = inner.now();
        inner.table.attempt(addr, count_failure, now);
    }

    /// A connection to `addr` worked: it moves to tried, or waits for its
    /// place there to be tested. Returns whether it moved.
    pub fn good(&self, addr: &A) -> bool {
        let mut inner = self.lock();
        let now = inner.now();
        inner.table.good(addr, now)
    }

    /// A connection to `addr` is alive: it was heard from now.
    pub fn connected(&self, addr: &A) {
        let mut inner = self.lock();
        let now = inner.now();
        inner.table.connected(addr, now);
    }

    /// Settles the tried collisions whose tests are over.
    pub fn resolve_collisions(&self) {
        let mut inner = self.lock();
        let now = inner.now();
        inner.table.resolve_collisions(now);
    }

    /// The tried address a collision waits on, to test it with a feeler.
    pub fn collision_to_test(&self) -> Option<A> {
        self.lock().table.collision_to_test()
    }

    /// Sets the anchors: the block-relay peers to dial first at the next
    /// start (at most 8 are kept). The manager sets them on stop; they are
    /// saved with the table.
    pub fn set_anchors(&self, anchors: impl IntoIterator<Item = A>) {
        self.lock().anchors = anchors.into_iter().take(file::MAX_ANCHORS).collect();
    }

    /// Takes the anchors out: the manager does it at start, so that they
    /// are dialled once and saved again only if they are anchors at the
    /// next stop (Core deletes `anchors.dat` when it reads it).
    pub fn take_anchors(&self) -> Vec<A> {
        std::mem::take(&mut self.lock().anchors)
    }

    /// The anchors now, left in place.
    pub fn anchors(&self) -> Vec<A> {
        self.lock().anchors.clone()
    }

    /// How many addresses it holds.
    pub fn len(&self) -> usize {
        self.lock().table.len()
    }

    /// Whether it holds no address.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `addr` is in the tried table.
    pub fn is_tried(&self, addr: &A) -> bool {
        self.lock().table.get(addr).is_some_and(|i| i.tried)
    }

    /// Whether `addr` is known.
    pub fn contains(&self, addr: &A) -> bool {
        self.lock().table.get(addr).is_some()
    }

    /// The counts.
    pub fn stats(&self) -> AddrManStats {
        let inner = self.lock();
        AddrManStats {
            new: inner.table.n_new,
            tried: inner.table.n_tried,
            ..inner.stats
        }
    }

    /// The least time between two seedings: when no usable address is left
    /// (every one in use, refused or failing), the manager's source seeds
    /// again, at most this often. Default is [`DEFAULT_RESEED`].
    pub fn reseed_interval(self, interval: Duration) -> Self {
        self.lock().reseed = interval;
        self
    }

    /// Seeds now with the seeder, if there is one; returns how many
    /// addresses took a place.
    pub async fn seed(&self) -> usize {
        let seeder = {
            let mut inner = self.lock();
            inner.last_seed = Some(tokio::time::Instant::now());
            if inner.seeder.is_some() {
                inner.stats.seedings += 1;
            }
            inner.seeder.clone()
        };
        let Some(seeder) = seeder else {
            return 0;
        };
        let before = self.stats().added;
        seeder(self.clone()).await;
        (self.stats().added - before) as usize
    }

    fn seed_due(&self) -> bool {
        let inner = self.lock();
        inner.seeder.is_some()
            && inner
                .last_seed
                .is_none_or(|at| at.elapsed() >= inner.reseed)
    }

    /// The next address for the manager, not one in use; marked in use.
    fn take(&self) -> Option<A> {
        let mut inner = self.lock();
        let now = inner.now();
        let Inner { table, in_use, .. } = &mut *inner;
        table.resolve_collisions(now);
        let addr = table.select(false, now, |a| !in_use.contains(a))?;
        in_use.insert(addr.clone());
        Some(addr)
    }

    fn release(&self, addr: &A) {
        self.lock().in_use.remove(addr);
    }

    /// Checks every invariant of the tables (Core's `CheckAddrman`):
    /// bucket places match the keyed hash, counts agree, no address is in
    /// both tables, bounds hold.
    ///
    /// # Errors
    ///
    /// The first broken invariant, described.
    pub fn check(&self) -> Result<(), String> {
        self.lock().table.check()
    }
}

impl AddrMan<SocketAddr> {
    /// Seeds from `seeder` when the table has nothing usable (at most once
    /// per [`reseed_interval`](Self::reseed_interval)). Each DNS seed is a
    /// source of its own ([`Source::Seed`]), and its answers go in as they
    /// arrive: a silent seed delays no other.
    pub fn seeder(self, seeder: DnsSeeder) -> Self {
        let seeder = Arc::new(seeder);
        let seed: SeedFn<SocketAddr> = Arc::new(move |man: Self| {
            let seeder = seeder.clone();
            Box::pin(async move {
                seeder
                    .resolve_each(|name, addrs| {
                        let added = man.add(addrs, Source::Seed(Host::name(name)));
                        tracing::debug!(seed = name, added, "seed answered");
                    })
                    .await;
            })
        });
        self.lock().seeder = Some(seed);
        self
    }
}

impl<A: PeerAddr + Clone + Eq + Hash + Send + Sync + 'static> AddressSource<A> for AddrMan<A> {
    async fn next_address(&mut self) -> Option<A> {
        if let Some(addr) = self.take() {
            return Some(addr);
        }
        if !self.seed_due() {
            return None;
        }
        // The seeding runs on its own task, so that the first seed to
        // answer is dialled at once: a silent seed delays no dial. It
        // finishes in the background (each seed has its time limit).
        let man = self.clone();
        let mut seeding = tokio::spawn(async move { man.seed().await });
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(addr) = self.take() {
                return Some(addr);
            }
            tokio::select! {
                () = &mut added => {}
                _ = &mut seeding => return self.take(),
            }
        }
    }
}

impl<A: PeerAddr + Clone + Eq + Hash + Send + Sync + 'static> Observer<A> for AddrMan<A> {
    fn connected(&self, addr: &A) {
        self.good(addr);
        Self::connected(self, addr);
    }

    fn failed(&self, addr: &A) {
        self.attempt(addr, true);
        self.release(addr);
    }

    fn canceled(&self, addr: &A) {
        self.release(addr);
    }

    fn disconnected(&self, addr: &A) {
        Self::connected(self, addr);
        self.release(addr);
    }

    fn skipped(&self, addr: &A) {
        self.release(addr);
    }
}

impl<A: PeerAddr + Clone + Eq + Hash + AddrCodec> AddrMan<A> {
    /// Saves the table, with `bans` and its [anchors](Self::set_anchors), to `path` (see the module docs for the
    /// format), atomically: a crash leaves the old file or the new one.
    ///
    /// # Errors
    ///
    /// [`PersistError::Io`] when the file cannot be written; the old file
    /// is then untouched.
    pub fn save(&self, path: &Path, bans: &[Ban]) -> Result<(), PersistError> {
        let bytes = {
            let inner = self.lock();
            file::encode(
                inner.table.key(),
                inner.table.entries(),
                bans,
                &inner.anchors,
            )
        };
        file::write_atomic(path, &bytes)
    }

    /// Loads a saved table and its bans.
    ///
    /// # Errors
    ///
    /// A [`PersistError`] for a missing, unreadable, foreign, newer,
    /// truncated, damaged or corrupt file.
    /// Local and unroutable entries come back only with `admit_local`
    /// (see [`admit_local`](Self::admit_local)), which the table then keeps.
    pub fn load(path: &Path, admit_local: bool) -> Result<(Self, Vec<Ban>), PersistError> {
        let bytes = std::fs::read(path)?;
        Self::from_bytes(&bytes, admit_local)
    }

    /// Loads `path`, or starts empty: a missing file is no error; a bad one
    /// is moved aside (to `<path>.bad`) and its error returned with the
    /// empty table; one that cannot be read (a directory, no permission) is
    /// left where it is and its error returned.
    pub fn load_or_new(path: &Path, admit_local: bool) -> (Self, Vec<Ban>, Option<PersistError>) {
        let empty = || Self::new().admit_local(admit_local);
        match Self::load(path, admit_local) {
            Ok((table, bans)) => (table, bans, None),
            Err(PersistError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                (empty(), Vec::new(), None)
            }
            Err(e @ PersistError::Io(_)) => {
                tracing::warn!(error = %e, "address file unreadable: starting empty");
                (empty(), Vec::new(), Some(e))
            }
            Err(e) => {
                let aside = file::sibling(path, "bad");
                if let Err(io) = std::fs::rename(path, &aside) {
                    tracing::warn!(error = %io, "could not move the bad address file aside");
                }
                tracing::warn!(error = %e, aside = %aside.display(), "address file unusable: starting empty");
                (empty(), Vec::new(), Some(e))
            }
        }
    }

    fn from_bytes(bytes: &[u8], admit_local: bool) -> Result<(Self, Vec<Ban>), PersistError> {
        let decoded = file::decode::<A>(bytes)?;
        let man = Self::with_key(decoded.key, fastrand::u64(..));
        {
            let mut inner = man.lock();
            inner.table.admit_local = admit_local;
            for info in decoded.entries {
                inner.table.restore(info);
            }
            inner.anchors = decoded.anchors;
        }
        Ok((man, decoded.bans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Host, NetGroup};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), 8333)
    }

    /// One source group reaches at most 64 of the 1024 new buckets, however
    /// many addresses it sends from however many groups; and an address
    /// repeated by many sources sits in at most 8.
    #[test]
    fn addrman_one_source_bounded_buckets() {
        let man = AddrMan::<SocketAddr>::seeded(1);
        let attacker = Source::Peer(Host::ip(v4(6, 6, 6, 6).ip()));
        let mut n = 0u32;
        for a in 1..=250u8 {
            for b in 0..=255u8 {
                man.add([v4(a, b, n as u8, 1)], attacker);
                n += 1;
            }
        }
        let buckets = man.lock().table.buckets_of_source(NetGroup::Ipv4([6, 6]));
        assert!(buckets.len() <= 64, "{} buckets", buckets.len());
        assert!(man.stats().new <= 64 * BUCKET_SIZE);
        man.check().expect("invariants");

        let popular = v4(8, 8, 8, 8);
        for g in 0..200u8 {
            man.add([popular], Source::Peer(Host::ip(v4(20, g, 0, 1).ip())));
        }
        let refs = man.lock().table.get(&popular).map(|i| i.refs);
        assert!(refs.is_some_and(|r| (1..=8).contains(&r)), "{refs:?}");
        man.check().expect("invariants");
    }
}
