//! Dial targets beyond `SocketAddr`: onion services and host names, which
//! only a proxy can reach.

use std::{fmt, net::SocketAddr, str::FromStr};

use crate::policy::{Host, InvalidHost, PeerAddr};

/// Where a dial goes: an IP socket address, a Tor v3 onion service
/// (validated, checksum included, before anything is sent), or a host name
/// the proxy resolves. The [`Dialer`](crate::Dialer) that
/// [`DialStack`](crate::DialStack) builds dials all three; the last two
/// only through its SOCKS5 proxy. As a [`PeerAddr`], an onion target is on
/// the Tor network of the policy.
///
/// ```
/// use connmgr::Target;
///
/// let onion: Target = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333"
///     .parse()?;
/// let ip: Target = "127.0.0.1:8333".parse()?;
/// assert_eq!(ip, Target::from("127.0.0.1:8333".parse::<std::net::SocketAddr>()?));
/// # let _ = onion;
/// # Ok::<(), connmgr::BoxError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IP address and port.
    Socket(SocketAddr),
    /// An onion service: its public key and a port.
    Onion {
        /// The ed25519 public key.
        key: [u8; 32],
        /// The port.
        port: u16,
    },
    /// A host name (1 to 255 bytes) and a port, resolved by the proxy.
    Name {
        /// The name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl Target {
    /// An onion service from its name (`<56 characters>.onion`).
    ///
    /// # Errors
    ///
    /// [`InvalidHost`] when the name is not a valid v3 onion address.
    pub fn onion(name: &str, port: u16) -> Result<Self, InvalidHost> {
        match Host::onion(name)? {
            Host::Onion(key) => Ok(Self::Onion { key, port }),
            _ => Err(bad(name)),
        }
    }

    /// The target a host in text names: an IP literal (`127.0.0.1`,
    /// `::1`, `[::1]`) is a socket address; a name under `.onion` (any
    /// case, a trailing dot, subdomains such as `www.<key>.onion`) is the
    /// onion service, validated; any other name is a host name the proxy
    /// resolves, kept in lower case without the root's dot. So an onion
    /// service or an IP never passes for a name, never leaves through a
    /// stack meant for names, and one name in two spellings is one peer.
    ///
    /// # Errors
    ///
    /// [`InvalidHost`] for an invalid onion address, and for a name that is
    /// empty, over 255 bytes, not printable ASCII, or has an empty label
    /// (`a..b`, `.a`; one trailing dot is allowed).
    pub fn name(host: &str, port: u16) -> Result<Self, InvalidHost> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return Ok(Self::Socket(SocketAddr::new(ip, port)));
        }
        let ok = !host.is_empty()
            && host.len() <= 255
            && host.bytes().all(|b| b.is_ascii_graphic())
            && !host.trim_end_matches('.').split('.').any(str::is_empty);
        if !ok {
            return Err(bad(host));
        }
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(under) = lower.strip_suffix(".onion") {
            // The service is the last label before `.onion`.
            let key = under.rsplit('.').next().unwrap_or(under);
            return Self::onion(&format!("{key}.onion"), port);
        }
        // One spelling per name: case and the root's dot do not make
        // another peer.
        Ok(Self::Name { host: lower, port })
    }

    /// The host part as the proxy is told it: an IP, `<key>.onion`, or the
    /// name.
    pub fn host_string(&self) -> String {
        match self {
            Self::Socket(a) => a.ip().to_string(),
            Self::Onion { key, .. } => Host::Onion(*key).to_string(),
            Self::Name { host, .. } => host.clone(),
        }
    }
}

fn bad(s: &str) -> InvalidHost {
    InvalidHost(format!("not a dial target: {s:?}"))
}

impl PeerAddr for Target {
    fn host(&self) -> Host {
        match self {
            Self::Socket(a) => Host::ip(a.ip()),
            Self::Onion { key, .. } => Host::Onion(*key),
            // An I2P destination is on the I2P network (a router sends it
            // through the I2P proxy); any other name is a name.
            Self::Name { host, .. } => {
                Host::i2p(host.trim_end_matches('.')).unwrap_or_else(|_| Host::name(host))
            }
        }
    }

    fn port(&self) -> Option<u16> {
        Some(match self {
            Self::Socket(a) => a.port(),
            Self::Onion { port, .. } | Self::Name { port, .. } => *port,
        })
    }
}

impl From<SocketAddr> for Target {
    fn from(a: SocketAddr) -> Self {
        Self::Socket(a)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(a) => write!(f, "{a}"),
            Self::Onion { key, port } => write!(f, "{}:{port}", Host::Onion(*key)),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for Target {
    type Err = InvalidHost;

    /// `ip:port`, `[ipv6]:port`, `<key>.onion:port` or `name:port`, read
    /// as [`Target::name`] reads the host.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self::Socket(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad(s))?;
        let port: u16 = port.parse().map_err(|_| bad(s))?;
        Self::name(host, port)
    }
}

/// A dial to an onion service or a host name with no proxy to take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedsProxy(pub(crate) String);

impl fmt::Display for NeedsProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} can only be reached through a proxy, and the stack has none",
            self.0
        )
    }
}

impl std::error::Error for NeedsProxy {}
