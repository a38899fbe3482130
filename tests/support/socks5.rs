//! SOCKS5 servers for tests: microsocks (the Debian package) when it is
//! installed, and an in-process server with scripted misbehaviour.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How the in-process server behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// A working proxy.
    Proxy,
    /// Closes the connection as soon as the greeting arrives.
    CloseOnGreeting,
    /// Answers the greeting with version byte 4.
    WrongVersion,
    /// Picks this authentication method whatever was offered.
    ChooseMethod(u8),
    /// Rejects every username/password.
    RejectAuth,
    /// Answers the connect request with this reply code.
    Reply(u8),
    /// Sends a success reply header for an IPv4 address, then only two of
    /// its six remaining bytes, then closes.
    TruncatedAddress,
    /// Accepts TCP and never sends a byte.
    Silent,
    /// Answers Tor's RESOLVE (0xF0) for these names; other names get
    /// "host unreachable".
    Resolve(Vec<(String, std::net::IpAddr)>),
    /// A working proxy that also reaches these names (onion services, say)
    /// at these loopback addresses, as Tor reaches an onion service.
    Hosts(Vec<(String, SocketAddr)>),
}

/// An in-process SOCKS5 server on a loopback port.
#[derive(Debug, Clone)]
pub struct FakeSocks5 {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl FakeSocks5 {
    /// Starts a server. With `credentials`, username/password is required and
    /// must match; without, only "no authentication" is accepted.
    pub async fn start(behaviour: Behaviour, credentials: Option<(&str, &str)>) -> Self {
        Self::start_inner(
            behaviour,
            credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            false,
        )
        .await
    }

    /// A server that requires username/password but accepts any values,
    /// recording each pair it sees (for Tor isolation tests).
    pub async fn start_recording() -> Self {
        Self::start_inner(Behaviour::Proxy, None, true).await
    }

    async fn start_inner(
        behaviour: Behaviour,
        credentials: Option<(String, String)>,
        any_credentials: bool,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake socks5");
        let addr = listener.local_addr().expect("fake socks5 addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = Self {
            addr,
            seen: seen.clone(),
        };
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let behaviour = behaviour.clone();
                let credentials = credentials.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, behaviour, credentials, any_credentials, seen).await;
                });
            }
        });
        server
    }

    /// The username/password pairs received so far.
    pub fn seen_credentials(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .expect("seen lock")
            .iter()
            .filter(|(u, _)| u != RESOLVED && u != CONNECTED)
            .cloned()
            .collect()
    }

    /// The names asked for with CONNECT so far (with `Hosts`).
    pub fn connected_names(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("seen lock")
            .iter()
            .filter(|(u, _)| u == CONNECTED)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The names asked for with RESOLVE so far.
    pub fn resolved_names(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("seen lock")
            .iter()
            .filter(|(u, _)| u == RESOLVED)
            .map(|(_, n)| n.clone())
            .collect()
    }
}

/// The mark of a RESOLVE request among the recorded pairs.
const RESOLVED: &str = "\0resolve";
/// The mark of a CONNECT to a name among the recorded pairs.
const CONNECTED: &str = "\0connect";

async fn serve(
    mut sock: TcpStream,
    behaviour: Behaviour,
    credentials: Option<(String, String)>,
    any_credentials: bool,
    seen: Arc<Mutex<Vec<(String, String)>>>,
) -> std::io::Result<()> {
    // Greeting: VER NMETHODS METHODS...
    let mut head = [0u8; 2];
    sock.read_exact(&mut head).await?;
    let mut methods = vec![0u8; head[1] as usize];
    sock.read_exact(&mut methods).await?;
    let wants_auth = credentials.is_some() || any_credentials;
    match behaviour {
        Behaviour::CloseOnGreeting => return Ok(()),
        Behaviour::Silent => {
            std::future::pending::<()>().await;
        }
        Behaviour::WrongVersion => {
            sock.write_all(&[0x04, 0x00]).await?;
            return Ok(());
        }
        Behaviour::ChooseMethod(m) => {
            sock.write_all(&[0x05, m]).await?;
            return Ok(());
        }
        _ => {}
    }
    let method = if wants_auth && methods.contains(&0x02) {
        0x02
    } else if !wants_auth && methods.contains(&0x00) {
        0x00
    } else {
        0xff
    };
    sock.write_all(&[0x05, method]).await?;
    if method == 0xff {
        return Ok(());
    }
    if method == 0x02 {
        // RFC 1929: VER ULEN UNAME PLEN PASSWD
        let mut ver_len = [0u8; 2];
        sock.read_exact(&mut ver_len).await?;
        let mut user = vec![0u8; ver_len[1] as usize];
        sock.read_exact(&mut user).await?;
        let mut plen = [0u8; 1];
        sock.read_exact(&mut plen).await?;
        let mut pass = vec![0u8; plen[0] as usize];
        sock.read_exact(&mut pass).await?;
        let pair = (
            String::from_utf8_lossy(&user).into_owned(),
            String::from_utf8_lossy(&pass).into_owned(),
        );
        seen.lock().expect("seen lock").push(pair.clone());
        let ok = behaviour != Behaviour::RejectAuth
            && (any_credentials || credentials.as_ref() == Some(&pair));
        sock.write_all(&[0x01, if ok { 0x00 } else { 0x01 }])
            .await?;
        if !ok {
            return Ok(());
        }
    }
    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT
    let mut req = [0u8; 4];
    sock.read_exact(&mut req).await?;
    let target = match req[3] {
        0x01 => {
            let mut b = [0u8; 6];
            sock.read_exact(&mut b).await?;
            SocketAddr::from((
                Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                u16::from_be_bytes([b[4], b[5]]),
            ))
        }
        0x04 => {
            let mut b = [0u8; 18];
            sock.read_exact(&mut b).await?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            SocketAddr::from((Ipv6Addr::from(ip), u16::from_be_bytes([b[16], b[17]])))
        }
        0x03 => {
            // A domain name: only "localhost" resolves here (to 127.0.0.1).
            let mut len = [0u8; 1];
            sock.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0]) + 2];
            sock.read_exact(&mut name).await?;
            let port = u16::from_be_bytes([name[name.len() - 2], name[name.len() - 1]]);
            if let (0xF0, Behaviour::Resolve(table)) = (req[1], &behaviour) {
                let asked = String::from_utf8_lossy(&name[..name.len() - 2]).into_owned();
                seen.lock()
                    .expect("seen lock")
                    .push((RESOLVED.to_owned(), asked.clone()));
                let reply = match table.iter().find(|(n, _)| *n == asked).map(|(_, ip)| *ip) {
                    Some(std::net::IpAddr::V4(v4)) => {
                        [&[0x05, 0x00, 0x00, 0x01][..], &v4.octets(), &[0, 0]].concat()
                    }
                    Some(std::net::IpAddr::V6(v6)) => {
                        [&[0x05, 0x00, 0x00, 0x04][..], &v6.octets(), &[0, 0]].concat()
                    }
                    None => vec![0x05, 0x04, 0x00, 0x01, 0, 0, 0, 0, 0, 0],
                };
                sock.write_all(&reply).await?;
                return Ok(());
            }
            let asked = String::from_utf8_lossy(&name[..name.len() - 2]).into_owned();
            let mapped = match &behaviour {
                Behaviour::Hosts(hosts) => hosts.iter().find(|(n, _)| *n == asked).map(|(_, a)| *a),
                _ => None,
            };
            if let Some(target) = mapped {
                seen.lock()
                    .expect("seen lock")
                    .push((CONNECTED.to_owned(), asked));
                target
            } else if &name[..name.len() - 2] != b"localhost" {
                sock.write_all(&[0x05, 0x04, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
                    .await?;
                return Ok(());
            } else {
                SocketAddr::from((Ipv4Addr::LOCALHOST, port))
            }
        }
        _ => {
            sock.write_all(&[0x05, 0x08, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
                .await?;
            return Ok(());
        }
    };
    match behaviour {
        Behaviour::Reply(code) => {
            sock.write_all(&[0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
                .await?;
            return Ok(());
        }
        Behaviour::TruncatedAddress => {
            sock.write_all(&[0x05, 0x00, 0x00, 0x01, 127, 0]).await?;
            return Ok(());
        }
        _ => {}
    }
    // Only loopback targets are ever dialed by the test proxy.
    assert!(
        target.ip().is_loopback(),
        "test proxy asked to dial {target}"
    );
    let mut upstream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => {
            sock.write_all(&[0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
                .await?;
            return Ok(());
        }
    };
    sock.write_all(&[0x05, 0x00, 0x00, 0x01, 127, 0, 0, 1, 0, 0])
        .await?;
    let _ = tokio::io::copy_bidirectional(&mut sock, &mut upstream).await;
    Ok(())
}

/// A real SOCKS5 server: microsocks, or the in-process server where
/// microsocks is not installed (outside CI; in CI its absence is a failure).
#[derive(Debug)]
pub struct RealSocks5 {
    pub addr: SocketAddr,
    /// `true` when this is microsocks.
    pub external: bool,
    child: Option<Child>,
}

impl Drop for RealSocks5 {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl RealSocks5 {
    /// Starts microsocks on a free loopback port, with optional credentials.
    pub async fn start(credentials: Option<(&str, &str)>) -> Self {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let bin = std::env::var("MICROSOCKS").unwrap_or_else(|_| "microsocks".to_owned());
        let method = if credentials.is_some() { 0x02 } else { 0x00 };
        for _ in 0..20 {
            let port = proxy_port();
            let mut cmd = Command::new(&bin);
            cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some((u, p)) = credentials {
                cmd.args(["-u", u, "-P", p]);
            }
            let child = match cmd.spawn() {
                Ok(child) => child,
                Err(e) => {
                    assert!(
                        !in_ci,
                        "microsocks is required in CI but could not start: {e}"
                    );
                    eprintln!("microsocks not available ({e}); using the in-process SOCKS5 server");
                    let fake = FakeSocks5::start(Behaviour::Proxy, credentials).await;
                    return Self {
                        addr: fake.addr,
                        external: false,
                        child: None,
                    };
                }
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut server = Self {
                addr,
                external: true,
                child: Some(child),
            };
            if server.wait_ready(method).await {
                return server;
            }
            // The port was taken in between, or microsocks died: try another.
            drop(server.child.take().map(|mut c| {
                let _ = c.kill();
                c.wait()
            }));
        }
        panic!("could not start microsocks on a free port");
    }

    /// Waits until the proxy answers a SOCKS5 greeting offering `method`
    /// with that method, and checks that it is this child that answered
    /// (one that could not bind its port has exited).
    async fn wait_ready(&mut self, method: u8) -> bool {
        for _ in 0..500 {
            if self.exited() {
                return false;
            }
            if let Ok(mut probe) = TcpStream::connect(self.addr).await {
                let mut reply = [0u8; 2];
                let answered = probe.write_all(&[0x05, 0x01, method]).await.is_ok()
                    && probe.read_exact(&mut reply).await.is_ok();
                return answered && reply == [0x05, method] && !self.exited();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

/// A port for microsocks: below the kernel's ephemeral range (32768 and up
/// here), so that no test's listener on port 0 and no outgoing connection
/// can take it between choosing it and microsocks binding it; consecutive
/// from a random start, so that one test process never picks one twice.
fn proxy_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let _ = NEXT.compare_exchange(
        0,
        fastrand::u16(0..SPAN) + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN
}
