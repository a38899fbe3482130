//! Networks, hosts and network groups, as Bitcoin Core forms them.
//!
//! Every address the manager sees has a [`Host`] (an IP address, an onion
//! service, an I2P destination, a CJDNS address or a host name the proxy
//! resolves), and every host a [`Network`] and a [`NetGroup`]. The rules of
//! the policy (diversity, duplicates, bans, eviction) ask for these; no
//! address is exempt.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

/// The network an address belongs to.
///
/// IP addresses are [`Ipv4`](Self::Ipv4) or [`Ipv6`](Self::Ipv6) when they
/// are routable on the internet ([`is_routable`]), and [`Local`](Self::Local)
/// otherwise (loopback, private, link-local, reserved). An IPv6 address that
/// embeds an IPv4 address (6to4, Teredo, NAT64) is [`Ipv6`](Self::Ipv6),
/// grouped by its IPv4 address; an IPv4-mapped address is its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Network {
    /// Routable IPv4.
    Ipv4,
    /// Routable IPv6.
    Ipv6,
    /// Tor onion services (v3).
    Onion,
    /// I2P destinations.
    I2p,
    /// CJDNS (`fc00::/8` inside the CJDNS network).
    Cjdns,
    /// Loopback and every other IP address that is not routable.
    Local,
    /// A host name that a proxy resolves.
    Name,
}

impl Network {
    /// A short lower-case name, as in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::Onion => "onion",
            Self::I2p => "i2p",
            Self::Cjdns => "cjdns",
            Self::Local => "local",
            Self::Name => "name",
        }
    }

    /// The networks whose peers Core's eviction protects by uptime first,
    /// because they are slower to reach: onion, I2P, CJDNS and local.
    pub fn is_disadvantaged(self) -> bool {
        matches!(self, Self::Onion | Self::I2p | Self::Cjdns | Self::Local)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The group a peer's address belongs to, as Bitcoin Core forms them.
///
/// Peers in one group are likely run by one party (one provider's /16), so
/// the policy limits how many connections one group may hold. An IPv4
/// address's group is its /16, an IPv6 address's its /32; an IPv6 address
/// that embeds an IPv4 address is grouped by that IPv4 address, so one host
/// cannot appear in many groups. Onion and I2P hosts are grouped by the
/// first 4 bits of their key (16 groups each), CJDNS hosts by the 12 bits
/// after their constant first byte, host names by their last two labels.
/// Every local address is in the one [`Local`](Self::Local) group, and the
/// peers of a listener that says where its peers come from (a Tor listener)
/// are in that network's [`Inbound`](Self::Inbound) group. See the
/// [policy docs](crate::policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum NetGroup {
    /// An IPv4 /16: its first two bytes.
    Ipv4([u8; 2]),
    /// An IPv6 /32: its first four bytes.
    Ipv6([u8; 4]),
    /// Onion services: the first 4 bits of the public key.
    Onion(u8),
    /// I2P destinations: the first 4 bits of the hash.
    I2p(u8),
    /// CJDNS: the 12 bits after the `fc` byte.
    Cjdns(u16),
    /// Host names: a digest of the last two labels (`example.org`).
    Name(u64),
    /// Every local or unroutable address.
    Local,
    /// The peers of a listener of this network (say, a Tor onion service's
    /// listener), whose remote address says nothing.
    Inbound(Network),
}

impl NetGroup {
    /// The group of `ip`: its /16 or /32, after [`canonical`], or
    /// [`Local`](Self::Local) when it is not routable.
    pub fn of(ip: IpAddr) -> Self {
        if is_routable(ip) {
            Self::routable(ip)
        } else {
            Self::Local
        }
    }

    /// The group of `ip` as if it were routable.
    pub(crate) fn routable(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let [a, b, _, _] = v4.octets();
                Self::Ipv4([a, b])
            }
            IpAddr::V6(v6) => {
                let [a, b, c, d, ..] = v6.octets();
                Self::Ipv6([a, b, c, d])
            }
        }
    }

    /// Whether the group counts for outbound diversity: only IPv4 and IPv6
    /// groups do, as in Core. Groups of onion, I2P and CJDNS keys are
    /// random, and local and named peers are the node operator's choice.
    pub fn counts_for_diversity(self) -> bool {
        matches!(self, Self::Ipv4(_) | Self::Ipv6(_))
    }
}

impl fmt::Display for NetGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipv4([a, b]) => write!(f, "{a}.{b}.0.0/16"),
            Self::Ipv6([a, b, c, d]) => {
                write!(
                    f,
                    "{:x}:{:x}::/32",
                    u16::from_be_bytes([*a, *b]),
                    u16::from_be_bytes([*c, *d])
                )
            }
            Self::Onion(bits) => write!(f, "onion/{bits:x}"),
            Self::I2p(bits) => write!(f, "i2p/{bits:x}"),
            Self::Cjdns(bits) => write!(f, "cjdns/{bits:03x}"),
            Self::Name(digest) => write!(f, "name/{digest:016x}"),
            Self::Local => f.pad("local"),
            Self::Inbound(net) => write!(f, "inbound/{net}"),
        }
    }
}

/// The host part of a peer's address: what the policy groups, compares and
/// bans. A port never matters, except for local peers (see the
/// [policy docs](crate::policy)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Host {
    /// An IP address. An IPv4-mapped IPv6 address is its IPv4 address
    /// ([`Host::ip`] maps it).
    Ip(IpAddr),
    /// A Tor v3 onion service: its ed25519 public key.
    Onion([u8; 32]),
    /// An I2P destination: the SHA-256 of it, as in a `.b32.i2p` name.
    I2p([u8; 32]),
    /// A CJDNS address (in `fc00::/8`).
    Cjdns(Ipv6Addr),
    /// A host name a proxy resolves ([`Host::name`]): SHA3-256 digests,
    /// cut short, of it and of its last two labels (its group), lower
    /// case. The same in every process, so bans of names export.
    Name {
        /// The digest of the whole name.
        name: [u8; 16],
        /// The digest of its last two labels.
        group: u64,
    },
}

impl Host {
    /// The host of `ip`; an IPv4-mapped address becomes its IPv4 address.
    pub fn ip(ip: IpAddr) -> Self {
        Self::Ip(unmap(ip))
    }

    /// The host of a name that a proxy resolves, such as
    /// `seed.example.org`. Case and a trailing dot do not matter.
    pub fn name(name: &str) -> Self {
        let name = name.trim_end_matches('.');
        Self::Name {
            name: name_digest(name),
            group: name_group(name),
        }
    }

    /// Parses an onion service's name (`<56 characters>.onion`, v3),
    /// checksum and version included.
    ///
    /// # Errors
    ///
    /// [`InvalidHost`] for anything else.
    pub fn onion(name: &str) -> Result<Self, InvalidHost> {
        let bad = || InvalidHost(format!("not a v3 onion address: {name:?}"));
        let label = strip_suffix_ignore_case(name, ".onion").ok_or_else(bad)?;
        let bytes = base32_decode(label).ok_or_else(bad)?;
        let bytes: [u8; 35] = bytes.try_into().map_err(|_| bad())?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[..32]);
        if bytes[34] != 3 || onion_checksum(&key) != [bytes[32], bytes[33]] {
            return Err(bad());
        }
        Ok(Self::Onion(key))
    }

    /// Parses an I2P destination's name (`<52 characters>.b32.i2p`).
    ///
    /// # Errors
    ///
    /// [`InvalidHost`] for anything else.
    pub fn i2p(name: &str) -> Result<Self, InvalidHost> {
        let bad = || InvalidHost(format!("not a b32 I2P address: {name:?}"));
        let label = strip_suffix_ignore_case(name, ".b32.i2p").ok_or_else(bad)?;
        if label.len() != 52 {
            return Err(bad());
        }
        let bytes = base32_decode(label).ok_or_else(bad)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self::I2p(bytes))
    }

    /// The IP address, for [`Ip`](Self::Ip) hosts.
    pub fn as_ip(&self) -> Option<IpAddr> {
        match *self {
            Self::Ip(ip) => Some(unmap(ip)),
            _ => None,
        }
    }

    /// The host's network.
    pub fn network(&self) -> Network {
        match *self {
            Self::Ip(ip) => ip_network(ip, is_routable(ip)),
            Self::Onion(_) => Network::Onion,
            Self::I2p(_) => Network::I2p,
            Self::Cjdns(_) => Network::Cjdns,
            Self::Name { .. } => Network::Name,
        }
    }

    /// The host's group.
    pub fn netgroup(&self) -> NetGroup {
        match *self {
            Self::Ip(ip) => NetGroup::of(ip),
            Self::Onion(key) => NetGroup::Onion(key[0] >> 4),
            Self::I2p(hash) => NetGroup::I2p(hash[0] >> 4),
            Self::Cjdns(ip) => {
                let [_, b, c, ..] = ip.octets();
                NetGroup::Cjdns((u16::from(b) << 4) | u16::from(c >> 4))
            }
            Self::Name { group, .. } => NetGroup::Name(group),
        }
    }
}

/// The network of an IP address, routable or not.
pub(crate) fn ip_network(ip: IpAddr, routable: bool) -> Network {
    match (routable, unmap(ip)) {
        (false, _) => Network::Local,
        (true, IpAddr::V4(_)) => Network::Ipv4,
        (true, IpAddr::V6(_)) => Network::Ipv6,
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{}", unmap(*ip)),
            Self::Onion(key) => {
                let mut bytes = [0u8; 35];
                bytes[..32].copy_from_slice(key);
                bytes[32..34].copy_from_slice(&onion_checksum(key));
                bytes[34] = 3;
                write!(f, "{}.onion", base32_encode(&bytes))
            }
            Self::I2p(hash) => write!(f, "{}.b32.i2p", base32_encode(hash)),
            Self::Cjdns(ip) => write!(f, "cjdns:{ip}"),
            Self::Name { name, group } => {
                f.write_str("name:")?;
                for b in name {
                    write!(f, "{b:02x}")?;
                }
                write!(f, ":{group:016x}")
            }
        }
    }
}

impl FromStr for Host {
    type Err = InvalidHost;

    /// An IP address, `<key>.onion`, `<hash>.b32.i2p` or `cjdns:<ipv6>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::ip(ip));
        }
        if strip_suffix_ignore_case(s, ".onion").is_some() {
            return Self::onion(s);
        }
        if strip_suffix_ignore_case(s, ".i2p").is_some() {
            return Self::i2p(s);
        }
        if let Some(hex) = s.strip_prefix("name:") {
            if let Some(host) = parse_name_digest(hex) {
                return Ok(host);
            }
        }
        if let Some(ip) = s.strip_prefix("cjdns:") {
            if let Ok(ip) = ip.parse::<Ipv6Addr>() {
                if ip.octets()[0] == 0xfc {
                    return Ok(Self::Cjdns(ip));
                }
            }
        }
        Err(InvalidHost(format!("not a host: {s:?}")))
    }
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Self {
        Self::ip(ip)
    }
}

/// Text that is not a [`Host`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidHost(pub(crate) String);

impl fmt::Display for InvalidHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid host: {}", self.0)
    }
}

impl std::error::Error for InvalidHost {}

/// `ip` with an IPv4-mapped address (`::ffff:a.b.c.d`) turned into its
/// IPv4 address: the same host, written for a dual-stack socket.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `ip` with an embedded IPv4 address turned into that address: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), 6to4
/// (`2002:AABB:CCDD::/16`), Teredo (`2001:0::/32`, the client address
/// inverted in the last four bytes) and NAT64 (`64:ff9b::/96`). Groups are
/// formed from it; bans and routability look at the address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    embedded_ipv4(v6).map_or(ip, IpAddr::V4)
}

/// The IPv4 address embedded in `v6`, if it embeds one.
pub(crate) fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    let o = v6.octets();
    let v4 = |a: u8, b: u8, c: u8, d: u8| Some(Ipv4Addr::new(a, b, c, d));
    match o {
        // IPv4-compatible, but not :: or ::1.
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ..]
            if u32::from_be_bytes([o[12], o[13], o[14], o[15]]) > 1 =>
        {
            v4(o[12], o[13], o[14], o[15])
        }
        [0x20, 0x02, a, b, c, d, ..] => v4(a, b, c, d),
        [0x20, 0x01, 0, 0, ..] => v4(!o[12], !o[13], !o[14], !o[15]),
        [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, ..] => v4(o[12], o[13], o[14], o[15]),
        _ => None,
    }
}

/// Whether `ip` is reachable on the public internet, as Core's
/// `IsRoutable`: not loopback, unspecified, private (RFC 1918, `fc00::/7`),
/// link-local, CGNAT (`100.64.0.0/10`), benchmarking (`198.18.0.0/15`),
/// documentation, reserved (`240.0.0.0/4`), broadcast, multicast, ORCHID.
///
/// An IPv4-mapped address is judged as its IPv4 address. Every other IPv6
/// form that embeds an IPv4 address (6to4, Teredo, NAT64) is judged as IPv6:
/// it is routable whatever the IPv4 address inside, as in Core.
pub fn is_routable(ip: IpAddr) -> bool {
    match unmap(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_documentation()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
                || a == 0)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010)
                || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020))
        }
    }
}

/// What the policy needs to know of an address type: its [`Host`].
///
/// `SocketAddr` and `IpAddr` implement it. An address type for onion
/// services or host names returns [`Host::Onion`] or [`Host::name`]:
///
/// ```
/// use connmgr::policy::{Host, Network, PeerAddr};
///
/// #[derive(Clone, Debug, PartialEq, Eq, Hash)]
/// struct Onion { key: [u8; 32], port: u16 }
///
/// impl PeerAddr for Onion {
///     fn host(&self) -> Host {
///         Host::Onion(self.key)
///     }
/// }
///
/// let peer = Onion { key: [0x5a; 32], port: 8333 };
/// assert_eq!(peer.host().network(), Network::Onion);
/// ```
pub trait PeerAddr {
    /// The host of this address.
    fn host(&self) -> Host;

    /// The port, if the address has one. Local peers, which share their
    /// IP address, are told apart by it; without it, by the whole address.
    /// Default is `None`.
    fn port(&self) -> Option<u16> {
        None
    }
}

impl PeerAddr for SocketAddr {
    fn host(&self) -> Host {
        Host::ip(self.ip())
    }

    fn port(&self) -> Option<u16> {
        Some(Self::port(self))
    }
}

impl PeerAddr for IpAddr {
    fn host(&self) -> Host {
        Host::ip(*self)
    }
}

impl PeerAddr for Host {
    fn host(&self) -> Host {
        *self
    }
}

// ===== names =====

fn sha3(parts: &[&[u8]]) -> [u8; 32] {
    use sha3::{Digest, Sha3_256};
    let mut h = Sha3_256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn name_digest(name: &str) -> [u8; 16] {
    let d = sha3(&[b"connmgr name\0", name.to_ascii_lowercase().as_bytes()]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// The group digest of a host name: its last two labels.
fn name_group(name: &str) -> u64 {
    let mut dots = name.rmatch_indices('.');
    let start = dots.nth(1).map_or(0, |(i, _)| i + 1);
    let d = sha3(&[
        b"connmgr group\0",
        name[start..].to_ascii_lowercase().as_bytes(),
    ]);
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// `<32 hex digits>:<16 hex digits>`, as `Host::Name` prints.
fn parse_name_digest(hex: &str) -> Option<Host> {
    let (name, group) = hex.split_once(':')?;
    if name.len() != 32 || group.len() != 16 || !name.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&name[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(Host::Name {
        name: out,
        group: u64::from_str_radix(group, 16).ok()?,
    })
}

fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    (s.is_char_boundary(cut) && s[cut..].eq_ignore_ascii_case(suffix)).then(|| &s[..cut])
}

// ===== base32 (RFC 4648, lower case, no padding) and the onion checksum =====

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = BASE32.iter().position(|&x| x == c.to_ascii_lowercase())?;
        acc = (acc << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    // Leftover bits must be zero padding.
    (acc == 0).then_some(out)
}

/// The two checksum bytes of a v3 onion address (Tor's rend-spec-v3).
fn onion_checksum(key: &[u8; 32]) -> [u8; 2] {
    let d = sha3(&[b".onion checksum", key, &[3u8]]);
    [d[0], d[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// IPv4 groups are /16, IPv6 /32, and every IPv6 form that embeds an
    /// IPv4 address lands in that IPv4 address's group.
    #[test]
    fn netgroup_canonicalises_mapped_ipv4() {
        let v4 = NetGroup::of(ip("203.0.113.7"));
        assert_eq!(v4, NetGroup::Local, "documentation range: not routable");
        let v4 = NetGroup::of(ip("198.51.113.7"));
        assert_eq!(v4, NetGroup::Ipv4([198, 51]));
        assert_eq!(NetGroup::of(ip("198.51.200.1")), v4, "same /16");
        assert_ne!(NetGroup::of(ip("198.52.113.7")), v4);
        for embedded in [
            "::ffff:198.51.113.7",      // IPv4-mapped
            "::198.51.113.7",           // IPv4-compatible
            "2002:c633:7107::1",        // 6to4
            "2001:0:1:2:3:4:39cc:8ef8", // Teredo: 198.51.113.7 inverted
            "64:ff9b::c633:7107",       // NAT64
        ] {
            assert_eq!(NetGroup::of(ip(embedded)), v4, "{embedded}");
        }
        assert_eq!(
            NetGroup::of(ip("2a01:4f8:1:2::1")),
            NetGroup::Ipv6([0x2a, 0x01, 0x04, 0xf8])
        );
        assert_eq!(
            canonical(ip("::1")),
            ip("::1"),
            "loopback is not IPv4-compatible"
        );
        assert_eq!(NetGroup::Ipv4([203, 0]).to_string(), "203.0.0.0/16");
        let sa: SocketAddr = "[::ffff:8.8.4.4]:8333".parse().expect("addr");
        assert_eq!(sa.host(), Host::Ip(ip("8.8.4.4")));
        assert_eq!(sa.host().netgroup(), NetGroup::Ipv4([8, 8]));
    }

    /// Loopback, private, link-local and CGNAT are not routable; public
    /// addresses are, and so is every 6to4, Teredo and NAT64 address,
    /// whatever it embeds.
    #[test]
    fn routable() {
        for local in [
            "127.0.0.1",
            "127.5.6.7",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "240.1.2.3",
            "224.0.0.1",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_routable(ip(local)), "{local}");
            assert_eq!(Host::ip(ip(local)).network(), Network::Local, "{local}");
        }
        for public in [
            "8.8.8.8",
            "2a01:4f8::1",
            "::ffff:8.8.8.8",
            "2002:0a00:0001::1",
        ] {
            assert!(is_routable(ip(public)), "{public}");
        }
    }

    /// Onion and I2P names round-trip; a wrong checksum or version is
    /// refused; groups take the first 4 bits of the key.
    #[test]
    fn onion_and_i2p_hosts() {
        let key = [0xa7; 32];
        let host = Host::Onion(key);
        let text = host.to_string();
        assert_eq!(text.len(), 56 + ".onion".len(), "{text}");
        assert_eq!(text.parse::<Host>(), Ok(host));
        assert_eq!(Host::onion(&text.to_uppercase()), Ok(host));
        let mut broken = text.clone().into_bytes();
        broken[53] = if broken[53] == b'a' { b'b' } else { b'a' };
        let broken = String::from_utf8(broken).expect("ascii");
        assert!(Host::onion(&broken).is_err(), "checksum");
        assert!(Host::onion("abc.onion").is_err());
        assert_eq!(host.netgroup(), NetGroup::Onion(0xa));
        assert_eq!(host.network(), Network::Onion);

        let i2p = Host::I2p([0x31; 32]);
        let text = i2p.to_string();
        assert!(text.ends_with(".b32.i2p"), "{text}");
        assert_eq!(text.parse::<Host>(), Ok(i2p));
        assert_eq!(i2p.netgroup(), NetGroup::I2p(0x3));
        let cjdns: Host = "cjdns:fc12:3456::1".parse().expect("cjdns");
        assert_eq!(cjdns.netgroup(), NetGroup::Cjdns(0x123));
        assert_eq!(
            Host::name("Seed.Example.org."),
            Host::name("seed.example.org")
        );
        assert_eq!(name_group("a.seed.example.org"), name_group("example.org"));
        assert_ne!(name_group("example.org"), name_group("example.com"));
    }
}
