//! Network groups, as Bitcoin Core forms them.
//!
//! Peers in one group are likely run by one party (one provider's /16), so
//! the manager limits how many connections one group may hold. An IPv4
//! address's group is its /16, an IPv6 address's its /32; an IPv6 address
//! that embeds an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo,
//! NAT64) is first turned into that IPv4 address, so one host cannot appear
//! in many groups. Addresses without an IP (onion services, host names) are
//! grouped by network, one group each, as Core treats onion.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

/// The group a peer's address belongs to, as Bitcoin Core forms them.
///
/// Peers in one group are likely run by one party (one provider's /16), so
/// the manager limits how many connections one group may hold. An IPv4
/// address's group is its /16, an IPv6 address's its /32; an IPv6 address
/// that embeds an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo,
/// NAT64) is first turned into that IPv4 address ([`canonical`]), so one
/// host cannot appear in many groups. Addresses without an IP (onion
/// services, host names) are grouped by network, one group each, as Core
/// treats onion. See the [policy docs](crate::policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum NetGroup {
    /// An IPv4 /16: its first two bytes.
    Ipv4([u8; 2]),
    /// An IPv6 /32: its first four bytes.
    Ipv6([u8; 4]),
    /// A network without IP addresses (`"onion"`, say): one group.
    Network(&'static str),
}

impl NetGroup {
    /// The group of `ip`, after [`canonical`].
    pub fn of(ip: IpAddr) -> Self {
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
            Self::Network(name) => f.pad(name),
        }
    }
}

/// `ip` with an embedded IPv4 address turned into that address: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), 6to4
/// (`2002:AABB:CCDD::/16`), Teredo (`2001:0::/32`, the client address
/// inverted in the last four bytes) and NAT64 (`64:ff9b::/96`).
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    let o = v6.octets();
    let v4 = |a: u8, b: u8, c: u8, d: u8| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return IpAddr::V4(mapped);
    }
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
        _ => IpAddr::V6(v6),
    }
}

/// Whether `ip` is reachable on the public internet: not loopback,
/// unspecified, private (RFC 1918, fc00::/7), link-local, CGNAT
/// (100.64.0.0/10), documentation or multicast. Non-routable peers are
/// exempt from the netgroup and per-IP limits unless the policy says
/// otherwise.
pub fn is_routable(ip: IpAddr) -> bool {
    match canonical(ip) {
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
                || a == 0)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// What the policy needs to know of an address type: its IP, if it has one,
/// and its [`NetGroup`].
///
/// `SocketAddr` implements it. An address type without an IP (an onion
/// service, a host name the proxy resolves) can rely on the defaults: no IP,
/// and one group for its whole [`network`](Self::network).
///
/// ```
/// use connmgr::policy::{NetGroup, PeerAddr};
///
/// #[derive(Clone, Debug, PartialEq, Eq, Hash)]
/// struct Onion(String);
///
/// impl PeerAddr for Onion {
///     fn network(&self) -> &'static str {
///         "onion"
///     }
/// }
///
/// assert_eq!(Onion("abc.onion".into()).netgroup(), NetGroup::Network("onion"));
/// ```
pub trait PeerAddr {
    /// The IP address, if the address has one. Default is `None`.
    fn ip(&self) -> Option<IpAddr> {
        None
    }

    /// The name of the network of an address without an IP. Default is
    /// `"name"`.
    fn network(&self) -> &'static str {
        "name"
    }

    /// The group: [`NetGroup::of`] the IP, or the network's one group.
    fn netgroup(&self) -> NetGroup {
        self.ip()
            .map_or(NetGroup::Network(self.network()), NetGroup::of)
    }
}

impl PeerAddr for SocketAddr {
    fn ip(&self) -> Option<IpAddr> {
        Some(canonical(Self::ip(self)))
    }
}

impl PeerAddr for IpAddr {
    fn ip(&self) -> Option<IpAddr> {
        Some(canonical(*self))
    }
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
        assert_eq!(v4, NetGroup::Ipv4([203, 0]));
        assert_eq!(NetGroup::of(ip("203.0.200.1")), v4, "same /16");
        assert_ne!(NetGroup::of(ip("203.1.113.7")), v4);
        for embedded in [
            "::ffff:203.0.113.7",       // IPv4-mapped
            "::203.0.113.7",            // IPv4-compatible
            "2002:cb00:7107::1",        // 6to4
            "2001:0:1:2:3:4:34ff:8ef8", // Teredo: 203.0.113.7 inverted
            "64:ff9b::cb00:7107",       // NAT64
        ] {
            assert_eq!(NetGroup::of(ip(embedded)), v4, "{embedded}");
        }
        assert_eq!(
            NetGroup::of(ip("2a01:4f8:1:2::1")),
            NetGroup::Ipv6([0x2a, 0x01, 0x04, 0xf8])
        );
        assert_eq!(
            NetGroup::of(ip("2a01:4f8:ffff::1")),
            NetGroup::of(ip("2a01:4f8::9"))
        );
        assert_eq!(
            canonical(ip("::1")),
            ip("::1"),
            "loopback is not IPv4-compatible"
        );
        assert_eq!(NetGroup::Ipv4([203, 0]).to_string(), "203.0.0.0/16");
        let sa: SocketAddr = "[::ffff:8.8.4.4]:8333".parse().expect("addr");
        assert_eq!(PeerAddr::ip(&sa), Some(ip("8.8.4.4")));
        assert_eq!(sa.netgroup(), NetGroup::Ipv4([8, 8]));
    }

    /// Loopback, private, link-local and CGNAT are not routable; public
    /// addresses are, also when embedded in IPv6.
    #[test]
    fn routable() {
        for local in [
            "127.0.0.1",
            "127.5.6.7",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_routable(ip(local)), "{local}");
        }
        for public in ["8.8.8.8", "2a01:4f8::1", "::ffff:8.8.8.8"] {
            assert!(is_routable(ip(public)), "{public}");
        }
    }
}
