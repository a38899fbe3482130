//! Bans and ban scores.
//!
//! A [`Ban`] keeps an IP address or a [`Subnet`] out until it expires: it
//! closes their connections, refuses dials to them and closes their inbound
//! sockets before `on_accept`. A [`BanScore`] is btcd's dynamic ban score: a
//! persistent part and a transient part that halves every minute and is
//! forgotten after half an hour; past the threshold, the peer is banned.

use std::{
    collections::{HashMap, VecDeque, hash_map::RandomState},
    error::Error as StdError,
    fmt,
    hash::BuildHasher,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::{
    Host,
    netgroup::{embedded_ipv4, unmap},
};

/// The half-life of a ban score's transient part.
pub const HALF_LIFE: Duration = Duration::from_secs(60);
/// After this long without an increase, the transient part counts as zero.
pub const TRANSIENT_LIFETIME: Duration = Duration::from_secs(1800);
/// The default score at which a peer is banned.
pub const DEFAULT_BAN_THRESHOLD: u32 = 100;
/// The default length of a ban.
pub const DEFAULT_BAN_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// btcd's dynamic ban score: `persistent + transient · 2^(−age / 60 s)`,
/// where the transient part counts as zero 1800 s after its last increase.
///
/// Unlike btcd's, [`increase`](Self::increase) decays the transient part
/// before it returns the score, also when only the persistent part grows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BanScore {
    persistent: u32,
    transient: f64,
    last: Option<Instant>,
}

impl BanScore {
    /// The transient part at `now`.
    fn transient_at(&self, now: Instant) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let age = now.saturating_duration_since(last);
        if self.transient < 1.0 || age > TRANSIENT_LIFETIME {
            return 0.0;
        }
        // Whole seconds, as btcd.
        let secs = age.as_secs() as f64;
        self.transient * (-(std::f64::consts::LN_2 / HALF_LIFE.as_secs_f64()) * secs).exp()
    }

    /// The score at `now`.
    pub fn score(&self, now: Instant) -> u32 {
        // The float-to-int cast saturates.
        self.persistent
            .saturating_add(self.transient_at(now) as u32)
    }

    /// Adds to both parts at `now` and returns the score then, decayed.
    pub fn increase(&mut self, persistent: u32, transient: u32, now: Instant) -> u32 {
        self.persistent = self.persistent.saturating_add(persistent);
        if transient > 0 {
            self.transient = self.transient_at(now) + f64::from(transient);
            self.last = Some(now);
        }
        self.score(now)
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// What a ban covers: an IP network (an address and a prefix length), or
/// one host without an IP (an onion service, an I2P or CJDNS address).
///
/// A single IP address is its `/32` (IPv4) or `/128` (IPv6). An IPv4-mapped
/// IPv6 network (`::ffff:0:0/96` and longer) is the IPv4 network it writes;
/// every other IPv6 network stays in IPv6 space, so a `/96` never widens to
/// IPv4. An IPv6 address that embeds an IPv4 address (6to4, Teredo, NAT64)
/// is covered by a ban of its IPv6 range and by a ban of its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet(Net);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Net {
    V4(u32, u8),
    V6(u128, u8),
    /// A host without an IP address: never `Host::Ip`.
    Host(Host),
}

impl Subnet {
    /// The network of `addr` with `prefix` bits; the bits past the prefix are
    /// cleared.
    ///
    /// # Errors
    ///
    /// [`InvalidSubnet`] when `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, InvalidSubnet> {
        let too_long = || InvalidSubnet(format!("prefix /{prefix} is too long for {addr}"));
        match addr {
            IpAddr::V4(v4) if prefix <= 32 => Ok(Self::v4(v4, prefix)),
            IpAddr::V6(v6) if prefix <= 128 => match v6.to_ipv4_mapped() {
                // The IPv4 network it writes.
                Some(v4) if prefix >= 96 => Ok(Self::v4(v4, prefix - 96)),
                _ => Ok(Self(Net::V6(u128::from(v6) & mask128(prefix), prefix))),
            },
            _ => Err(too_long()),
        }
    }

    fn v4(v4: Ipv4Addr, prefix: u8) -> Self {
        Self(Net::V4(u32::from(v4) & mask32(prefix), prefix))
    }

    /// The first address of an IP network; `None` for a host without an IP.
    pub fn addr(&self) -> Option<IpAddr> {
        match self.0 {
            Net::V4(a, _) => Some(IpAddr::V4(a.into())),
            Net::V6(a, _) => Some(IpAddr::V6(a.into())),
            Net::Host(_) => None,
        }
    }

    /// The prefix length of an IP network; a host without an IP is its
    /// whole key (`0`).
    pub fn prefix(&self) -> u8 {
        match self.0 {
            Net::V4(_, p) | Net::V6(_, p) => p,
            Net::Host(_) => 0,
        }
    }

    /// The host, for a ban of one host without an IP.
    pub fn host(&self) -> Option<Host> {
        match self.0 {
            Net::Host(h) => Some(h),
            _ => None,
        }
    }

    /// Whether `ip` is in this network (see the [type docs](Self)).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.0, unmap(ip)) {
            (Net::V4(net, p), IpAddr::V4(ip)) => u32::from(ip) & mask32(p) == net,
            (Net::V4(net, p), IpAddr::V6(ip)) => {
                embedded_ipv4(ip).is_some_and(|v4| u32::from(v4) & mask32(p) == net)
            }
            (Net::V6(net, p), IpAddr::V6(ip)) => u128::from(ip) & mask128(p) == net,
            _ => false,
        }
    }

    /// Whether `host` is covered.
    pub fn contains_host(&self, host: Host) -> bool {
        match (self.0, host) {
            (Net::Host(h), host) => h == host,
            (_, Host::Ip(ip)) => self.contains(ip),
            _ => false,
        }
    }

    /// For the ban list: the family (4 or 6) and prefix of an IP network.
    fn ip_prefix(&self) -> Option<(u8, u8)> {
        match self.0 {
            Net::V4(_, p) => Some((4, p)),
            Net::V6(_, p) => Some((6, p)),
            Net::Host(_) => None,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl From<IpAddr> for Subnet {
    fn from(ip: IpAddr) -> Self {
        match unmap(ip) {
            IpAddr::V4(v4) => Self::v4(v4, 32),
            IpAddr::V6(v6) => Self(Net::V6(u128::from(v6), 128)),
        }
    }
}

impl From<Host> for Subnet {
    fn from(host: Host) -> Self {
        match host {
            Host::Ip(ip) => ip.into(),
            other => Self(Net::Host(other)),
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Net::V4(a, p) => write!(f, "{}/{p}", Ipv4Addr::from(a)),
            Net::V6(a, p) => write!(f, "{}/{p}", Ipv6Addr::from(a)),
            Net::Host(h) => write!(f, "{h}"),
        }
    }
}

impl FromStr for Subnet {
    type Err = InvalidSubnet;

    /// `a.b.c.d`, `a.b.c.d/n`, the same for IPv6, or a host without an IP
    /// (`<key>.onion`, `<hash>.b32.i2p`, `cjdns:<ipv6>`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidSubnet(format!("not an address or subnet: {s:?}"));
        match s.split_once('/') {
            None => Ok(Self::from(s.parse::<Host>().map_err(|_| bad())?)),
            Some((addr, prefix)) => {
                let addr = addr.parse::<IpAddr>().map_err(|_| bad())?;
                Self::new(addr, prefix.parse().map_err(|_| bad())?)
            }
        }
    }
}

/// A subnet that cannot be: a prefix longer than the address, or text that
/// is not an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSubnet(String);

impl fmt::Display for InvalidSubnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid subnet: {}", self.0)
    }
}

impl StdError for InvalidSubnet {}

/// A ban: who, until when, and why. Exported by
/// [`Handle::bans`](crate::manager::Handle::bans) and restored with
/// [`Builder::bans`](crate::manager::Builder::bans); with the `serde`
/// feature it serializes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Ban {
    /// The banned address or network.
    pub subnet: Subnet,
    /// When the ban ends, on the wall clock (so that it survives a restart).
    pub until: SystemTime,
    /// Why.
    pub reason: String,
}

/// A ban "for ever": far enough, and within what `Instant` and
/// `SystemTime` hold.
pub(crate) const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `wall + left`, saturating far in the future instead of overflowing.
pub(crate) fn wall_after(wall: SystemTime, left: Duration) -> SystemTime {
    wall.checked_add(left)
        .or_else(|| wall.checked_add(FAR))
        .unwrap_or(wall)
}

#[derive(Debug)]
struct Banned {
    until: Instant,
    reason: String,
}

/// The manual bans, indexed by prefix length: a look-up costs one hash
/// probe per prefix length in use (at most 33 + 129), whatever the number
/// of bans. Bounded: a ban past the limit is refused once the expired ones
/// are gone.
#[derive(Debug)]
pub(crate) struct BanList {
    bans: HashMap<Subnet, Banned>,
    /// How many bans of each IPv4 and IPv6 prefix length there are.
    v4: [u32; 33],
    v6: [u32; 129],
    hosts: usize,
    max: usize,
}

impl BanList {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            bans: HashMap::new(),
            v4: [0; 33],
            v6: [0; 129],
            hosts: 0,
            max,
        }
    }

    fn count(&mut self, subnet: Subnet, up: bool) {
        let n = match subnet.ip_prefix() {
            Some((4, p)) => &mut self.v4[usize::from(p)],
            Some((_, p)) => &mut self.v6[usize::from(p)],
            None => {
                self.hosts = if up {
                    self.hosts + 1
                } else {
                    self.hosts.saturating_sub(1)
                };
                return;
            }
        };
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    }

    /// The ban in force that covers `host`, if any.
    pub(crate) fn find(&self, host: Host, now: Instant) -> Option<Subnet> {
        if self.bans.is_empty() {
            return None;
        }
        let live = |s: Subnet| {
            self.bans
                .get(&s)
                .is_some_and(|b| b.until > now)
                .then_some(s)
        };
        match host {
            Host::Ip(ip) => match unmap(ip) {
                IpAddr::V4(v4) => self.find_v4(v4, &live),
                IpAddr::V6(v6) => (0..=128u8)
                    .rev()
                    .filter(|&p| self.v6[usize::from(p)] > 0)
                    .find_map(|p| live(Subnet(Net::V6(u128::from(v6) & mask128(p), p))))
                    .or_else(|| embedded_ipv4(v6).and_then(|v4| self.find_v4(v4, &live))),
            },
            other if self.hosts > 0 => live(Subnet(Net::Host(other))),
            _ => None,
        }
    }

    fn find_v4(&self, v4: Ipv4Addr, live: &impl Fn(Subnet) -> Option<Subnet>) -> Option<Subnet> {
        (0..=32u8)
            .rev()
            .filter(|&p| self.v4[usize::from(p)] > 0)
            .find_map(|p| live(Subnet::v4(v4, p)))
    }

    /// Bans `subnet` for `duration`, replacing an earlier ban of it.
    pub(crate) fn insert(
        &mut self,
        subnet: Subnet,
        duration: Duration,
        reason: String,
        now: Instant,
    ) -> Result<(), usize> {
        if !self.bans.contains_key(&subnet) && self.bans.len() >= self.max {
            self.purge(now);
            if self.bans.len() >= self.max {
                return Err(self.max);
            }
        }
        let until = now.checked_add(duration).unwrap_or(now + FAR);
        if self.bans.insert(subnet, Banned { until, reason }).is_none() {
            self.count(subnet, true);
        }
        Ok(())
    }

    /// Forgets the expired bans.
    fn purge(&mut self, now: Instant) {
        let expired: Vec<Subnet> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in expired {
            self.remove(s);
        }
    }

    /// Lifts the ban of exactly `subnet`; whether there was one.
    pub(crate) fn remove(&mut self, subnet: Subnet) -> bool {
        let found = self.bans.remove(&subnet).is_some();
        if found {
            self.count(subnet, false);
        }
        found
    }

    /// The bans in force, with wall-clock ends.
    pub(crate) fn export(&self, now: Instant) -> Vec<Ban> {
        let wall = SystemTime::now();
        let mut bans: Vec<Ban> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(subnet, b)| Ban {
                subnet: *subnet,
                until: wall_after(wall, b.until - now),
                reason: b.reason.clone(),
            })
            .collect();
        bans.sort_by_key(|b| b.subnet);
        bans
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.bans.len()
    }
}

/// Hosts discouraged for misbehaving (Core's `Discourage`): bounded, exact
/// and O(1). Each is kept as a 64-bit digest keyed by a secret of this
/// manager, with its end; when full, the oldest goes first. Core keeps a
/// rolling bloom filter of 50 000 entries instead, which wrongly
/// discourages about one honest address in a million; this keeps about 40
/// bytes an entry (2 MB when full by default) and is never wrong: two
/// digests collide with odds of about 2^-34 when full, and the key is
/// secret, so a collision cannot be aimed.
#[derive(Debug)]
pub(crate) struct Discouraged {
    keys: RandomState,
    ends: HashMap<u64, Instant>,
    order: VecDeque<(u64, Instant)>,
    max: usize,
}

impl Discouraged {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            keys: RandomState::new(),
            ends: HashMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    fn digest(&self, host: &Host) -> u64 {
        self.keys.hash_one(host)
    }

    /// Discourages `host` until `until`. A host discouraged again keeps
    /// one entry; the oldest live entries make room.
    pub(crate) fn insert(&mut self, host: Host, until: Instant, now: Instant) {
        if self.max == 0 {
            return;
        }
        let d = self.digest(&host);
        let known = self.ends.contains_key(&d);
        // Expired entries go; then the oldest, while the table is full. An
        // entry whose host was discouraged again since is stale: its pop
        // frees nothing.
        while let Some(&(old, end)) = self.order.front() {
            let full = !known && self.ends.len() >= self.max;
            if end > now && !full {
                break;
            }
            self.order.pop_front();
            if self.ends.get(&old) == Some(&end) {
                self.ends.remove(&old);
            }
        }
        self.ends.insert(d, until);
        self.order.push_back((d, until));
        // Stale entries are bounded: past twice the live ones, rebuild.
        if self.order.len() > 2 * self.ends.len() + 16 {
            let mut live: Vec<(u64, Instant)> = self.ends.iter().map(|(&d, &e)| (d, e)).collect();
            live.sort_by_key(|&(_, end)| end);
            self.order = live.into();
        }
    }

    pub(crate) fn contains(&self, host: Host, now: Instant) -> bool {
        !self.ends.is_empty()
            && self
                .ends
                .get(&self.digest(&host))
                .is_some_and(|&end| end > now)
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    /// btcd's TestDynamicBanScoreDecay: 150 at once, 125 a minute later,
    /// 100 after seven.
    #[test]
    fn dynamic_ban_score_decay() {
        let base = Instant::now();
        let mut bs = BanScore::default();
        assert_eq!(bs.increase(100, 50, base), 150);
        assert_eq!(bs.score(at(base, 60)), 125);
        assert_eq!(bs.score(at(base, 420)), 100);
    }

    /// btcd's TestDynamicBanScoreLifetime: the transient part still counts
    /// at 1800 s and is gone at 1801 s.
    #[test]
    fn dynamic_ban_score_lifecycle() {
        let base = Instant::now();
        let mut bs = BanScore::default();
        bs.increase(0, u32::MAX, base);
        assert_eq!(bs.score(at(base, 1800)), 3);
        assert_eq!(bs.score(at(base, 1801)), 0);
    }

    /// btcd's TestDynamicBanScoreReset.
    #[test]
    fn dynamic_ban_score_reset() {
        let now = Instant::now();
        let mut bs = BanScore::default();
        assert_eq!(bs.score(now), 0);
        bs.increase(100, 0, now);
        assert_eq!(bs.score(now), 100);
        bs.reset();
        assert_eq!(bs.score(now), 0);
    }

    /// btcd returns the stored transient part when only the persistent part
    /// grows: increase(0, 50, t0) then increase(10, 0, t0 + 1 h) returns 60.
    /// The transient part is long gone by then: 10 is right.
    #[test]
    fn ban_score_decays_before_returning() {
        let base = Instant::now();
        let mut bs = BanScore::default();
        assert_eq!(bs.increase(0, 50, base), 50);
        assert_eq!(bs.increase(10, 0, at(base, 3600)), 10);
        assert_eq!(
            bs.increase(u32::MAX, 0, at(base, 3600)),
            u32::MAX,
            "saturates"
        );
    }

    /// With the `serde` feature a ban list round-trips, the subnet as text.
    #[cfg(feature = "serde")]
    #[test]
    fn bans_serialize() {
        let ban = Ban {
            subnet: "203.0.113.0/24".parse().expect("subnet"),
            until: SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000),
            reason: "spam".into(),
        };
        let json = serde_json::to_string(&vec![ban.clone()]).expect("serialize");
        assert!(json.contains("\"203.0.113.0/24\""), "{json}");
        let back: Vec<Ban> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, vec![ban]);
        assert!(serde_json::from_str::<Subnet>("\"10.0.0.0/33\"").is_err());
    }

    /// Subnets parse, normalise and contain what they should, IPv4 in IPv6
    /// included.
    #[test]
    fn subnets() {
        let net: Subnet = "203.0.113.77/24".parse().expect("subnet");
        assert_eq!(net.to_string(), "203.0.113.0/24");
        assert!(net.contains("203.0.113.1".parse().expect("ip")));
        assert!(net.contains("::ffff:203.0.113.9".parse().expect("ip")));
        assert!(!net.contains("203.0.114.1".parse().expect("ip")));
        let host: Subnet = "2001:db8::1".parse().expect("host");
        assert_eq!(host.prefix(), 128);
        assert!("10.0.0.0/33".parse::<Subnet>().is_err());
        assert!("nonsense".parse::<Subnet>().is_err());
        let all: Subnet = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
    }
}
