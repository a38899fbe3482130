//! btcd's connmgr test suite (connmanager_test.go), one test each, rewritten
//! for this API over real loopback sockets. Timing runs on paused tokio time.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use connmgr::{
    backoff::JitterRng,
    manager::{Builder, ConfigError, ConnKind, ConnManager, ConnState, Error},
    policy::Policy,
};
use support::{
    HoldingPeer,
    manager::{cycle, fixed, record},
    settle, until, until_async,
};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};

/// TestNewConfig: invalid configuration is a typed error at build time, and
/// the defaults start.
#[tokio::test]
async fn new_config() {
    let err = ConnManager::builder()
        .retry_base(Duration::ZERO)
        .start()
        .expect_err("zero retry base");
    assert!(matches!(err, ConfigError::Backoff(_)), "{err}");
    let err = ConnManager::builder()
        .retry_base(Duration::from_secs(10))
        .retry_cap(Duration::from_secs(1))
        .start()
        .expect_err("cap below base");
    assert!(matches!(err, ConfigError::Backoff(_)));
    let err = ConnManager::builder()
        .jitter(2.0)
        .start()
        .expect_err("jitter > 1");
    assert!(matches!(err, ConfigError::Backoff(_)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let err = ConnManager::builder()
        .listener(listener)
        .start()
        .expect_err("no on_accept");
    assert_eq!(err, ConfigError::ListenersWithoutOnAccept);

    let handle = ConnManager::builder().start().expect("defaults are valid");
    assert!(!handle.is_stopped());
    handle.stop().await;
    assert!(handle.is_stopped());
}

/// Starting outside a runtime is a typed error, not a panic.
#[test]
fn new_config_without_runtime() {
    let err = ConnManager::builder().start().expect_err("no runtime");
    assert_eq!(err, ConfigError::NoRuntime);
}

/// TestInboundLimit: with max_inbound 2, a third socket is rejected; closing
/// one accepted connection frees exactly one slot.
#[tokio::test]
async fn inbound_limit() {
    support::trace_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (b, mut ev) = record(
        ConnManager::builder()
            .listener(listener)
            .max_inbound(Some(2))
            // btcd's limit: a full node refuses (no eviction).
            .policy(Policy::new().evict_when_full(false)),
    );
    let handle = b.start().expect("start");

    let _c1 = TcpStream::connect(addr).await.expect("c1");
    let first = ev.accepted.recv().await.expect("first accepted");
    let _c2 = TcpStream::connect(addr).await.expect("c2");
    let second = ev.accepted.recv().await.expect("second accepted");
    assert_ne!(first.id(), second.id());
    assert_eq!(first.kind(), ConnKind::Inbound);

    let mut c3 = TcpStream::connect(addr).await.expect("c3 tcp");
    let mut buf = [0u8; 1];
    let n = c3.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "the rejected socket is closed at once");
    assert_eq!(handle.counters().inbound_rejected, 1);
    assert!(
        ev.accepted.try_recv().is_err(),
        "a rejected socket never reaches on_accept"
    );

    drop(first);
    let _c4 = TcpStream::connect(addr).await.expect("c4");
    let replacement = ev.accepted.recv().await.expect("replacement accepted");
    let counters = handle.counters();
    assert_eq!(counters.inbound_accepted, 3);
    assert_eq!(counters.inbound_rejected, 1);

    // Both remaining slots are taken again: the next one is rejected.
    let mut c5 = TcpStream::connect(addr).await.expect("c5 tcp");
    assert_eq!(c5.read(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(handle.counters().inbound_rejected, 2);
    drop((second, replacement));
    handle.stop().await;
}

/// TestInboundLimitDisabled: max_inbound 0 rejects every socket.
#[tokio::test]
async fn inbound_limit_disabled() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (b, mut ev) = record(
        ConnManager::builder()
            .listener(listener)
            .max_inbound(Some(0)),
    );
    let handle = b.start().expect("start");
    let mut c = TcpStream::connect(addr).await.expect("tcp");
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(handle.counters().inbound_rejected, 1);
    assert_eq!(handle.counters().inbound_accepted, 0);
    handle.stop().await;
    assert!(ev.accepted.try_recv().is_err());
}

/// TestInboundLimitConcurrent: 100 clients at once against max_inbound 8:
/// never more than 8 live, and every slot comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_limit_concurrent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let live = Arc::new(AtomicUsize::new(0));
    let max_live = Arc::new(AtomicUsize::new(0));
    let (l, m) = (live.clone(), max_live.clone());
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let handle = ConnManager::builder()
        .listener(listener)
        .max_inbound(Some(8))
        // btcd's limit: a full node refuses (no eviction).
        .policy(Policy::new().evict_when_full(false))
        .on_accept(move |conn| {
            let now = l.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let (l, mut release) = (l.clone(), release_rx.clone());
            tokio::spawn(async move {
                let _ = release.wait_for(|r| *r).await;
                l.fetch_sub(1, Ordering::SeqCst);
                drop(conn);
            });
        })
        .start()
        .expect("start");

    let clients: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { TcpStream::connect(addr).await.ok() }))
        .collect();
    let mut held = Vec::new();
    for c in clients {
        held.push(c.await.expect("join"));
    }
    until_async("all 100 are accepted or rejected", || async {
        let c = handle.counters();
        c.inbound_accepted + c.inbound_rejected == 100
    })
    .await;
    assert_eq!(handle.counters().inbound_accepted, 8);
    assert_eq!(handle.counters().inbound_rejected, 92);
    until("on_accept ran for each of the 8", || {
        live.load(Ordering::SeqCst) == 8
    })
    .await;

    release_tx.send(true).expect("release");
    until("every slot is released", || {
        live.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(max_live.load(Ordering::SeqCst) <= 8);
    // All 8 slots are free again.
    let extra: Vec<_> = futures_lite_connect(addr, 8).await;
    until_async("8 more are accepted", || async {
        handle.counters().inbound_accepted == 16
    })
    .await;
    drop((extra, held));
    handle.stop().await;
}

async fn futures_lite_connect(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.expect("connect"));
    }
    out
}

/// TestStartStop: one connection, stop twice, then every call is a typed
/// error and no callback runs.
#[tokio::test]
async fn start_stop() {
    let peer = HoldingPeer::start().await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .target_outbound(1)
            .address_source(fixed(peer.addr)),
    );
    let handle = b.start().expect("start");
    let conn = ev.connected.recv().await.expect("one connection");
    let id = conn.id();

    handle.stop().await;
    handle.stop().await; // a second stop returns at once
    assert_eq!(
        handle.connect_permanent(peer.addr).await,
        Err(Error::Stopped)
    );
    assert_eq!(handle.disconnect(id).await, Err(Error::Stopped));
    assert_eq!(handle.remove(id).await, Err(Error::Stopped));
    assert_eq!(handle.state(id).await, Err(Error::Stopped));
    assert!(handle.snapshot().await.is_err());

    // The connection stays with its owner; dropping it now reports nothing.
    assert!(!conn.is_closed());
    drop(conn);
    settle().await;
    assert!(
        ev.disconnected.try_recv().is_err(),
        "no callback after stop"
    );
    assert!(
        ev.connected.recv().await.is_none(),
        "the callback task has ended"
    );
}

/// TestConnectMode: no address source means no automatic connections; an
/// explicit permanent connect is the only one.
#[tokio::test(start_paused = true)]
async fn connect_mode() {
    let peer = HoldingPeer::start().await;
    let (b, mut ev) = record(ConnManager::builder().target_outbound(2));
    let handle = b.start().expect("start");
    let id = handle.connect_permanent(peer.addr).await.expect("connect");
    let conn = ev.connected.recv().await.expect("connection");
    assert_eq!(conn.id(), id);
    assert_eq!(conn.kind(), ConnKind::Permanent);
    assert_eq!(handle.state(id).await, Ok(ConnState::Established));

    tokio::time::advance(Duration::from_secs(3600)).await;
    settle().await;
    assert!(ev.connected.try_recv().is_err(), "no second connection");
    assert_eq!(handle.snapshot().await.expect("snapshot").entries.len(), 1);
    assert_eq!(peer.accepted(), 1);
    handle.stop().await;
}

/// TestTargetOutbound: target 10 from a source with more addresses than
/// that: exactly 10 connections, never an 11th. (btcd's source gives one
/// address; here no address gets two connections.)
#[tokio::test(start_paused = true)]
async fn target_outbound() {
    let peer = HoldingPeer::start_many(12).await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .target_outbound(10)
            .address_source(cycle(peer.addrs.clone())),
    );
    let handle = b.start().expect("start");
    let mut conns = Vec::new();
    for _ in 0..10 {
        let c = ev.connected.recv().await.expect("connection");
        assert_eq!(c.kind(), ConnKind::Automatic);
        conns.push(c);
    }
    tokio::time::advance(Duration::from_secs(3600)).await;
    settle().await;
    assert!(ev.connected.try_recv().is_err(), "no 11th connection");
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.established(ConnKind::Automatic), 10);
    assert_eq!(snap.entries.len(), 10);
    assert_eq!(peer.accepted(), 10);
    handle.stop().await;
}

/// TestTargetOutboundComposition: target 3 plus 2 permanent peers, whether
/// the permanent requests come right at start or later: 3 automatic and 2
/// permanent connections, nothing more.
#[tokio::test(start_paused = true)]
async fn target_outbound_composition() {
    for permanent_first in [true, false] {
        let auto_peer = HoldingPeer::start_many(3).await;
        let p1 = HoldingPeer::start().await;
        let p2 = HoldingPeer::start().await;
        let (b, mut ev) = record(
            ConnManager::builder()
                .target_outbound(3)
                .address_source(cycle(auto_peer.addrs.clone())),
        );
        let handle = b.start().expect("start");
        let mut conns = Vec::new();
        if !permanent_first {
            for _ in 0..3 {
                conns.push(ev.connected.recv().await.expect("automatic"));
            }
        }
        handle.connect_permanent(p1.addr).await.expect("p1");
        handle.connect_permanent(p2.addr).await.expect("p2");
        while conns.len() < 5 {
            conns.push(ev.connected.recv().await.expect("connection"));
        }
        tokio::time::advance(Duration::from_secs(600)).await;
        settle().await;
        assert!(ev.connected.try_recv().is_err(), "no extra connection");
        let automatic = conns
            .iter()
            .filter(|c| c.kind() == ConnKind::Automatic)
            .count();
        let permanent = conns
            .iter()
            .filter(|c| c.kind() == ConnKind::Permanent)
            .count();
        assert_eq!(
            (automatic, permanent),
            (3, 2),
            "permanent first: {permanent_first}"
        );
        handle.stop().await;
    }
}

/// TestRetryPermanent: a disconnected permanent peer goes back to Pending
/// and is reconnected under the same id; remove ends it as Disconnected.
#[tokio::test(start_paused = true)]
async fn retry_permanent() {
    let peer = HoldingPeer::start().await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .retry_base(Duration::from_secs(1))
            .jitter(0.0),
    );
    let handle = b.start().expect("start");
    let id = handle.connect_permanent(peer.addr).await.expect("connect");
    let first = ev.connected.recv().await.expect("first connection");
    assert_eq!(first.id(), id);
    assert_eq!(handle.state(id).await, Ok(ConnState::Established));

    handle.disconnect(id).await.expect("disconnect");
    let gone = ev.disconnected.recv().await.expect("disconnection");
    assert_eq!(gone.info.id, id);
    assert!(gone.reconnect_at.is_some());
    assert_eq!(handle.state(id).await, Ok(ConnState::Pending));
    assert!(first.is_closed(), "disconnect closes the connection");

    let second = ev.connected.recv().await.expect("reconnected");
    assert_eq!(second.id(), id);
    assert_eq!(handle.state(id).await, Ok(ConnState::Established));

    handle.remove(id).await.expect("remove");
    let gone = ev.disconnected.recv().await.expect("disconnection");
    assert_eq!(gone.info.id, id);
    assert_eq!(gone.reconnect_at, None);
    assert_eq!(handle.state(id).await, Ok(ConnState::Disconnected));
    tokio::time::advance(Duration::from_secs(3600)).await;
    settle().await;
    assert!(
        ev.connected.try_recv().is_err(),
        "a removed permanent peer is never retried"
    );
    handle.stop().await;
}

/// TestMaxRetryDuration: while the peer is down, retry delays double up to
/// the cap and stay there; when it comes back, the request connects.
#[tokio::test(start_paused = true)]
async fn max_retry_duration() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener); // the network is down
    let base = Duration::from_secs(1);
    let cap = Duration::from_secs(4);
    let (b, mut ev) = record(
        ConnManager::builder()
            .retry_base(base)
            .retry_cap(cap)
            .jitter(0.0),
    );
    let handle = b.start().expect("start");
    let id = handle.connect_permanent(addr).await.expect("connect");

    let mut delays = Vec::new();
    for attempt in 1..=6u32 {
        let failure = ev.failed.recv().await.expect("failure");
        assert_eq!(failure.info.id, id);
        assert_eq!(failure.attempt, attempt);
        let at = failure.retry_at.expect("permanent requests are retried");
        delays.push((at - tokio::time::Instant::now()).as_secs());
        assert_eq!(handle.state(id).await, Ok(ConnState::Failing));
    }
    assert_eq!(delays, [1, 2, 4, 4, 4, 4]);

    // The network comes back.
    let listener = TcpListener::bind(addr).await.expect("rebind");
    let conn = ev.connected.recv().await.expect("connected at last");
    assert_eq!(conn.id(), id);
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.get(id).expect("entry").attempts, 7);
    drop(listener);
    handle.stop().await;
}

/// TestNetworkFailure: when every dial fails, the first 25 automatic
/// attempts go out at once, then one per retry base.
#[tokio::test(start_paused = true)]
async fn network_failure() {
    let down = support::refused_addrs(5).await;
    let base = Duration::from_secs(5);
    let handle = ConnManager::builder()
        .target_outbound(5)
        .retry_base(base)
        .address_source(cycle(down))
        .on_connection(|_| panic!("no connection can succeed"))
        .start()
        .expect("start");
    until("the throttle engages", || handle.counters().throttled == 1).await;
    settle().await;
    let burst = handle.counters().dials;
    assert!((25..=29).contains(&burst), "burst of {burst} dials");
    assert!(handle.counters().consecutive_failures >= 25);

    for round in 1..=3u64 {
        tokio::time::advance(base - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(
            handle.counters().dials,
            burst + round - 1,
            "nothing before the base"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        until("the throttled dial goes out", || {
            handle.counters().dials == burst + round
        })
        .await;
    }
    handle.stop().await;
}

/// TestStopFailed: a permanent request that keeps failing is not retried
/// once the manager has stopped.
#[tokio::test(start_paused = true)]
async fn stop_failed() {
    let down = support::refused_addr().await;
    let (b, mut ev) = record(ConnManager::builder().retry_base(Duration::from_secs(1)));
    let handle = b.start().expect("start");
    handle.connect_permanent(down).await.expect("connect");
    let failure = ev.failed.recv().await.expect("first failure");
    assert!(failure.retry_at.is_some(), "a retry was scheduled");
    handle.stop().await;
    let dials = handle.counters().dials;
    tokio::time::advance(Duration::from_secs(3600)).await;
    settle().await;
    assert_eq!(handle.counters().dials, dials, "no retry after stop");
    assert!(ev.failed.recv().await.is_none(), "no callback after stop");
}

/// A dial stack whose dials never finish, counting how many of its futures
/// are dropped (a hanging dial: something no real socket produces on demand).
fn hanging_dialer(
    dropped: Arc<AtomicUsize>,
) -> impl tower::Service<SocketAddr, Response = TcpStream, Error = std::io::Error, Future = impl Send>
+ Clone
+ Send
+ 'static {
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    tower::service_fn(move |_addr: SocketAddr| {
        let guard = Guard(dropped.clone());
        async move {
            let _guard = guard;
            std::future::pending::<Result<TcpStream, std::io::Error>>().await
        }
    })
}

/// TestRemovePendingConnection: removing a request whose dial hangs cancels
/// it (Canceled) and drops the dial future.
#[tokio::test(start_paused = true)]
async fn remove_pending_connection() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (b, mut ev) =
        record(ConnManager::with_dialer(hanging_dialer(dropped.clone())).connect_timeout(None));
    let handle = b.start().expect("start");
    let id = handle
        .connect_permanent("127.0.0.1:18555".parse().expect("addr"))
        .await
        .expect("connect");
    settle().await;
    assert_eq!(handle.state(id).await, Ok(ConnState::Pending));
    assert_eq!(dropped.load(Ordering::SeqCst), 0);

    handle.remove(id).await.expect("remove");
    assert_eq!(handle.state(id).await, Ok(ConnState::Canceled));
    until("the dial future is dropped", || {
        dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(handle.remove(id).await, Err(Error::UnknownId(id)));
    assert!(
        handle
            .snapshot()
            .await
            .expect("snapshot")
            .entries
            .is_empty()
    );
    handle.stop().await;
    assert!(ev.connected.recv().await.is_none());
}

/// TestCancelIgnoreDelayedConnection: a connection that completes after its
/// request was removed is closed and never reported.
#[tokio::test]
async fn cancel_ignore_delayed_connection() {
    let peer = HoldingPeer::start().await;
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    // The TCP connect succeeds at once; handing the stream over waits for
    // the gate, so the connection exists while the request is removed.
    let dialer = tower::service_fn(move |addr: SocketAddr| {
        let mut gate = gate_rx.clone();
        async move {
            let stream = TcpStream::connect(addr).await?;
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, std::io::Error>(stream)
        }
    });
    let (b, mut ev) = record(ConnManager::with_dialer(dialer));
    let handle = b.start().expect("start");
    let id = handle.connect(peer.addr).await.expect("connect");
    until("the TCP connection is up", || peer.accepted() == 1).await;
    assert_eq!(handle.state(id).await, Ok(ConnState::Pending));

    handle.remove(id).await.expect("remove");
    assert_eq!(handle.state(id).await, Ok(ConnState::Canceled));
    let _ = gate_tx.send(true);
    until("the late connection is closed", || peer.closed() == 1).await;
    settle().await;
    assert!(ev.connected.try_recv().is_err(), "never reported");
    handle.stop().await;
}

/// TestListeners: two listeners, two clients each: four on_accept calls;
/// stop closes both listeners.
#[tokio::test]
async fn listeners() {
    let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let l2 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (a1, a2) = (l1.local_addr().expect("a1"), l2.local_addr().expect("a2"));
    let (b, mut ev) = record(ConnManager::builder().listener(l1).listener(l2));
    let handle = b.start().expect("start");
    let mut clients = Vec::new();
    for addr in [a1, a1, a2, a2] {
        clients.push(TcpStream::connect(addr).await.expect("client"));
    }
    let mut accepted = Vec::new();
    for _ in 0..4 {
        accepted.push(ev.accepted.recv().await.expect("accepted"));
    }
    let mut ports: Vec<u16> = accepted.iter().map(|c| c.addr().port()).collect();
    let mut client_ports: Vec<u16> = clients
        .iter()
        .map(|c| c.local_addr().expect("local").port())
        .collect();
    ports.sort_unstable();
    client_ports.sort_unstable();
    assert_eq!(
        ports, client_ports,
        "each connection carries its remote address"
    );

    handle.stop().await;
    for addr in [a1, a2] {
        let err = TcpStream::connect(addr).await.expect_err("listener closed");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}

/// TestListenerInboundLimit: with max_inbound 1, the second client is
/// rejected without reaching on_accept; once the first closes, the slot is
/// reused.
#[tokio::test]
async fn listener_inbound_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (b, mut ev) = record(
        ConnManager::builder()
            .listener(listener)
            .max_inbound(Some(1))
            // btcd's limit: a full node refuses (no eviction).
            .policy(Policy::new().evict_when_full(false)),
    );
    let handle = b.start().expect("start");
    let _c1 = TcpStream::connect(addr).await.expect("c1");
    let first = ev.accepted.recv().await.expect("first");
    let mut c2 = TcpStream::connect(addr).await.expect("c2");
    let mut buf = [0u8; 1];
    assert_eq!(c2.read(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(handle.counters().inbound_rejected, 1);
    assert!(ev.accepted.try_recv().is_err());
    drop(first);
    let _c3 = TcpStream::connect(addr).await.expect("c3");
    let third = ev.accepted.recv().await.expect("slot reused");
    assert_eq!(third.kind(), ConnKind::Inbound);
    handle.stop().await;
}

/// Builder::new works for a custom dial stack; the seeded rng makes retry
/// times reproducible run to run.
#[tokio::test(start_paused = true)]
async fn seeded_jitter_is_reproducible() {
    let down = support::refused_addr().await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let b: Builder<SocketAddr, _> =
            Builder::new(connmgr::DialStack::new().build()).rng(JitterRng::seeded(11));
        let (b, mut ev) = record(b);
        let handle = b.start().expect("start");
        let start = tokio::time::Instant::now();
        handle.connect_permanent(down).await.expect("connect");
        let mut at = Vec::new();
        for _ in 0..4 {
            let f = ev.failed.recv().await.expect("failure");
            at.push(f.retry_at.expect("retry") - start);
        }
        handle.stop().await;
        runs.push(at);
    }
    assert_eq!(runs[0], runs[1]);
}
