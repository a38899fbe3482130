//! A transparent stream wrapper that remembers the first bytes read, so that a
//! failed handshake can be classified precisely.
//!
//! tokio-socks reports some distinct failures with one error variant (an
//! unassigned reply code comes back as `UnknownAuthMethod`, a proxy that
//! closes mid-reply as a bare `UnexpectedEof`). The bytes the proxy actually
//! sent tell them apart.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{ReplyCode, Socks5Error, Socks5ErrorKind};

const KEEP: usize = 8;

#[derive(Debug)]
pub(crate) struct Recorder<IO> {
    io: IO,
    head: [u8; KEEP],
    len: usize,
}

impl<IO> Recorder<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Self {
            io,
            head: [0; KEEP],
            len: 0,
        }
    }

    pub(crate) fn into_inner(self) -> IO {
        self.io
    }

    fn byte(&self, at: usize) -> Option<u8> {
        (at < self.len.min(KEEP)).then(|| self.head[at])
    }

    /// Where the reply to the connect request starts: after the method
    /// selection (2 bytes) and, if username/password was chosen, its status
    /// (2 more).
    fn reply_offset(&self) -> usize {
        if self.byte(1) == Some(0x02) { 4 } else { 2 }
    }

    pub(crate) fn classify(&self, err: tokio_socks::Error, proxy: SocketAddr) -> Socks5Error {
        use tokio_socks::Error as E;
        let reply = self.reply_offset();
        let kind = match &err {
            E::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
                if self.len >= reply + 4 {
                    // The reply header arrived, its address did not.
                    Socks5ErrorKind::Malformed
                } else {
                    Socks5ErrorKind::ProxyClosed
                }
            }
            E::Io(_) => Socks5ErrorKind::Io,
            E::NoAcceptableAuthMethods => Socks5ErrorKind::NoAcceptableAuthMethod,
            E::AuthorizationRequired => Socks5ErrorKind::AuthRequired,
            E::PasswordAuthFailure(status) => Socks5ErrorKind::AuthRejected(*status),
            // tokio-socks also uses this variant for unassigned reply codes.
            E::UnknownAuthMethod => match self.byte(reply + 1) {
                Some(code) if self.len > reply + 1 => ReplyCode::from_byte(code)
                    .map_or(Socks5ErrorKind::Malformed, Socks5ErrorKind::Reply),
                _ => Socks5ErrorKind::UnexpectedAuthMethod(self.byte(1).unwrap_or(0)),
            },
            E::GeneralSocksServerFailure => Socks5ErrorKind::Reply(ReplyCode::GeneralFailure),
            E::ConnectionNotAllowedByRuleset => Socks5ErrorKind::Reply(ReplyCode::NotAllowed),
            E::NetworkUnreachable => Socks5ErrorKind::Reply(ReplyCode::NetworkUnreachable),
            E::HostUnreachable => Socks5ErrorKind::Reply(ReplyCode::HostUnreachable),
            E::ConnectionRefused => Socks5ErrorKind::Reply(ReplyCode::ConnectionRefused),
            E::TtlExpired => Socks5ErrorKind::Reply(ReplyCode::TtlExpired),
            E::CommandNotSupported => Socks5ErrorKind::Reply(ReplyCode::CommandNotSupported),
            E::AddressTypeNotSupported => {
                Socks5ErrorKind::Reply(ReplyCode::AddressTypeNotSupported)
            }
            E::InvalidTargetAddress(_) if self.len == 0 => Socks5ErrorKind::InvalidTarget,
            _ => Socks5ErrorKind::Malformed,
        };
        // tokio-socks names an unassigned reply code "unknown auth method":
        // that is no cause of a reply error, so none is kept.
        let source = match (&err, kind) {
            (E::UnknownAuthMethod, Socks5ErrorKind::Reply(_)) => None,
            _ => Some(err.into()),
        };
        Socks5Error::new(kind, proxy, source)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Recorder<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            for &b in &buf.filled()[before..] {
                if this.len < KEEP {
                    this.head[this.len] = b;
                }
                this.len += 1;
            }
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Recorder<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
