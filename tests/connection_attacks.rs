//! Attacks on the manager's per-connection bookkeeping (the uptime instant,
//! duplicate keys, the inactivity timeout per direction), from a review
//! round after the memory work: each test failed before its fix, or pins a
//! behaviour. Loopback only, paused time.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    io::IoSlice,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use connmgr::{
    Target,
    manager::{Builder, ConnClass, ConnManager, ConnState, DisconnectReason, Error},
    policy::{Host, Policy},
};
use support::{
    HoldingPeer, connect_from,
    manager::{cycle, keep, record},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};

const MIN: Duration = Duration::from_secs(60);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A dial stack whose dials can be made to fail, or to take a while.
#[derive(Clone, Default)]
struct Knobs {
    fail: Arc<AtomicBool>,
    delay_secs: Arc<AtomicU64>,
}

fn knob_dialer(
    k: Knobs,
) -> impl tower::Service<
    SocketAddr,
    Response = TcpStream,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TcpStream>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |addr: SocketAddr| {
        let k = k.clone();
        async move {
            let d = k.delay_secs.load(Ordering::SeqCst);
            if d > 0 {
                tokio::time::sleep(secs(d)).await;
            }
            if k.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "knob: refused",
                ));
            }
            TcpStream::connect(addr).await
        }
    })
}

/// A dial stack whose dials never end: requests stay pending, nothing
/// leaves the machine (the addresses are only duplicate keys).
fn never_dialer<A: Send + 'static>() -> impl tower::Service<
    A,
    Response = TcpStream,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TcpStream>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: A| std::future::pending::<std::io::Result<TcpStream>>())
}

fn whole_secs(at: Instant) -> u64 {
    (at - Instant::now()).as_secs()
}

// ===================================================================
// Change 1: one instant `at`, the stable period, connected_since
// ===================================================================

/// The backoff restarts from the base only after a connection that stayed
/// up for the stable period; failed dials in between keep doubling it, and
/// a failure reports when its own dial started.
#[tokio::test(start_paused = true)]
async fn backoff_resets_only_after_stable_connection_with_failures_between() {
    let peer = HoldingPeer::start().await;
    let k = Knobs::default();
    let (b, mut ev) = record(
        ConnManager::with_dialer(knob_dialer(k.clone()))
            .retry_base(secs(1))
            .retry_cap(secs(10_000))
            .stable_period(secs(60))
            .jitter(0.0),
    );
    let handle = b.start().expect("start");
    let id = handle.connect_permanent(peer.addr).await.expect("connect");

    // a: up 0 s.
    let c = ev.connected.recv().await.expect("connected");
    drop(c);
    let gone = ev.disconnected.recv().await.expect("disconnected");
    let reconnect_a = gone.reconnect_at.expect("reconnect");
    assert_eq!(whole_secs(reconnect_a), 1);

    // b, c: two failed dials.
    k.fail.store(true, Ordering::SeqCst);
    let f = ev.failed.recv().await.expect("failed");
    assert!(
        f.started >= reconnect_a && f.started <= Instant::now(),
        "a failure's `started` is its own dial's start: {:?} vs retry due {:?}",
        f.started,
        reconnect_a
    );
    assert_eq!(whole_secs(f.retry_at.expect("retry")), 2);
    let snap = handle.snapshot().await.expect("snapshot");
    let e = snap.get(id).expect("entry");
    assert_eq!(e.state, ConnState::Failing);
    assert_eq!(e.connected_since, None, "a failing entry is not connected");
    let f = ev.failed.recv().await.expect("failed");
    assert_eq!(whole_secs(f.retry_at.expect("retry")), 4);

    // d: up 59 s: not stable.
    k.fail.store(false, Ordering::SeqCst);
    let c = ev.connected.recv().await.expect("connected");
    tokio::time::advance(secs(59)).await;
    drop(c);
    let gone = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(whole_secs(gone.reconnect_at.expect("reconnect")), 8);

    // e: up 60 s: stable, back to the base.
    let c = ev.connected.recv().await.expect("connected");
    tokio::time::advance(secs(60)).await;
    drop(c);
    let gone = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(whole_secs(gone.reconnect_at.expect("reconnect")), 1);

    // f: a failure after the reset doubles from the base again.
    k.fail.store(true, Ordering::SeqCst);
    let f = ev.failed.recv().await.expect("failed");
    assert_eq!(whole_secs(f.retry_at.expect("retry")), 2);
    handle.stop().await;
}

/// A dial that takes longer than the stable period, then a connection
/// dropped at once: the time spent dialing is not uptime. The backoff keeps
/// growing, and `connected_since` is the moment of the connection, never
/// the dial's start.
#[tokio::test(start_paused = true)]
async fn slow_dial_then_instant_drop_is_not_stable() {
    let peer = HoldingPeer::start().await;
    let k = Knobs::default();
    k.delay_secs.store(120, Ordering::SeqCst);
    let (b, mut ev) = record(
        ConnManager::with_dialer(knob_dialer(k.clone()))
            .connect_timeout(None)
            .retry_base(secs(1))
            .retry_cap(secs(10_000))
            .stable_period(secs(60))
            .jitter(0.0),
    );
    let handle = b.start().expect("start");
    let asked = Instant::now();
    let id = handle.connect_permanent(peer.addr).await.expect("connect");
    let e = handle.snapshot().await.expect("snapshot");
    let e = e.get(id).expect("entry");
    assert_eq!((e.state, e.connected_since), (ConnState::Pending, None));

    let mut delays = Vec::new();
    for round in 0..4 {
        let c = ev.connected.recv().await.expect("connected");
        let now = Instant::now();
        if round == 0 {
            assert!(now - asked >= secs(120), "the dial took 120 s");
        }
        let snap = handle.snapshot().await.expect("snapshot");
        let e = snap.get(id).expect("entry");
        assert_eq!(e.state, ConnState::Established);
        assert_eq!(
            e.connected_since,
            Some(now),
            "round {round}: connected since the connection, not the dial"
        );
        drop(c);
        let gone = ev.disconnected.recv().await.expect("disconnected");
        delays.push(whole_secs(gone.reconnect_at.expect("reconnect")));
        let snap = handle.snapshot().await.expect("snapshot");
        let e = snap.get(id).expect("entry");
        assert_eq!((e.state, e.connected_since), (ConnState::Pending, None));
    }
    assert_eq!(
        delays,
        [1, 2, 4, 8],
        "instant drops never reset the backoff"
    );
    handle.stop().await;
}

/// `drop_candidate` names the youngest connection by uptime: an automatic
/// connection dialed first but connected last (a slow dial) is the
/// youngest, although its id and its dial's start are the oldest.
#[tokio::test(start_paused = true)]
async fn drop_candidate_youngest_by_uptime_not_by_dial_start() {
    let peer = HoldingPeer::start_many(2).await;
    // `cycle` offers addrs[1] first: that one dials first, and slowly.
    let slow = peer.addrs[1];
    let dialer = tower::service_fn(move |addr: SocketAddr| async move {
        if addr == slow {
            tokio::time::sleep(secs(60)).await;
        }
        TcpStream::connect(addr).await
    });
    let (held, on_connection) = keep();
    let handle = ConnManager::with_dialer(dialer)
        .connect_timeout(None)
        .target_outbound(2)
        .address_source(cycle(peer.addrs.clone()))
        .on_connection(on_connection)
        .start()
        .expect("start");
    for _ in 0..200 {
        if support::manager::established_in(&handle, ConnClass::FullRelay).await == 2 {
            break;
        }
        tokio::time::sleep(secs(1)).await;
    }
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(
        snap.established_in(ConnClass::FullRelay),
        2,
        "{:?}",
        snap.entries
    );
    let slow_e = snap
        .entries
        .iter()
        .find(|e| e.info.addr == slow)
        .expect("slow");
    let fast_e = snap
        .entries
        .iter()
        .find(|e| e.info.addr != slow)
        .expect("fast");
    assert!(slow_e.id() < fast_e.id(), "the slow one was dialed first");
    assert!(
        slow_e.connected_since.expect("up") > fast_e.connected_since.expect("up"),
        "{slow_e:?} {fast_e:?}"
    );
    assert_eq!(
        handle.drop_candidate(ConnClass::FullRelay).await,
        Ok(Some(slow_e.id())),
        "the youngest by uptime goes"
    );
    drop(held);
    handle.stop().await;
}

/// Eviction protects the longest-connected inbound peers: with eight local
/// inbound peers that came ten seconds apart, a newcomer never evicts one
/// of the two oldest (half of those left after the netgroup protection,
/// by uptime).
#[tokio::test(start_paused = true)]
async fn eviction_keeps_the_oldest_inbound_peers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (b, mut ev) = record(
        ConnManager::builder()
            .max_inbound(Some(8))
            .listener(listener),
    );
    let handle = b.start().expect("start");
    let mut clients = Vec::new();
    let mut held = Vec::new();
    for _ in 0..8 {
        clients.push(connect_from(Ipv4Addr::LOCALHOST, addr).await);
        held.push(ev.accepted.recv().await.expect("accepted"));
        tokio::time::advance(secs(10)).await;
    }
    let oldest = [held[0].id(), held[1].id()];
    clients.push(connect_from(Ipv4Addr::LOCALHOST, addr).await);
    held.push(ev.accepted.recv().await.expect("newcomer admitted"));
    let gone = ev.disconnected.recv().await.expect("someone evicted");
    assert_eq!(gone.reason, DisconnectReason::Evicted);
    assert!(
        !oldest.contains(&gone.info.id),
        "evicted {} although it is among the oldest {oldest:?}",
        gone.info.id
    );
    assert_ne!(gone.info.id, held[8].id(), "not the newcomer");
    handle.stop().await;
}

// ===================================================================
// Change 1: duplicates by keyed digest
// ===================================================================

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Local peers are told apart by IP and port; the IPv4-mapped form of a
/// local address is that address; removing another request (another port,
/// another IP) never frees the key of the first.
#[tokio::test(start_paused = true)]
async fn local_duplicates_ports_mapped_and_removals() {
    let handle = ConnManager::with_dialer(never_dialer())
        .connect_timeout(None)
        .start()
        .expect("start");
    let a = handle.connect(sa("127.0.0.1:1000")).await.expect("a");
    let b = handle
        .connect(sa("127.0.0.1:1001"))
        .await
        .expect("another port");
    assert_eq!(
        handle.connect(sa("[::ffff:127.0.0.1]:1000")).await,
        Err(Error::Duplicate(a)),
        "the mapped form of a local address is that address"
    );
    assert_eq!(
        handle
            .connect_permanent(sa("[::ffff:127.0.0.1]:1000"))
            .await,
        Err(Error::Duplicate(a)),
        "a permanent request for another form is a duplicate, not an upgrade"
    );
    let c = handle
        .connect(sa("127.0.0.2:1000"))
        .await
        .expect("another IP");
    let d = handle
        .connect(sa("[::1]:1000"))
        .await
        .expect("IPv6 loopback");
    assert_eq!(
        handle.connect(sa("[::1]:1000")).await,
        Err(Error::Duplicate(d))
    );
    for other in [b, c, d] {
        handle.remove(other).await.expect("remove");
    }
    assert_eq!(
        handle.connect(sa("127.0.0.1:1000")).await,
        Err(Error::Duplicate(a)),
        "removing other requests freed a's key"
    );
    // Ending a request frees its own key, in every form.
    handle.remove(a).await.expect("remove a");
    let a2 = handle
        .connect(sa("[::ffff:127.0.0.1]:1000"))
        .await
        .expect("free again");
    assert_eq!(
        handle.connect(sa("127.0.0.1:1000")).await,
        Err(Error::Duplicate(a2))
    );
    // b's key was freed by its removal.
    handle
        .connect(sa("127.0.0.1:1001"))
        .await
        .expect("b's key is free");
    handle.stop().await;
}

/// Loopback treated as routable: the host is the key, whatever the port or
/// the form (mapped, IPv4-compatible, 6to4, NAT64).
#[tokio::test(start_paused = true)]
async fn routable_host_duplicates_every_form_and_port() {
    let policy = Policy::new().treat_as_routable("127.0.0.0/8".parse().expect("subnet"));
    let handle = ConnManager::with_dialer(never_dialer())
        .connect_timeout(None)
        .policy(policy)
        .start()
        .expect("start");
    let a = handle
        .connect_permanent(sa("127.0.0.1:1000"))
        .await
        .expect("a");
    for form in [
        "127.0.0.1:1001",
        "[::ffff:127.0.0.1]:1002",
        "[::127.0.0.1]:1003",
        "[2002:7f00:1::]:1004",
        "[64:ff9b::7f00:1]:1005",
    ] {
        assert_eq!(
            handle.connect(sa(form)).await,
            Err(Error::Duplicate(a)),
            "{form} is the host of request a"
        );
    }
    let b = handle
        .connect(sa("127.0.0.2:1000"))
        .await
        .expect("another host");
    handle.remove(b).await.expect("remove b");
    assert_eq!(
        handle.connect(sa("127.0.0.1:1006")).await,
        Err(Error::Duplicate(a)),
        "b's removal left a's key"
    );
    handle.stop().await;
}

fn onion_name() -> String {
    Host::Onion([0x5d; 32]).to_string()
}

/// An onion service is one host whatever the port, the case, or a
/// subdomain.
#[tokio::test(start_paused = true)]
async fn onion_duplicates_any_port_case_or_subdomain() {
    let handle = Builder::<Target, _>::new(never_dialer::<Target>())
        .connect_timeout(None)
        .start()
        .expect("start");
    let onion = onion_name();
    let o = handle
        .connect(Target::name(&onion, 8333).expect("onion"))
        .await
        .expect("o");
    for t in [
        Target::name(&onion.to_ascii_uppercase(), 9000).expect("upper"),
        Target::name(&format!("www.{onion}"), 1).expect("subdomain"),
        Target::name(&format!("{onion}."), 8333).expect("trailing dot"),
    ] {
        assert_eq!(
            handle.connect(t.clone()).await,
            Err(Error::Duplicate(o)),
            "{t}"
        );
    }
    // A name that is not the onion service is another peer.
    handle
        .connect(Target::name("peer.test", 8333).expect("name"))
        .await
        .expect("a name is not the onion");
    handle.stop().await;
}

/// A host name is one peer whatever its case or a trailing dot (DNS names
/// are case-insensitive, and the policy's `Host::name` already says so):
/// two requests to `peer.test:8333` and `PEER.test:8333` are duplicates.
#[tokio::test(start_paused = true)]
async fn name_duplicates_ignore_case_and_trailing_dot() {
    let handle = Builder::<Target, _>::new(never_dialer::<Target>())
        .connect_timeout(None)
        .start()
        .expect("start");
    let n = handle
        .connect(Target::name("peer.test", 8333).expect("name"))
        .await
        .expect("n");
    let upper = handle
        .connect(Target::name("PEER.test", 8333).expect("name"))
        .await;
    let dotted = handle
        .connect(Target::name("peer.test.", 8333).expect("name"))
        .await;
    assert_eq!(
        (upper, dotted),
        (Err(Error::Duplicate(n)), Err(Error::Duplicate(n))),
        "the same name in another case, or with its root dot, is the same peer"
    );
    handle.stop().await;
}

// ===================================================================
// Change 2: inactivity per direction
// ===================================================================

const T: Duration = Duration::from_secs(20 * 60);

fn within(after: Duration) -> bool {
    after >= T && after <= T + T / 4
}

/// A peer on loopback: its accepted socket goes to `serve`.
async fn peer<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((s, _)) = l.accept().await {
            serve(s).await;
        }
    });
    addr
}

/// Reads everything from `r` until EOF or error.
fn drain(mut r: tokio::net::tcp::OwnedReadHalf) {
    tokio::spawn(async move {
        let mut b = [0u8; 4096];
        while let Ok(n) = r.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    });
}

/// The peer answers once, 7 minutes in, then never again; the node keeps
/// writing. The receive timeout closes the connection between one and one
/// and a quarter timeouts after the last byte read, never earlier.
#[tokio::test(start_paused = true)]
async fn read_timeout_bounds_after_last_byte() {
    let addr = peer(|s| async move {
        let (r, mut w) = s.into_split();
        drain(r);
        tokio::time::sleep(7 * MIN).await;
        let _ = w.write_all(b"x").await;
        std::future::pending::<()>().await;
    })
    .await;
    let (b, mut ev) = record(ConnManager::builder().inactivity_timeout(Some(T)));
    let handle = b.start().expect("start");
    handle.connect(addr).await.expect("connect");
    let conn = ev.connected.recv().await.expect("connected");
    let up = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(conn);
    let last_read = Arc::new(Mutex::new(None));
    let lr = last_read.clone();
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 16];
        loop {
            match rd.read(&mut b).await {
                Ok(0) => return None,
                Ok(_) => *lr.lock().unwrap() = Some(Instant::now()),
                Err(e) => return Some(e.kind()),
            }
        }
    });
    tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(2 * MIN).await;
            if wr.write_all(b"ping").await.is_err() {
                break;
            }
        }
    });
    let gone = ev.disconnected.recv().await.expect("disconnected");
    let closed = Instant::now();
    assert_eq!(gone.reason, DisconnectReason::Inactive);
    let read_at = last_read.lock().unwrap().expect("the byte was read");
    assert_eq!(read_at - up, 7 * MIN);
    assert!(
        within(closed - read_at),
        "closed {:?} after the last byte read",
        closed - read_at
    );
    assert_eq!(
        reader.await.unwrap(),
        Some(std::io::ErrorKind::ConnectionAborted),
        "the pending read ends with ConnectionAborted"
    );
    handle.stop().await;
}

/// The peer talks every two minutes; the node writes once, 7 minutes in.
/// The send timeout closes the connection between one and one and a
/// quarter timeouts after that write.
#[tokio::test(start_paused = true)]
async fn write_timeout_bounds_after_last_write() {
    let addr = peer(|s| async move {
        let (r, mut w) = s.into_split();
        drain(r);
        for _ in 0..40 {
            tokio::time::sleep(2 * MIN).await;
            if w.write_all(b"inv!").await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    })
    .await;
    let (b, mut ev) = record(ConnManager::builder().inactivity_timeout(Some(T)));
    let handle = b.start().expect("start");
    handle.connect(addr).await.expect("connect");
    let conn = ev.connected.recv().await.expect("connected");
    let up = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(conn);
    tokio::spawn(async move {
        let mut b = [0u8; 16];
        while let Ok(n) = rd.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    });
    let writer = tokio::spawn(async move {
        tokio::time::sleep(7 * MIN).await;
        wr.write_all(b"hello").await.expect("write");
        Instant::now()
    });
    let gone = ev.disconnected.recv().await.expect("disconnected");
    let closed = Instant::now();
    assert_eq!(gone.reason, DisconnectReason::Inactive);
    let wrote = writer.await.unwrap();
    assert_eq!(wrote - up, 7 * MIN);
    assert!(
        within(closed - wrote),
        "closed {:?} after the last write",
        closed - wrote
    );
    handle.stop().await;
}

/// Writes of zero bytes move nothing: a node that only ever writes empty
/// buffers (plain and vectored) is closed by the send timeout, while the
/// peer talks.
#[tokio::test(start_paused = true)]
async fn zero_byte_writes_do_not_keep_alive() {
    let addr = peer(|s| async move {
        let (r, mut w) = s.into_split();
        drain(r);
        for _ in 0..40 {
            tokio::time::sleep(2 * MIN).await;
            if w.write_all(b"inv!").await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    })
    .await;
    let (b, mut ev) = record(ConnManager::builder().inactivity_timeout(Some(T)));
    let handle = b.start().expect("start");
    handle.connect(addr).await.expect("connect");
    let conn = ev.connected.recv().await.expect("connected");
    let up = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(conn);
    tokio::spawn(async move {
        let mut b = [0u8; 16];
        while let Ok(n) = rd.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    });
    tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(MIN).await;
            let plain = wr.write(b"").await;
            let vectored = wr
                .write_vectored(&[IoSlice::new(b""), IoSlice::new(b"")])
                .await;
            if plain.is_err() || vectored.is_err() {
                break;
            }
            assert_eq!((plain.unwrap(), vectored.unwrap()), (0, 0));
        }
    });
    let gone = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(gone.reason, DisconnectReason::Inactive);
    assert!(within(up.elapsed()), "closed after {:?}", up.elapsed());
    handle.stop().await;
}

/// Vectored writes are writes: a node that talks to an echo peer with
/// `write_vectored` only, every two minutes, stays connected for three
/// timeouts.
#[tokio::test(start_paused = true)]
async fn vectored_writes_keep_alive() {
    let echo = support::echo_target().await;
    let (b, mut ev) = record(ConnManager::builder().inactivity_timeout(Some(T)));
    let handle = b.start().expect("start");
    let id = handle.connect(echo).await.expect("connect");
    let mut conn = ev.connected.recv().await.expect("connected");
    for _ in 0..30 {
        tokio::time::sleep(2 * MIN).await;
        let n = conn
            .write_vectored(&[IoSlice::new(b"pi"), IoSlice::new(b"ng")])
            .await
            .expect("vectored write");
        assert!(n > 0);
        let mut back = vec![0u8; n];
        conn.read_exact(&mut back).await.expect("echo");
    }
    assert!(
        !conn.is_closed(),
        "closed although both directions were busy"
    );
    assert!(ev.disconnected.try_recv().is_err());
    assert_eq!(handle.state(id).await, Ok(ConnState::Established));
    handle.stop().await;
}

/// A write blocked by a peer that never reads (and never writes): the
/// inactivity close wakes it with ConnectionAborted, between one and one
/// and a quarter timeouts after the last bytes moved.
#[tokio::test(start_paused = true)]
async fn inactivity_close_wakes_a_blocked_write() {
    let addr = peer(|s| async move {
        let _hold = s;
        std::future::pending::<()>().await;
    })
    .await;
    let (b, mut ev) = record(ConnManager::builder().inactivity_timeout(Some(T)));
    let handle = b.start().expect("start");
    handle.connect(addr).await.expect("connect");
    let mut conn = ev.connected.recv().await.expect("connected");
    let up = Instant::now();
    let moved = Arc::new(AtomicUsize::new(0));
    let m = moved.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..100_000 {
            match conn.write(&chunk).await {
                Ok(n) => {
                    m.fetch_add(n, Ordering::SeqCst);
                }
                Err(e) => return (e.kind(), Instant::now(), conn),
            }
        }
        panic!("the socket never filled");
    });
    let gone = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(gone.reason, DisconnectReason::Inactive);
    let (kind, at, mut conn) = writer.await.unwrap();
    assert_eq!(kind, std::io::ErrorKind::ConnectionAborted);
    assert!(moved.load(Ordering::SeqCst) > 0);
    assert!(
        within(at - up),
        "the blocked write ended after {:?}",
        at - up
    );
    let mut b = [0u8; 4];
    assert_eq!(
        conn.read(&mut b).await.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionAborted)
    );
    handle.stop().await;
}

/// After an inactivity close, reads fail with ConnectionAborted even with
/// bytes waiting in the socket, writes too; shutdown is allowed.
#[tokio::test(start_paused = true)]
async fn reads_after_inactivity_close_fail_with_data_waiting() {
    let addr = peer(|s| async move {
        let (r, mut w) = s.into_split();
        drain(r);
        for _ in 0..40 {
            tokio::time::sleep(2 * MIN).await;
            if w.write_all(b"inv!").await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    })
    .await;
    let (b, mut ev) = record(ConnManager::builder().inactivity_timeout(Some(T)));
    let handle = b.start().expect("start");
    handle.connect(addr).await.expect("connect");
    let mut conn = ev.connected.recv().await.expect("connected");
    let up = Instant::now();
    // The node neither reads nor writes.
    let gone = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(gone.reason, DisconnectReason::Inactive);
    assert!(within(up.elapsed()), "closed after {:?}", up.elapsed());
    assert!(conn.is_closed());
    assert!(
        conn.get_ref().peer_addr().is_ok(),
        "the socket is still open"
    );
    let mut b = [0u8; 64];
    for _ in 0..3 {
        assert_eq!(
            conn.read(&mut b).await.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionAborted)
        );
    }
    assert_eq!(
        conn.write(b"late").await.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionAborted)
    );
    assert_eq!(
        conn.flush().await.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionAborted)
    );
    conn.shutdown().await.expect("shutdown is allowed");
    handle.stop().await;
}

/// A permanent peer closed for inactivity is reconnected (after the base
/// delay: the connection was up past the stable period), and its new
/// connection gets a whole timeout again, not the old one's counters. A
/// late drop of the old connection does not touch the new one.
#[tokio::test(start_paused = true)]
async fn permanent_peer_after_inactivity_close_gets_a_fresh_timeout() {
    let silent = HoldingPeer::start().await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .inactivity_timeout(Some(T))
            .retry_base(secs(1))
            .stable_period(secs(60))
            .jitter(0.0),
    );
    let handle = b.start().expect("start");
    let id = handle
        .connect_permanent(silent.addr)
        .await
        .expect("connect");
    let c1 = ev.connected.recv().await.expect("connected");
    let t1 = Instant::now();
    let g1 = ev.disconnected.recv().await.expect("closed");
    assert_eq!(g1.reason, DisconnectReason::Inactive);
    assert!(
        within(t1.elapsed()),
        "first closed after {:?}",
        t1.elapsed()
    );
    assert!(c1.is_closed());
    assert_eq!(whole_secs(g1.reconnect_at.expect("reconnects")), 1);

    let c2 = ev.connected.recv().await.expect("reconnected");
    let t2 = Instant::now();
    assert_eq!(c2.id(), id);
    drop(c1);
    support::settle().await;
    assert!(
        !c2.is_closed(),
        "the old connection's drop closed the new one"
    );
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.get(id).expect("entry").connected_since, Some(t2));
    let g2 = ev.disconnected.recv().await.expect("closed again");
    assert_eq!(g2.reason, DisconnectReason::Inactive);
    assert!(
        within(t2.elapsed()),
        "second closed after {:?}",
        t2.elapsed()
    );
    assert_eq!(
        whole_secs(g2.reconnect_at.expect("reconnects")),
        1,
        "up 20 minutes: stable, the backoff restarts from the base"
    );
    drop(c2);
    handle.stop().await;
}

/// Inbound connections too: of two inbound peers, the silent one is closed
/// in time, the one that talks both ways stays.
#[tokio::test(start_paused = true)]
async fn inbound_silent_closed_talking_kept() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (b, mut ev) = record(
        ConnManager::builder()
            .inactivity_timeout(Some(T))
            .listener(listener),
    );
    let handle = b.start().expect("start");
    let mut talker = connect_from(Ipv4Addr::LOCALHOST, addr).await;
    let mut talk_in = ev.accepted.recv().await.expect("accepted");
    let _silent = connect_from(Ipv4Addr::LOCALHOST, addr).await;
    let silent_in = ev.accepted.recv().await.expect("accepted");
    let up = Instant::now();
    // The node echoes what the talker says.
    let echo = tokio::spawn(async move {
        let mut b = [0u8; 4];
        while talk_in.read_exact(&mut b).await.is_ok() {
            if talk_in.write_all(&b).await.is_err() {
                break;
            }
        }
        talk_in
    });
    let client = tokio::spawn(async move {
        let mut b = [0u8; 4];
        for _ in 0..30 {
            tokio::time::sleep(2 * MIN).await;
            talker.write_all(b"ping").await.expect("write");
            talker.read_exact(&mut b).await.expect("echo");
        }
        talker
    });
    let gone = ev.disconnected.recv().await.expect("the silent one");
    assert_eq!(
        (gone.info.id, gone.reason),
        (silent_in.id(), DisconnectReason::Inactive)
    );
    assert!(within(up.elapsed()), "closed after {:?}", up.elapsed());
    let talker = client.await.expect("talked for an hour");
    assert!(ev.disconnected.try_recv().is_err(), "the talker stays");
    drop(talker);
    let talk_in = echo.await.expect("echo");
    assert!(
        !talk_in.is_closed(),
        "the talker was never closed by the manager"
    );
    handle.stop().await;
}

/// `get_mut` bypasses the manager: I/O through it is not seen by the
/// inactivity timeout, so a connection used only that way is closed as
/// inactive (pins the behaviour; the docs only mention the close signal).
#[tokio::test(start_paused = true)]
async fn io_through_get_mut_is_not_activity() {
    let echo = support::echo_target().await;
    let (b, mut ev) = record(ConnManager::builder().inactivity_timeout(Some(T)));
    let handle = b.start().expect("start");
    handle.connect(echo).await.expect("connect");
    let mut conn = ev.connected.recv().await.expect("connected");
    let up = Instant::now();
    let mut b = [0u8; 4];
    for _ in 0..20 {
        tokio::time::sleep(2 * MIN).await;
        if conn.is_closed() {
            break;
        }
        conn.get_mut().write_all(b"ping").await.expect("write");
        conn.get_mut().read_exact(&mut b).await.expect("echo");
    }
    let gone = ev.disconnected.recv().await.expect("closed");
    assert_eq!(gone.reason, DisconnectReason::Inactive);
    assert!(
        within(up.elapsed()) || up.elapsed() > T,
        "{:?}",
        up.elapsed()
    );
    handle.stop().await;
}

/// A close racing busy I/O on another thread: once an operation has
/// failed with ConnectionAborted, every later one fails the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_racing_io_then_everything_fails() {
    let echo = support::echo_target().await;
    let (b, mut ev) = record(ConnManager::builder().inactivity_timeout(Some(T)));
    let handle = b.start().expect("start");
    let id = handle.connect(echo).await.expect("connect");
    let conn = ev.connected.recv().await.expect("connected");
    let (mut rd, mut wr) = tokio::io::split(conn);
    let rounds = Arc::new(AtomicUsize::new(0));
    let r2 = rounds.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..1_000_000 {
            if let Err(e) = wr.write_all(b"ping").await {
                return e.kind();
            }
            tokio::task::yield_now().await;
        }
        panic!("writes never failed");
    });
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 4];
        for _ in 0..1_000_000 {
            if let Err(e) = rd.read_exact(&mut b).await {
                let later: Vec<_> = {
                    let mut v = Vec::new();
                    for _ in 0..3 {
                        v.push(rd.read(&mut b).await.map_err(|e| e.kind()));
                    }
                    v
                };
                return (e.kind(), later);
            }
            r2.fetch_add(1, Ordering::SeqCst);
        }
        panic!("reads never failed");
    });
    support::until("some traffic", || rounds.load(Ordering::SeqCst) > 200).await;
    handle.disconnect(id).await.expect("disconnect");
    let (kind, later) = reader.await.unwrap();
    assert_eq!(kind, std::io::ErrorKind::ConnectionAborted);
    assert!(
        later
            .iter()
            .all(|r| *r == Err(std::io::ErrorKind::ConnectionAborted)),
        "{later:?}"
    );
    assert_eq!(writer.await.unwrap(), std::io::ErrorKind::ConnectionAborted);
    let gone = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(gone.reason, DisconnectReason::Disconnect);
    handle.stop().await;
}

/// With a timeout shorter than the stable period, a silent permanent peer
/// closed for inactivity was never up long enough: its backoff keeps
/// growing instead of reconnecting it at the base for ever.
#[tokio::test(start_paused = true)]
async fn inactivity_close_before_stable_period_keeps_backing_off() {
    let silent = HoldingPeer::start().await;
    let timeout = secs(40);
    let (b, mut ev) = record(
        ConnManager::builder()
            .inactivity_timeout(Some(timeout))
            .retry_base(secs(1))
            .retry_cap(secs(10_000))
            .stable_period(secs(60))
            .jitter(0.0),
    );
    let handle = b.start().expect("start");
    handle
        .connect_permanent(silent.addr)
        .await
        .expect("connect");
    let mut delays = Vec::new();
    for _ in 0..4 {
        let c = ev.connected.recv().await.expect("connected");
        let up = Instant::now();
        let gone = ev.disconnected.recv().await.expect("closed");
        assert_eq!(gone.reason, DisconnectReason::Inactive);
        let after = up.elapsed();
        assert!(
            after >= timeout && after <= timeout + timeout / 4,
            "closed after {after:?}"
        );
        delays.push(whole_secs(gone.reconnect_at.expect("reconnect")));
        drop(c);
    }
    assert_eq!(delays, [1, 2, 4, 8]);
    handle.stop().await;
}
