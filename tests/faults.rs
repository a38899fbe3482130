//! Faults in user code and hostile load never stop the manager: panics,
//! hangs and slowness in the address source, the dial stack and the
//! callbacks, floods of inbound peers, bad SOCKS5 targets, late notices.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use connmgr::{
    connect::TcpConnector,
    manager::{ConnKind, ConnManager, ConnState, DisconnectReason, Panicked},
    socks::{Socks5Error, Socks5ErrorKind, Socks5Layer},
};
use support::{Gate, HoldingPeer, manager::record, settle, until, until_async};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceExt};

/// A source that panics on its first call and then offers `addr`: the panic
/// costs one failed attempt (it feeds the throttle, here set to start after
/// one failure), is counted, and automatic outbound goes on.
#[tokio::test(start_paused = true)]
async fn address_source_panic_is_a_failed_attempt() {
    let peer = HoldingPeer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (b, mut ev) = record(
        ConnManager::builder()
            .target_outbound(1)
            .max_failures(1)
            .retry_base(Duration::from_secs(1))
            .address_source(move || {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("a buggy address source");
                }
                std::future::ready(Some(peer.addr))
            }),
    );
    let start = tokio::time::Instant::now();
    let handle = b.start().expect("start");
    let conn = ev
        .connected
        .recv()
        .await
        .expect("connected after the panic");
    assert_eq!(conn.kind(), ConnKind::Automatic);
    assert_eq!(start.elapsed(), Duration::from_secs(1), "throttled once");
    let c = handle.counters();
    assert_eq!((c.panics, c.throttled, c.consecutive_failures), (1, 1, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    handle.stop().await;
}

/// A dial stack whose `poll_ready` panics once and whose `call` panics once.
#[derive(Clone)]
struct Flaky {
    ready_panics: Arc<AtomicBool>,
    call_panics: Arc<AtomicBool>,
}

impl Service<SocketAddr> for Flaky {
    type Response = TcpStream;
    type Error = std::io::Error;
    type Future = futures_util::future::BoxFuture<'static, std::io::Result<TcpStream>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready_panics.swap(false, Ordering::SeqCst) {
            panic!("a buggy poll_ready");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        if self.call_panics.swap(false, Ordering::SeqCst) {
            panic!("a buggy call");
        }
        Box::pin(TcpStream::connect(addr))
    }
}

/// Panics in the dial stack's `poll_ready` and `call` on the automatic
/// path: each is a failed attempt (the one in `call` is reported with a
/// `Panicked` error), and the target is filled anyway.
#[tokio::test(start_paused = true)]
async fn dial_call_panic_is_a_failed_attempt() {
    let peer = HoldingPeer::start().await;
    let dialer = Flaky {
        ready_panics: Arc::new(AtomicBool::new(true)),
        call_panics: Arc::new(AtomicBool::new(true)),
    };
    let (b, mut ev) = record(
        ConnManager::with_dialer(dialer)
            .target_outbound(1)
            .address_source(move || std::future::ready(Some(peer.addr))),
    );
    let handle = b.start().expect("start");
    let failure = ev.failed.recv().await.expect("the call panic is reported");
    let panicked = failure.error.downcast_ref::<Panicked>().expect("Panicked");
    assert_eq!(panicked.what(), "dial stack call");
    assert_eq!(failure.info.kind, ConnKind::Automatic);
    let _conn = ev.connected.recv().await.expect("the target is filled");
    let c = handle.counters();
    assert_eq!((c.panics, c.dials, c.failures, c.established), (2, 2, 1, 1));
    handle.stop().await;
}

/// A dial future that panics is a failed dial like any other: it feeds the
/// failure throttle. With the throttle after 5 failures and a 1 s base,
/// 1.5 s see 6 dials, not a hundred thousand.
#[tokio::test(start_paused = true)]
async fn panicking_dial_counts_for_throttle() {
    async fn buggy(_: SocketAddr) -> std::io::Result<TcpStream> {
        panic!("a buggy dial future")
    }
    let handle = ConnManager::with_dialer(tower::service_fn(buggy))
        .target_outbound(1)
        .max_failures(5)
        .retry_base(Duration::from_secs(1))
        .address_source(|| std::future::ready(Some("127.0.0.1:9".parse().expect("addr"))))
        .start()
        .expect("start");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = handle.counters();
    // Five at once, the sixth after a throttle wait at 1 s; the seventh is
    // waiting out the second throttle wait.
    assert_eq!(c.dials, 6, "{c:?}");
    assert_eq!((c.failures, c.panics, c.throttled), (6, 6, 2), "{c:?}");
    handle.stop().await;
}

/// A source that never has an address, with the throttle off, is asked once
/// per retry base: the fill task waits instead of spinning, so a
/// current-thread runtime keeps running and `stop` returns.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn empty_source_without_throttle_yields() {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let handle = ConnManager::builder()
        .max_failures(u32::MAX)
        .retry_base(Duration::from_secs(1))
        .address_source(move || {
            c.fetch_add(1, Ordering::SeqCst);
            std::future::ready(None)
        })
        .start()
        .expect("start");
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let asked = calls.load(Ordering::SeqCst);
    assert_eq!(asked, 11, "once at start, then once a second");
    assert_eq!(handle.counters().no_address, asked);
    handle.stop().await;
    assert!(handle.is_stopped());
}

/// With a callback that blocks, the queue to the callbacks fills, and the
/// manager stops starting automatic dials instead of queueing without end;
/// when the callback returns, everything queued is delivered in order and
/// dialing resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_callback_bounded_queue() {
    let refused = support::refused_addrs(8).await;
    let gate = Gate::default();
    let g = gate.clone();
    let reported = Arc::new(AtomicU64::new(0));
    let r = reported.clone();
    let handle = ConnManager::builder()
        .target_outbound(8)
        .max_failures(u32::MAX)
        // Eight addresses for eight slots: a candidate whose last request
        // has not ended yet is a duplicate, and a run of them rests the
        // fill task for the throttle wait; keep that short here.
        .throttle_wait(Duration::from_millis(1))
        .callback_queue(16)
        .address_source(support::manager::cycle(refused))
        .on_dial_failure(move |_| {
            g.wait();
            r.fetch_add(1, Ordering::SeqCst);
        })
        .start()
        .expect("start");
    // Let it run against the closed gate: refused dials take microseconds,
    // so an unbounded manager would make tens of thousands here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled = handle.counters().dials;
    // The queue (16), one batch in the callback task (32), the backlog (at
    // most the 8 dials in flight when it filled) and those 8 dials.
    assert!(stalled <= 16 + 32 + 8 + 8, "dials while blocked: {stalled}");
    assert_eq!(reported.load(Ordering::SeqCst), 0);

    gate.open();
    until_async("dialing resumes", || async {
        tokio::task::yield_now().await;
        handle.counters().dials > stalled + 100
    })
    .await;
    handle.stop().await;
    let c = handle.counters();
    assert_eq!(c.failures + c.canceled, c.dials);
    assert_eq!(reported.load(Ordering::SeqCst), c.failures, "none lost");
}

/// A callback that never returns cannot hang `stop`: after the grace period
/// stop returns, and no callback starts after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_callback_does_not_hang_stop() {
    let peer = HoldingPeer::start_many(2).await;
    let gate = Gate::default();
    let g = gate.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handle = ConnManager::builder()
        .stop_grace(Duration::from_millis(200))
        .on_connection(move |conn| {
            c.fetch_add(1, Ordering::SeqCst);
            g.wait();
            drop(conn);
        })
        .start()
        .expect("start");
    handle.connect(peer.addrs[0]).await.expect("connect");
    handle.connect(peer.addrs[1]).await.expect("connect");
    until("the first callback is stuck", || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), handle.stop()).await;
    assert!(stopped.is_ok(), "stop returned");
    assert!(handle.is_stopped());
    gate.open();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no callback after stop");
    until("the queued connection was closed", || peer.closed() >= 1).await;
}

/// 120 peers connect at once to a manager whose `on_accept` is blocked: the
/// manager takes no more sockets than its callback queue holds (the rest
/// wait in the kernel's listen backlog, 128 here, not in this process);
/// once the callback runs again, each peer is admitted up to `max_inbound`
/// or closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_with_slow_on_accept_bounded() {
    const PEERS: u64 = 120;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let gate = Gate::default();
    let g = gate.clone();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    let handle = ConnManager::builder()
        .listener(listener)
        .max_inbound(Some(50))
        // Every newcomer would evict someone when full: this test counts
        // admissions, so the full slots refuse instead.
        .policy(connmgr::policy::Policy::new().evict_when_full(false))
        .callback_queue(8)
        .on_accept(move |conn| {
            g.wait();
            h.lock().expect("held").push(conn);
        })
        .start()
        .expect("start");
    let mut clients = Vec::new();
    for _ in 0..PEERS {
        clients.push(TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Admitted: the callback queue (8), one batch in the callback task
    // (32), and what the manager admitted while it filled (one batch from
    // the accept queue, 16). Besides, at most the accept queue (16) and one
    // reserved place hold sockets not yet admitted.
    let taken = handle.counters().inbound_accepted;
    assert!(
        taken <= 8 + 32 + 16,
        "sockets admitted while blocked: {taken}"
    );

    gate.open();
    until_async("every peer is admitted or closed", || async {
        tokio::task::yield_now().await;
        let c = handle.counters();
        c.inbound_accepted + c.inbound_rejected == PEERS
    })
    .await;
    assert_eq!(handle.counters().inbound_accepted, 50);
    until("every admitted peer reached on_accept", || {
        held.lock().expect("held").len() == 50
    })
    .await;
    handle.stop().await;
}

/// A domain target must fit SOCKS5's length byte (1 to 255 bytes): longer
/// or empty names fail with `InvalidTarget` before the proxy is dialed,
/// instead of wrapping the length byte or panicking in tokio-socks.
#[tokio::test]
async fn socks5_domain_length_checked() {
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_addr = proxy.local_addr().expect("addr");
    let dialer = Socks5Layer::new(proxy_addr).layer(TcpConnector::new());
    for len in [0usize, 256, 300, 600] {
        let name = "a".repeat(len);
        let err: Socks5Error = dialer
            .clone()
            .oneshot((name, 8333))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), Socks5ErrorKind::InvalidTarget, "{len} bytes");
    }
    // Nothing reached the proxy.
    let accepted = tokio::time::timeout(Duration::from_millis(50), proxy.accept()).await;
    assert!(accepted.is_err(), "the proxy was never dialed");
    // 255 bytes is a valid request: it goes to the proxy.
    let dial = tokio::spawn(dialer.oneshot(("a".repeat(255), 8333)));
    let (_sock, _) = proxy.accept().await.expect("a 255-byte name is dialed");
    dial.abort();
}

/// A connection's drop notice is matched to that connection, not to its
/// request: the notice of a permanent peer's previous connection, dropped
/// after the peer reconnected, leaves the new connection alone.
#[tokio::test(start_paused = true)]
async fn stale_drop_notice_ignored() {
    let peer = HoldingPeer::start().await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .retry_base(Duration::from_millis(10))
            .jitter(0.0),
    );
    let handle = b.start().expect("start");
    let id = handle.connect_permanent(peer.addr).await.expect("connect");
    let first = ev.connected.recv().await.expect("connected");
    handle.disconnect(id).await.expect("disconnect");
    let ended = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(ended.reason, DisconnectReason::Disconnect);
    let second = ev.connected.recv().await.expect("reconnected");
    assert_eq!(second.id(), id);

    drop(first); // late: its notice arrives while `second` is up
    settle().await;
    assert_eq!(handle.state(id).await, Ok(ConnState::Established));
    assert!(!second.is_closed());
    assert!(ev.disconnected.try_recv().is_err(), "no second disconnect");
    drop(second);
    let ended = ev.disconnected.recv().await.expect("now it ends");
    assert_eq!(ended.reason, DisconnectReason::Dropped);
    handle.stop().await;
}

/// A source that never answers holds up automatic dials only: explicit
/// requests go on, and `stop` returns (the fill task is aborted).
#[tokio::test(start_paused = true)]
async fn hanging_address_source_does_not_block_stop() {
    let peer = HoldingPeer::start().await;
    let (b, mut ev) =
        record(ConnManager::builder().address_source(std::future::pending::<Option<SocketAddr>>));
    let handle = b.start().expect("start");
    let id = handle.connect(peer.addr).await.expect("connect");
    let conn = ev.connected.recv().await.expect("explicit requests go on");
    assert_eq!(conn.id(), id);
    assert_eq!(handle.counters().dials, 1, "no automatic dial");
    handle.stop().await;
    assert!(handle.is_stopped());
}

/// The drop notice of an automatic connection reaches the manager through
/// the fill task, which passes it on even while it waits in a source that
/// never answers: the drop is reported, the entry ends, the slot is free.
#[tokio::test(start_paused = true)]
async fn automatic_drop_reported_while_source_hangs() {
    let peer = HoldingPeer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (b, mut ev) = record(
        ConnManager::builder()
            .target_outbound(2)
            .address_source(move || {
                let first = c.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if !first {
                        std::future::pending::<()>().await;
                    }
                    Some(peer.addr)
                }
            }),
    );
    let handle = b.start().expect("start");
    let conn = ev.connected.recv().await.expect("connected");
    assert_eq!(conn.kind(), ConnKind::Automatic);
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the second ask hangs");
    let id = conn.id();
    drop(conn);
    let ended = ev.disconnected.recv().await.expect("drop reported");
    assert_eq!(
        (ended.info.id, ended.reason),
        (id, DisconnectReason::Dropped)
    );
    assert_eq!(handle.state(id).await, Ok(ConnState::Disconnected));
    let snapshot = handle.snapshot().await.expect("snapshot");
    assert!(snapshot.entries.is_empty(), "no entry left");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "still waiting on the source"
    );
    handle.stop().await;
}

/// A dial stack whose `poll_ready` fails once, then never becomes ready.
#[derive(Clone)]
struct NotReady {
    failed: Arc<AtomicBool>,
}

impl Service<SocketAddr> for NotReady {
    type Response = TcpStream;
    type Error = std::io::Error;
    type Future = futures_util::future::BoxFuture<'static, std::io::Result<TcpStream>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.failed.swap(true, Ordering::SeqCst) {
            return Poll::Ready(Err(std::io::ErrorKind::Other.into()));
        }
        Poll::Pending
    }

    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        Box::pin(TcpStream::connect(addr))
    }
}

/// A stack whose `poll_ready` errs costs a failed attempt and a wait of the
/// retry base; one that never becomes ready holds up automatic dials, ends
/// each explicit dial at the connect timeout, and never holds up `stop`.
#[tokio::test(start_paused = true)]
async fn dial_stack_not_ready_waits_and_stops() {
    let failed = Arc::new(AtomicBool::new(false));
    let (b, mut ev) = record(
        ConnManager::with_dialer(NotReady {
            failed: failed.clone(),
        })
        .retry_base(Duration::from_secs(1))
        .connect_timeout(Some(Duration::from_secs(30)))
        .address_source(|| std::future::ready(Some("127.0.0.1:9".parse().expect("addr")))),
    );
    let start = tokio::time::Instant::now();
    let handle = b.start().expect("start");
    until("the error is seen", || failed.load(Ordering::SeqCst)).await;
    assert_eq!(handle.counters().consecutive_failures, 1);
    let id = handle
        .connect("127.0.0.1:9".parse().expect("addr"))
        .await
        .expect("connect");
    let failure = ev.failed.recv().await.expect("timed out");
    assert_eq!(failure.info.id, id);
    assert!(failure.error.is::<tower::timeout::error::Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(handle.counters().dials, 1, "no automatic dial started");
    handle.stop().await;
    assert!(handle.is_stopped());
}
