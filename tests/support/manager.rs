//! Wiring a manager's callbacks to channels a test can read.

use std::net::SocketAddr;

use connmgr::manager::{Builder, Connection, DialFailure, DialService, Disconnected};
use tokio::{
    net::TcpStream,
    sync::mpsc::{UnboundedReceiver, unbounded_channel},
};

/// What the callbacks received, in order per kind.
#[derive(Debug)]
pub struct Events<IO> {
    pub connected: UnboundedReceiver<Connection<IO>>,
    pub accepted: UnboundedReceiver<Connection<TcpStream>>,
    pub disconnected: UnboundedReceiver<Disconnected>,
    pub failed: UnboundedReceiver<DialFailure>,
}

/// Sets all four callbacks to forward into channels.
pub fn record<D>(b: Builder<SocketAddr, D>) -> (Builder<SocketAddr, D>, Events<D::Response>)
where
    D: DialService<SocketAddr>,
{
    let (ctx, connected) = unbounded_channel();
    let (atx, accepted) = unbounded_channel();
    let (dtx, disconnected) = unbounded_channel();
    let (ftx, failed) = unbounded_channel();
    let b = b
        .on_connection(move |c| {
            let _ = ctx.send(c);
        })
        .on_accept(move |c| {
            let _ = atx.send(c);
        })
        .on_disconnection(move |d| {
            let _ = dtx.send(d);
        })
        .on_dial_failure(move |f| {
            let _ = ftx.send(f);
        });
    (
        b,
        Events {
            connected,
            accepted,
            disconnected,
            failed,
        },
    )
}

/// An address source that always returns `addr`.
pub fn fixed(
    addr: SocketAddr,
) -> impl FnMut() -> std::future::Ready<Option<SocketAddr>> + Send + 'static {
    move || std::future::ready(Some(addr))
}

/// An address source that offers `addrs` in turn.
pub fn cycle(
    addrs: Vec<SocketAddr>,
) -> impl FnMut() -> std::future::Ready<Option<SocketAddr>> + Send + 'static {
    let mut next = 0usize;
    move || {
        next = next.wrapping_add(1);
        std::future::ready(Some(addrs[next % addrs.len()]))
    }
}

/// An `on_connection` that keeps every connection open, and the list.
pub fn keep<IO: Send + 'static, A: Send + 'static>() -> (
    std::sync::Arc<std::sync::Mutex<Vec<connmgr::manager::Connection<IO, A>>>>,
    impl Fn(connmgr::manager::Connection<IO, A>) + Send + Sync + 'static,
) {
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    (held, move |c| h.lock().expect("held").push(c))
}

/// A dial stack that connects every address to the loopback `target`,
/// counting calls: only the manager's choice of address is tested.
pub fn to_peer<A>(
    target: SocketAddr,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> impl tower::Service<
    A,
    Response = TcpStream,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TcpStream>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: A| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        TcpStream::connect(target)
    })
}

/// Every class's dial counts are settled and add up to the totals.
pub fn assert_counts_exact(c: &connmgr::manager::Counters) {
    let mut sum = [0u64; 4];
    for class in connmgr::manager::ConnClass::ALL {
        let k = c.class(class);
        assert!(k.settled(), "{class}: {k:?}");
        for (s, n) in sum
            .iter_mut()
            .zip([k.dials, k.established, k.failures, k.canceled])
        {
            *s += n;
        }
    }
    assert_eq!(
        sum,
        [c.dials, c.established, c.failures, c.canceled],
        "the classes add up to the totals"
    );
    assert_eq!(c.dials, c.established + c.failures + c.canceled, "{c:?}");
}

/// How many automatic connections of `class` are established now.
pub async fn established_in(
    handle: &connmgr::manager::Handle,
    class: connmgr::manager::ConnClass,
) -> usize {
    handle
        .snapshot()
        .await
        .expect("snapshot")
        .established_in(class)
}

/// The addresses a [`recording`] stack was asked for, in order.
pub type Log = std::sync::Arc<std::sync::Mutex<Vec<SocketAddr>>>;

/// A dial stack over real TCP that records every address it is asked for
/// and, when `delay` is not zero, waits it (paused time) before connecting:
/// a slow network, so that a test can act while a dial is in flight.
pub fn recording(
    log: Log,
    delay: std::time::Duration,
) -> impl tower::Service<
    SocketAddr,
    Response = TcpStream,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TcpStream>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |addr: SocketAddr| {
        log.lock().expect("log").push(addr);
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            TcpStream::connect(addr).await
        }
    })
}

/// How many times `addr` was dialled through a [`recording`] stack.
pub fn dials_to(log: &Log, addr: SocketAddr) -> usize {
    log.lock()
        .expect("log")
        .iter()
        .filter(|a| **a == addr)
        .count()
}
