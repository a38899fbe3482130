//! Shared test support: loopback targets, a real SOCKS5 proxy (microsocks)
//! and an in-process SOCKS5 server that can misbehave on purpose.
#![allow(dead_code, unreachable_pub)]

pub mod addrs;
pub mod dns;
pub mod manager;
pub mod socks5;
pub mod tor;

use std::{
    net::SocketAddr,
    sync::{Mutex, PoisonError},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Installs a tracing subscriber that writes through the test harness.
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A loopback listener that echoes whatever it receives, on every connection.
pub async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The sockets that hold the ports of [`refused_addr`] and
/// [`refused_addrs`] until the test process ends.
static RESERVED: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());

/// A loopback address on which nothing listens: connecting is refused.
///
/// The port stays bound (never listening, without `SO_REUSEADDR`) for the
/// rest of the process, so that no other test's listener and no outgoing
/// connection can take it while this test expects a refusal.
pub async fn refused_addr() -> SocketAddr {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("an inet address");
    RESERVED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(socket);
    addr
}

/// Writes `msg`, reads the same number of bytes back and checks them.
pub async fn assert_echo<S>(stream: &mut S, msg: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(msg).await.expect("write to echo");
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).await.expect("read from echo");
    assert_eq!(back, msg);
}

/// A loopback peer that accepts connections and keeps them open, counting
/// the accepts. It may listen on several ports (`addrs`), one address per
/// connection the manager may hold to it (the manager never makes two to
/// one address).
#[derive(Debug, Clone)]
pub struct HoldingPeer {
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Sockets closed by the other side so far.
    pub closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HoldingPeer {
    pub async fn start() -> Self {
        Self::start_many(1).await
    }

    /// One peer on `n` loopback ports.
    pub async fn start_many(n: usize) -> Self {
        Self::start_on(vec![std::net::Ipv4Addr::LOCALHOST; n]).await
    }

    /// One peer listening on each of these loopback addresses (127.a.b.c,
    /// which Linux routes to `lo`), on a free port.
    pub async fn start_on(ips: Vec<std::net::Ipv4Addr>) -> Self {
        use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let mut addrs = Vec::new();
        for ip in ips {
            assert!(ip.is_loopback(), "tests only use loopback addresses");
            let listener = TcpListener::bind((ip, 0)).await.expect("bind holding peer");
            addrs.push(listener.local_addr().expect("addr"));
            let (a, c) = (accepted.clone(), closed.clone());
            tokio::spawn(async move {
                while let Ok((mut sock, _)) = listener.accept().await {
                    a.fetch_add(1, Ordering::SeqCst);
                    let c = c.clone();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        // Hold until the other side closes.
                        loop {
                            match sock.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                        c.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
        }
        Self {
            addr: addrs[0],
            addrs,
            accepted,
            closed,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `n` loopback peers that accept each connection and close it at once.
pub async fn closing_peers(n: usize) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for _ in 0..n {
        addrs.push(closing_peer().await);
    }
    addrs
}

/// `n` loopback addresses on which nothing listens (see [`refused_addr`]).
pub async fn refused_addrs(n: usize) -> Vec<SocketAddr> {
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        addrs.push(refused_addr().await);
    }
    addrs
}

/// A loopback peer that accepts each connection and closes it at once.
pub async fn closing_peer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind closing peer");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    addr
}

/// Lets other tasks and the I/O driver run until `cond` holds, without
/// letting paused time auto-advance (the runtime never goes idle). Panics
/// after a bounded number of rounds.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("timed out waiting until {what}");
}

/// Like [`until`], for an async condition.
pub async fn until_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200_000 {
        if cond().await {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("timed out waiting until {what}");
}

/// Runs other tasks for a while without letting time advance, so that
/// anything that would happen now has happened.
pub async fn settle() {
    for _ in 0..2_000 {
        tokio::task::yield_now().await;
    }
}

/// Connects to `target` from the loopback address `from` (127.a.b.c), as a
/// peer from that address would.
pub async fn connect_from(from: std::net::Ipv4Addr, target: SocketAddr) -> tokio::net::TcpStream {
    assert!(from.is_loopback(), "tests only use loopback addresses");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind((from, 0).into()).expect("bind source address");
    socket.connect(target).await.expect("connect")
}

/// A gate a blocking callback waits at until the test opens it.
#[derive(Clone, Debug, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    /// Blocks this thread, as a stuck callback would. `block_in_place`
    /// hands the worker's other tasks to another thread first, as an
    /// application that blocks in a callback should.
    pub fn wait(&self) {
        tokio::task::block_in_place(|| {
            let (open, cv) = &*self.0;
            let mut open = open.lock().expect("gate");
            while !*open {
                open = cv.wait(open).expect("gate");
            }
        });
    }

    pub fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().expect("gate") = true;
        cv.notify_all();
    }
}
