//! Errors of the SOCKS5 layer.

use std::{error::Error as StdError, fmt, net::SocketAddr};

use tower::BoxError;

/// A SOCKS5 reply code other than "succeeded" (RFC 1928, section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyCode {
    /// `0x01`: general SOCKS server failure.
    GeneralFailure,
    /// `0x02`: connection not allowed by ruleset.
    NotAllowed,
    /// `0x03`: network unreachable.
    NetworkUnreachable,
    /// `0x04`: host unreachable.
    HostUnreachable,
    /// `0x05`: connection refused.
    ConnectionRefused,
    /// `0x06`: TTL expired.
    TtlExpired,
    /// `0x07`: command not supported.
    CommandNotSupported,
    /// `0x08`: address type not supported.
    AddressTypeNotSupported,
    /// Tor's `0xF0`: the onion service's descriptor cannot be found (the
    /// service is down or unknown). Tor sends it, and `0xF1` to `0xF7`, with
    /// `ExtendedErrors` on its SocksPort.
    OnionDescriptorNotFound,
    /// Tor's `0xF1`: the onion service's descriptor is invalid.
    OnionDescriptorInvalid,
    /// Tor's `0xF2`: the introduction to the onion service failed.
    OnionIntroductionFailed,
    /// Tor's `0xF3`: the rendezvous with the onion service failed.
    OnionRendezvousFailed,
    /// Tor's `0xF4`: the onion service needs client authorization, and
    /// none was given.
    OnionClientAuthMissing,
    /// Tor's `0xF5`: the client authorization given was wrong.
    OnionClientAuthWrong,
    /// Tor's `0xF6`: the onion address is invalid (bad checksum or
    /// version).
    OnionAddressInvalid,
    /// Tor's `0xF7`: the introduction to the onion service timed out.
    OnionIntroductionTimedOut,
    /// Any other code that RFC 1928 leaves unassigned (`0x09` to `0xff`).
    Unassigned(u8),
}

impl ReplyCode {
    /// The code for a reply byte; `None` for `0x00` (success).
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x00 => return None,
            0x01 => Self::GeneralFailure,
            0x02 => Self::NotAllowed,
            0x03 => Self::NetworkUnreachable,
            0x04 => Self::HostUnreachable,
            0x05 => Self::ConnectionRefused,
            0x06 => Self::TtlExpired,
            0x07 => Self::CommandNotSupported,
            0x08 => Self::AddressTypeNotSupported,
            0xf0 => Self::OnionDescriptorNotFound,
            0xf1 => Self::OnionDescriptorInvalid,
            0xf2 => Self::OnionIntroductionFailed,
            0xf3 => Self::OnionRendezvousFailed,
            0xf4 => Self::OnionClientAuthMissing,
            0xf5 => Self::OnionClientAuthWrong,
            0xf6 => Self::OnionAddressInvalid,
            0xf7 => Self::OnionIntroductionTimedOut,
            other => Self::Unassigned(other),
        })
    }

    /// The reply byte as sent on the wire.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::GeneralFailure => 0x01,
            Self::NotAllowed => 0x02,
            Self::NetworkUnreachable => 0x03,
            Self::HostUnreachable => 0x04,
            Self::ConnectionRefused => 0x05,
            Self::TtlExpired => 0x06,
            Self::CommandNotSupported => 0x07,
            Self::AddressTypeNotSupported => 0x08,
            Self::OnionDescriptorNotFound => 0xf0,
            Self::OnionDescriptorInvalid => 0xf1,
            Self::OnionIntroductionFailed => 0xf2,
            Self::OnionRendezvousFailed => 0xf3,
            Self::OnionClientAuthMissing => 0xf4,
            Self::OnionClientAuthWrong => 0xf5,
            Self::OnionAddressInvalid => 0xf6,
            Self::OnionIntroductionTimedOut => 0xf7,
            Self::Unassigned(b) => b,
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GeneralFailure => f.pad("general server failure"),
            Self::NotAllowed => f.pad("connection not allowed by ruleset"),
            Self::NetworkUnreachable => f.pad("network unreachable"),
            Self::HostUnreachable => f.pad("host unreachable"),
            Self::ConnectionRefused => f.pad("connection refused"),
            Self::TtlExpired => f.pad("ttl expired"),
            Self::CommandNotSupported => f.pad("command not supported"),
            Self::AddressTypeNotSupported => f.pad("address type not supported"),
            Self::OnionDescriptorNotFound => f.pad("onion service descriptor not found"),
            Self::OnionDescriptorInvalid => f.pad("onion service descriptor invalid"),
            Self::OnionIntroductionFailed => f.pad("onion service introduction failed"),
            Self::OnionRendezvousFailed => f.pad("onion service rendezvous failed"),
            Self::OnionClientAuthMissing => f.pad("onion service client authorization missing"),
            Self::OnionClientAuthWrong => f.pad("onion service client authorization wrong"),
            Self::OnionAddressInvalid => f.pad("onion address invalid"),
            Self::OnionIntroductionTimedOut => f.pad("onion service introduction timed out"),
            Self::Unassigned(b) => write!(f, "unassigned reply code {b:#04x}"),
        }
    }
}

/// What went wrong in a SOCKS5 dial. See [`Socks5Error::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Socks5ErrorKind {
    /// The inner service could not connect to the proxy. The inner error is
    /// the [`source`](StdError::source) (for [`TcpConnector`] a
    /// [`ConnectError`] with the I/O cause).
    ///
    /// [`TcpConnector`]: crate::connect::TcpConnector
    /// [`ConnectError`]: crate::connect::ConnectError
    ProxyUnreachable,
    /// The proxy closed the connection before the handshake finished.
    ProxyClosed,
    /// The proxy accepts none of the authentication methods offered
    /// (it answered `0xff`).
    NoAcceptableAuthMethod,
    /// The proxy picked an authentication method that was not offered.
    UnexpectedAuthMethod(u8),
    /// The proxy wants username/password authentication but none was
    /// configured.
    AuthRequired,
    /// The proxy rejected the username/password (RFC 1929 status byte).
    AuthRejected(u8),
    /// The proxy answered the connect request with an error reply.
    Reply(ReplyCode),
    /// The proxy's answer does not follow the protocol: wrong version byte,
    /// non-zero reserved byte, unknown or truncated address.
    Malformed,
    /// The target cannot be expressed in a SOCKS5 request (a domain name over
    /// 255 bytes, say).
    InvalidTarget,
    /// An I/O error other than the proxy closing the connection.
    Io,
}

impl fmt::Display for Socks5ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ProxyUnreachable => f.pad("proxy unreachable"),
            Self::ProxyClosed => f.pad("proxy closed the connection during the handshake"),
            Self::NoAcceptableAuthMethod => f.pad("no acceptable authentication method"),
            Self::UnexpectedAuthMethod(m) => {
                write!(
                    f,
                    "proxy chose authentication method {m:#04x}, which was not offered"
                )
            }
            Self::AuthRequired => f.pad("proxy requires username/password authentication"),
            Self::AuthRejected(status) => {
                write!(f, "proxy rejected the credentials (status {status:#04x})")
            }
            Self::Reply(code) => write!(f, "proxy replied: {code}"),
            Self::Malformed => f.pad("malformed reply from proxy"),
            Self::InvalidTarget => f.pad("invalid target address"),
            Self::Io => f.pad("i/o error during the handshake"),
        }
    }
}

/// A dial through a SOCKS5 proxy failed.
///
/// [`kind`](Self::kind) tells what failed; [`source`](StdError::source) keeps
/// the cause (the inner service's error, or tokio-socks' error).
#[derive(Debug)]
pub struct Socks5Error {
    kind: Socks5ErrorKind,
    proxy: SocketAddr,
    source: Option<BoxError>,
}

impl Socks5Error {
    pub(crate) fn new(kind: Socks5ErrorKind, proxy: SocketAddr, source: Option<BoxError>) -> Self {
        Self {
            kind,
            proxy,
            source,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> Socks5ErrorKind {
        self.kind
    }

    /// The proxy that was used.
    pub fn proxy(&self) -> SocketAddr {
        self.proxy
    }
}

impl fmt::Display for Socks5Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "socks5 proxy {}: {}", self.proxy, self.kind)
    }
}

impl StdError for Socks5Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// A username or password outside the 1 to 255 bytes that SOCKS5 allows
/// (RFC 1929).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCredentials(pub(crate) &'static str);

impl fmt::Display for InvalidCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid socks5 credentials: {}", self.0)
    }
}

impl StdError for InvalidCredentials {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte maps to a code and back to itself.
    #[test]
    fn reply_code_round_trip() {
        assert_eq!(ReplyCode::from_byte(0), None);
        for b in 1..=255u8 {
            let code = ReplyCode::from_byte(b).expect("non-zero is an error");
            assert_eq!(code.as_byte(), b);
        }
        assert_eq!(ReplyCode::from_byte(5), Some(ReplyCode::ConnectionRefused));
        assert_eq!(ReplyCode::from_byte(9), Some(ReplyCode::Unassigned(9)));
        assert_eq!(
            ReplyCode::from_byte(0xf0),
            Some(ReplyCode::OnionDescriptorNotFound)
        );
        assert_eq!(
            ReplyCode::from_byte(0xf8),
            Some(ReplyCode::Unassigned(0xf8))
        );
    }
}
