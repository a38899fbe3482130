//! Where this manager deliberately differs from btcd's connmgr (the bugs of
//! reference section 5.2), and the rest of the behaviour contract, over real
//! loopback sockets.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use connmgr::{
    DialStack,
    manager::{ConnKind, ConnManager, ConnState, DisconnectReason, Error},
    socks::Socks5Layer,
};
use support::{
    HoldingPeer,
    manager::{cycle, fixed, record},
    settle, until, until_async,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// btcd §5.2-8: a failed one-shot connect adds an automatic slot there. Here
/// it ends, is reported, and the automatic count stays at the target.
#[tokio::test(start_paused = true)]
async fn failed_oneshot_never_adds_automatic_slot() {
    let peer = HoldingPeer::start().await;
    let down = support::refused_addr().await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .target_outbound(1)
            .address_source(fixed(peer.addr)),
    );
    let handle = b.start().expect("start");
    let auto = ev.connected.recv().await.expect("automatic connection");
    let id = handle.connect(down).await.expect("one-shot");
    let failure = ev.failed.recv().await.expect("failure reported");
    assert_eq!(failure.info.id, id);
    assert_eq!(failure.info.kind, ConnKind::OneShot);
    assert_eq!(failure.retry_at, None);
    let tcp = failure
        .error
        .downcast_ref::<connmgr::connect::ConnectError>()
        .expect("tcp error");
    assert_eq!(tcp.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(handle.state(id).await, Ok(ConnState::Canceled));

    tokio::time::advance(Duration::from_secs(3600)).await;
    settle().await;
    assert!(
        ev.connected.try_recv().is_err(),
        "no extra automatic connection"
    );
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.entries.len(), 1, "no leaked entry: {:?}", snap.entries);
    assert_eq!(snap.established(ConnKind::Automatic), 1);
    assert_eq!(peer.accepted(), 1);
    drop(auto);
    handle.stop().await;
}

/// btcd §5.2-7: a dropped automatic connection is not replaced when
/// explicit connections fill `len(conns)`. Here it always is, with a new id.
#[tokio::test(start_paused = true)]
async fn dropped_automatic_connection_is_always_replaced() {
    let auto_peer = HoldingPeer::start_many(3).await;
    let other = HoldingPeer::start_many(3).await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .target_outbound(2)
            .address_source(cycle(auto_peer.addrs.clone())),
    );
    let handle = b.start().expect("start");
    // Explicit connections beyond the target.
    for addr in &other.addrs {
        handle.connect(*addr).await.expect("explicit");
    }
    let mut conns = Vec::new();
    for _ in 0..5 {
        conns.push(ev.connected.recv().await.expect("connection"));
    }
    let victim = conns
        .iter()
        .position(|c| c.kind() == ConnKind::Automatic)
        .expect("an automatic connection");
    let old = conns.remove(victim);
    let old_id = old.id();
    drop(old);

    let gone = ev.disconnected.recv().await.expect("disconnection");
    assert_eq!(gone.info.id, old_id);
    let replacement = ev.connected.recv().await.expect("replacement");
    assert_eq!(replacement.kind(), ConnKind::Automatic);
    assert!(replacement.id() > old_id, "a new request with a new id");
    assert_eq!(handle.state(old_id).await, Ok(ConnState::Disconnected));
    until("the old socket is closed", || auto_peer.closed() == 1).await;

    // Dropping a one-shot connection is not replaced.
    let explicit = conns
        .iter()
        .position(|c| c.kind() == ConnKind::OneShot)
        .expect("an explicit connection");
    drop(conns.remove(explicit));
    ev.disconnected.recv().await.expect("disconnection");
    tokio::time::advance(Duration::from_secs(600)).await;
    settle().await;
    assert!(ev.connected.try_recv().is_err());
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.established(ConnKind::Automatic), 2);
    assert_eq!(snap.established(ConnKind::OneShot), 2);
    handle.stop().await;
}

/// btcd §5.2-3: a peer that accepts TCP and drops at once is retried every
/// RetryDuration forever. Here the delays keep growing until the cap.
#[tokio::test(start_paused = true)]
async fn accept_then_drop_peer_backs_off() {
    let peer = support::closing_peer().await;
    let base = Duration::from_secs(1);
    let (b, mut ev) = record(
        ConnManager::builder()
            .retry_base(base)
            .retry_cap(Duration::from_secs(16))
            .jitter(0.0),
    );
    let handle = b.start().expect("start");
    let id = handle.connect_permanent(peer).await.expect("connect");
    let mut delays = Vec::new();
    for _ in 0..6 {
        let mut conn = ev.connected.recv().await.expect("connected");
        assert_eq!(conn.id(), id);
        // The application reads until the peer hangs up, then drops it.
        let mut buf = [0u8; 8];
        assert_eq!(conn.read(&mut buf).await.unwrap_or(0), 0);
        drop(conn);
        let gone = ev.disconnected.recv().await.expect("disconnected");
        let at = gone.reconnect_at.expect("permanent peers reconnect");
        delays.push((at - tokio::time::Instant::now()).as_secs());
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 16]);
    handle.stop().await;
}

/// A connection that stays up for the stable period resets the backoff.
#[tokio::test(start_paused = true)]
async fn stable_connection_resets_backoff() {
    let peer = HoldingPeer::start().await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .retry_base(Duration::from_secs(1))
            .stable_period(Duration::from_secs(60))
            .jitter(0.0),
    );
    let handle = b.start().expect("start");
    let id = handle.connect_permanent(peer.addr).await.expect("connect");
    assert_eq!(delay_after(&mut ev, 0).await, 1);
    assert_eq!(
        delay_after(&mut ev, 10).await,
        2,
        "10 s is not stable: keep backing off"
    );
    assert_eq!(delay_after(&mut ev, 59).await, 4);
    assert_eq!(
        delay_after(&mut ev, 60).await,
        1,
        "a stable connection resets the schedule"
    );
    assert_eq!(handle.state(id).await, Ok(ConnState::Pending));
    handle.stop().await;
}

/// Holds the next connection `secs_up` seconds, drops it, and returns the
/// reconnect delay in seconds.
async fn delay_after(ev: &mut support::manager::Events<TcpStream>, secs_up: u64) -> u64 {
    let conn = ev.connected.recv().await.expect("connected");
    tokio::time::advance(Duration::from_secs(secs_up)).await;
    drop(conn);
    let gone = ev.disconnected.recv().await.expect("disconnected");
    (gone.reconnect_at.expect("reconnect") - tokio::time::Instant::now()).as_secs()
}

/// disconnect and remove close the connection from the manager's side: a
/// pending read ends with ConnectionAborted, and the peer sees the close once
/// the owner drops it.
#[tokio::test]
async fn manager_side_close_ends_pending_io() {
    let peer = HoldingPeer::start().await;
    let (b, mut ev) = record(ConnManager::builder());
    let handle = b.start().expect("start");
    let id = handle.connect(peer.addr).await.expect("connect");
    let mut conn = ev.connected.recv().await.expect("connected");
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.expect_err("the read is aborted");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
        let err = conn.write_all(b"late").await.expect_err("writes fail too");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
        assert!(conn.is_closed());
    });
    settle().await;
    handle.remove(id).await.expect("remove");
    reader.await.expect("reader saw the close");
    until("the peer sees the close", || peer.closed() == 1).await;
    let gone = ev.disconnected.recv().await.expect("disconnection");
    assert_eq!((gone.info.id, gone.reconnect_at), (id, None));
    assert_eq!(handle.state(id).await, Ok(ConnState::Disconnected));
    handle.stop().await;
}

/// Typed errors for unknown ids and for disconnecting what is not
/// connected; nothing hangs.
#[tokio::test(start_paused = true)]
async fn typed_errors_for_bad_ids() {
    let down = support::refused_addr().await;
    let handle = ConnManager::builder()
        .retry_base(Duration::from_secs(30))
        .start()
        .expect("start");
    let id = handle.connect_permanent(down).await.expect("connect");
    until_async("the first dial failed", || async {
        handle.state(id).await == Ok(ConnState::Failing)
    })
    .await;
    assert_eq!(
        handle.disconnect(id).await,
        Err(Error::NotEstablished(id, ConnState::Failing))
    );
    // Remove works while waiting on the retry timer, and only once.
    handle.remove(id).await.expect("remove during backoff");
    assert_eq!(handle.remove(id).await, Err(Error::UnknownId(id)));
    assert_eq!(handle.disconnect(id).await, Err(Error::UnknownId(id)));
    tokio::time::advance(Duration::from_secs(3600)).await;
    settle().await;
    assert_eq!(
        handle.counters().dials,
        1,
        "the cancelled timer never fires"
    );
    handle.stop().await;
}

/// For one request, on_connection comes before on_disconnection, and every
/// callback has run by the time stop returns.
#[tokio::test(start_paused = true)]
async fn callbacks_are_ordered_per_request() {
    let peers = support::closing_peers(8).await;
    let log: Arc<Mutex<Vec<(u64, &'static str)>>> = Arc::default();
    let (l1, l2) = (log.clone(), log.clone());
    let handle = ConnManager::builder()
        .target_outbound(4)
        .address_source(cycle(peers))
        .on_connection(move |conn| {
            l1.lock().expect("log").push((conn.id().get(), "connected"));
            drop(conn);
        })
        .on_disconnection(move |d| {
            l2.lock()
                .expect("log")
                .push((d.info.id.get(), "disconnected"))
        })
        .start()
        .expect("start");
    until("40 connections came and went", || {
        log.lock()
            .expect("log")
            .iter()
            .filter(|(_, e)| *e == "disconnected")
            .count()
            >= 40
    })
    .await;
    handle.stop().await;
    let log = log.lock().expect("log").clone();
    let mut seen = std::collections::HashMap::new();
    for (id, event) in &log {
        let previous = seen.insert(*id, *event);
        match *event {
            "connected" => assert_eq!(previous, None, "id {id} connected twice"),
            _ => assert_eq!(previous, Some("connected"), "id {id}: disconnection first"),
        }
    }
    let after = log.len();
    settle().await;
    assert_eq!(after, log.len(), "nothing after stop");
}

/// Stop with dials in flight (hanging SOCKS handshakes against a silent
/// peer) and a listener: every dial socket is closed, the listener is
/// closed, and no task of the manager is left.
#[tokio::test]
async fn stop_with_dials_in_flight_leaves_nothing_behind() {
    let silent = HoldingPeer::start().await; // accepts, never answers
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let listen_addr = listener.local_addr().expect("addr");
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();

    let dialer = DialStack::new().socks5(silent.addr).timeout(None).build();
    let handle = ConnManager::with_dialer(dialer)
        .connect_timeout(None)
        .target_outbound(3)
        .address_source(cycle(
            [8333, 8336, 8337]
                .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                .to_vec(),
        ))
        .listener(listener)
        .on_accept(drop)
        .start()
        .expect("start");
    handle
        .connect_permanent("127.0.0.1:8334".parse().expect("addr"))
        .await
        .expect("p1");
    handle
        .connect("127.0.0.1:8335".parse().expect("addr"))
        .await
        .expect("p2");
    until("5 dials reach the silent peer", || silent.accepted() == 5).await;
    assert_eq!(
        handle
            .snapshot()
            .await
            .expect("snapshot")
            .count(ConnState::Pending),
        5
    );

    handle.stop().await;
    until("every dial socket is closed", || silent.closed() == 5).await;
    let err = TcpStream::connect(listen_addr)
        .await
        .expect_err("listener closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    until("the peer's per-connection tasks end", || {
        metrics.num_alive_tasks() == baseline
    })
    .await;
}

/// stop_and_close closes established connections; plain stop leaves them
/// with their owners.
#[tokio::test]
async fn stop_and_close_closes_connections() {
    let peer = HoldingPeer::start().await;
    for close in [false, true] {
        let (b, mut ev) = record(ConnManager::builder());
        let handle = b.start().expect("start");
        handle.connect_permanent(peer.addr).await.expect("connect");
        let conn = ev.connected.recv().await.expect("connected");
        if close {
            handle.stop_and_close().await;
        } else {
            handle.stop().await;
        }
        assert_eq!(conn.is_closed(), close);
    }
}

/// Through a real SOCKS5 proxy (microsocks), the manager keeps its target
/// filled and replaces dropped connections.
#[tokio::test]
async fn socks5_manager_keeps_target_filled() {
    support::trace_init();
    let proxy = support::socks5::RealSocks5::start(None).await;
    let mut targets = Vec::new();
    for _ in 0..5 {
        targets.push(support::echo_target().await);
    }
    let dialer = DialStack::new()
        .socks5_layer(Socks5Layer::new(proxy.addr))
        .build();
    let (b, mut ev) = record(
        ConnManager::with_dialer(dialer)
            .target_outbound(4)
            .address_source(cycle(targets)),
    );
    let handle = b.start().expect("start");
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut c = ev
            .connected
            .recv()
            .await
            .expect("connected through the proxy");
        support::assert_echo(&mut c, b"ping").await;
        conns.push(c);
    }
    drop(conns.pop());
    let mut replacement = ev.connected.recv().await.expect("replacement");
    support::assert_echo(&mut replacement, b"pong").await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.established(ConnKind::Automatic), 4);
    assert_eq!(snap.counters.failures, 0);
    handle.stop().await;
}

/// A dial that hangs ends by the manager's connect timeout, exactly at the
/// deadline, as a typed `Elapsed`; a permanent request is then retried, and
/// an automatic one replaced with its permit freed.
#[tokio::test(start_paused = true)]
async fn connect_timeout_ends_hanging_dials() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    let dialer = tower::service_fn(move |_addr: std::net::SocketAddr| {
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let guard = Guard(counter.clone());
        async move {
            let _guard = guard;
            std::future::pending::<Result<TcpStream, std::io::Error>>().await
        }
    });
    let limit = Duration::from_secs(30);
    let (b, mut ev) = record(
        ConnManager::with_dialer(dialer)
            .connect_timeout(Some(limit))
            .retry_base(Duration::from_secs(1))
            .jitter(0.0)
            .target_outbound(1)
            .address_source(fixed("127.0.0.1:8333".parse().expect("addr"))),
    );
    let start = tokio::time::Instant::now();
    let handle = b.start().expect("start");
    let id = handle
        .connect_permanent("127.0.0.1:8334".parse().expect("addr"))
        .await
        .expect("connect");

    let mut kinds = Vec::new();
    for _ in 0..2 {
        let failure = ev.failed.recv().await.expect("timeout reported");
        assert_eq!(start.elapsed(), limit, "fails exactly at the deadline");
        assert!(
            failure.error.is::<tower::timeout::error::Elapsed>(),
            "{}",
            failure.error
        );
        kinds.push((failure.info.kind, failure.retry_at.is_some()));
    }
    kinds.sort_by_key(|(k, _)| format!("{k}"));
    assert_eq!(
        kinds,
        [(ConnKind::Automatic, false), (ConnKind::Permanent, true)]
    );
    until("both timed-out dial futures are dropped", || {
        dropped.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(handle.state(id).await, Ok(ConnState::Failing));
    // The automatic slot was freed: a replacement dial is in flight.
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.entries.len(), 2, "{:?}", snap.entries);
    assert_eq!(snap.counters.failures, 2);
    handle.stop().await;
}

/// A host name that only the proxy resolves (the shape of a `.onion`
/// address), as the manager's own address type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct HostPort(String, u16);

/// No IP: a host name, grouped by its last two labels.
impl connmgr::policy::PeerAddr for HostPort {
    fn host(&self) -> connmgr::policy::Host {
        connmgr::policy::Host::name(&self.0)
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0, self.1)
    }
}

impl connmgr::socks::IntoTargetAddr<'static> for HostPort {
    fn into_target_addr(self) -> tokio_socks::Result<connmgr::socks::TargetAddr<'static>> {
        Ok(connmgr::socks::TargetAddr::Domain(self.0.into(), self.1))
    }
}

/// The manager is generic over its address type: with host names that only
/// the SOCKS5 proxy resolves, a permanent peer connects through the real
/// proxy and is reported with its host name.
#[tokio::test]
async fn manager_with_host_name_addresses_through_socks5() {
    use connmgr::{connect::TcpConnector, manager::Builder};
    let proxy = support::socks5::RealSocks5::start(None).await;
    let target = support::echo_target().await;
    let dialer = tower::ServiceBuilder::new()
        .layer(Socks5Layer::new(proxy.addr))
        .service(TcpConnector::new());
    let (tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let handle = Builder::<HostPort, _>::new(dialer)
        .on_connection(move |c| {
            let _ = tx.send(c);
        })
        .start()
        .expect("start");
    let addr = HostPort("localhost".into(), target.port());
    let id = handle
        .connect_permanent(addr.clone())
        .await
        .expect("connect");
    let mut conn = connected.recv().await.expect("connected by name");
    assert_eq!(conn.id(), id);
    assert_eq!(conn.addr(), &addr);
    support::assert_echo(&mut conn, b"by name").await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(
        snap.get(id).expect("entry").info.addr.to_string(),
        format!("localhost:{}", target.port())
    );
    handle.stop().await;
}

/// A dial stack that panics fails that one dial with an error; a callback
/// that panics is logged and skipped; the manager keeps working.
#[tokio::test]
async fn panics_in_user_code_do_not_stop_the_manager() {
    let peer = HoldingPeer::start_many(2).await;
    let good = peer.addrs.clone();
    let dialer = tower::service_fn(move |addr: std::net::SocketAddr| {
        let bad = !good.contains(&addr);
        async move {
            if bad {
                panic!("a buggy dial stack");
            }
            TcpStream::connect(addr).await
        }
    });
    let (tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let (ftx, mut failed) = tokio::sync::mpsc::unbounded_channel();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let handle = ConnManager::with_dialer(dialer)
        .on_connection(move |conn| {
            if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                panic!("a buggy callback");
            }
            let _ = tx.send(conn);
        })
        .on_dial_failure(move |f| {
            let _ = ftx.send(f);
        })
        .start()
        .expect("start");
    let bad = handle
        .connect("127.0.0.1:9".parse().expect("addr"))
        .await
        .expect("connect");
    let failure = failed
        .recv()
        .await
        .expect("the panicking dial is a failure");
    assert_eq!(failure.info.id, bad);
    assert!(
        failure.error.to_string().contains("panicked"),
        "{}",
        failure.error
    );

    // The first connection's callback panics; the second one is delivered.
    handle.connect(peer.addrs[0]).await.expect("first");
    handle.connect(peer.addrs[1]).await.expect("second");
    let conn = connected
        .recv()
        .await
        .expect("the manager and callbacks still run");
    assert!(peer.addrs.contains(conn.addr()));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    handle.stop().await;
}

/// When the last handle is dropped, the manager stops by itself.
#[tokio::test]
async fn dropping_every_handle_stops_the_manager() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = ConnManager::builder()
        .listener(listener)
        .on_accept(drop)
        .start()
        .expect("start");
    assert!(
        TcpStream::connect(addr).await.is_ok(),
        "listening while a handle lives"
    );
    drop(handle);
    until_async("the listener is closed", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
}

/// With an inactivity timeout, a connection through which nothing moves is
/// closed after the timeout (reported as `Inactive`, and a permanent peer
/// reconnects); one that talks stays. Without one, nothing is closed.
#[tokio::test(start_paused = true)]
async fn inactivity_timeout_closes_silent_connection() {
    let silent = HoldingPeer::start().await;
    let echo = support::echo_target().await;
    let (b, mut ev) =
        record(ConnManager::builder().inactivity_timeout(Some(Duration::from_secs(20 * 60))));
    let handle = b.start().expect("start");
    let quiet = handle
        .connect_permanent(silent.addr)
        .await
        .expect("connect");
    let first = ev.connected.recv().await.expect("connected");
    handle.connect(echo).await.expect("connect");
    let mut talker = ev.connected.recv().await.expect("connected");
    let started = tokio::time::Instant::now();
    // The talker says something every five minutes.
    let talk = tokio::spawn(async move {
        let mut buf = [0u8; 4];
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_secs(300)).await;
            talker.write_all(b"ping").await.expect("write");
            talker.read_exact(&mut buf).await.expect("echo");
        }
        talker
    });
    let gone = ev.disconnected.recv().await.expect("the silent one ends");
    assert_eq!(
        (gone.info.id, gone.reason),
        (quiet, DisconnectReason::Inactive)
    );
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(20 * 60) && after <= Duration::from_secs(25 * 60),
        "closed after {after:?}"
    );
    assert!(first.is_closed());
    assert!(gone.reconnect_at.is_some(), "a permanent peer reconnects");
    let talker = talk.await.expect("talked for 40 minutes");
    assert!(!talker.is_closed(), "the talking connection stays");
    assert_eq!(
        ConnManager::builder()
            .inactivity_timeout(Some(Duration::ZERO))
            .start()
            .err(),
        Some(connmgr::manager::ConfigError::ZeroInactivityTimeout)
    );
    handle.stop().await;
}
