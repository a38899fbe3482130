//! Bans and ban scores.
//!
//! A [`Ban`] keeps an IP address or a [`Subnet`] out until it expires: it
//! closes their connections, refuses dials to them and closes their inbound
//! sockets before `on_accept`. A [`BanScore`] is btcd's dynamic ban score: a
//! persistent part and a transient part that halves every minute and is
//! forgotten after half an hour; past the threshold, the peer is banned.

use std::{
    error::Error as StdError,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::canonical;

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

/// An IP network: an address and a prefix length. A single address is its
/// `/32` (IPv4) or `/128` (IPv6). IPv4 embedded in IPv6 is stored as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// The network of `addr` with `prefix` bits; the bits past the prefix are
    /// cleared.
    ///
    /// # Errors
    ///
    /// [`InvalidSubnet`] when `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, InvalidSubnet> {
        let (addr, prefix) = match (addr, canonical(addr)) {
            // An IPv4 address written as IPv6 keeps its IPv4 bits.
            (IpAddr::V6(_), IpAddr::V4(v4)) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
            (IpAddr::V6(_), IpAddr::V4(_)) => (addr, prefix),
            (a, _) => (a, prefix),
        };
        let addr = match addr {
            IpAddr::V4(v4) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(prefix)))
            }
            IpAddr::V6(v6) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(prefix)))
            }
            _ => {
                return Err(InvalidSubnet(format!(
                    "prefix /{prefix} is too long for {addr}"
                )));
            }
        };
        Ok(Self { addr, prefix })
    }

    /// The first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
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
        let ip = canonical(ip);
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        Self { addr: ip, prefix }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = InvalidSubnet;

    /// `a.b.c.d`, `a.b.c.d/n`, or the same for IPv6.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidSubnet(format!("not an address or subnet: {s:?}"));
        match s.split_once('/') {
            None => Ok(Self::from(s.parse::<IpAddr>().map_err(|_| bad())?)),
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
