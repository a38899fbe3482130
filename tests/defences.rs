//! The peer policy to Bitcoin Core's standard, tried the way an attacker
//! would try it: local and Tor peers, eviction with protections, bans of
//! IPv6 ranges and onion hosts, duplicates by host, permanent requests that
//! are never lost, coalesced failure events, long bans and long quiet.
//!
//! Every peer sits on a 127.a.b.c address. Where a test needs routable
//! peers it says so with `Policy::treat_as_routable`; where it needs other
//! networks (6to4, onion), its dial stack takes the address the manager
//! chose and connects to a loopback peer instead.

mod support;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use connmgr::{
    manager::{
        Builder, ConnKind, ConnManager, DisconnectReason, Error, ListenerOptions, Points, Report,
    },
    policy::{Ban, Host, NetGroup, Network, PeerAddr, Permissions, Policy, Subnet},
};
use support::{
    HoldingPeer, connect_from,
    manager::{cycle, fixed, keep, record, to_peer},
    settle, until, until_async,
};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};

fn ip(a: u8, b: u8, c: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, a, b, c)
}

fn subnet(s: &str) -> Subnet {
    s.parse().expect("subnet")
}

/// 127.0.0.0/8 treated as routable: 127.a.b.c is in group 127.a.
fn routable() -> Policy {
    Policy::new().treat_as_routable(subnet("127.0.0.0/8"))
}

/// Reads until the manager closes the socket (EOF or reset).
async fn closed_by_manager(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A listener on 127.0.0.1 for `b`, with every callback recorded.
async fn listening(
    b: Builder<SocketAddr, connmgr::Dialer>,
    options: ListenerOptions,
) -> (
    connmgr::manager::Handle,
    SocketAddr,
    support::manager::Events<TcpStream>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (b, ev) = record(b.listener_with(listener, options));
    (b.start().expect("start"), addr, ev)
}

// ===== local and Tor peers =====

/// A local peer that reaches the threshold is disconnected, and nothing
/// else happens: no ban, no discouragement, the other local peers stay and
/// new ones are welcome (Core never discourages a local address).
#[tokio::test]
async fn misbehaving_local_peer_disconnected_not_banned() {
    let (handle, addr, mut ev) = listening(ConnManager::builder(), ListenerOptions::new()).await;
    let mut c1 = TcpStream::connect(addr).await.expect("c1");
    let bad = ev.accepted.recv().await.expect("first");
    let _c2 = TcpStream::connect(addr).await.expect("c2");
    let good = ev
        .accepted
        .recv()
        .await
        .expect("second: no per-IP limit for local peers");

    let score = handle
        .misbehaving(bad.id(), Points::persistent(100), "invalid block")
        .await
        .expect("scored");
    assert_eq!(score, 100);
    let gone = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(
        (gone.info.id, gone.reason),
        (bad.id(), DisconnectReason::Banned)
    );
    assert!(bad.is_closed() && !good.is_closed());
    drop(bad);
    assert!(closed_by_manager(&mut c1).await);
    let snap = handle.snapshot().await.expect("snapshot");
    assert!(snap.bans.is_empty(), "{:?}", snap.bans);
    assert_eq!(snap.discouraged, 0);
    assert_eq!(snap.get(good.id()).map(|e| e.network), Some(Network::Local));

    let _c3 = TcpStream::connect(addr).await.expect("c3");
    let again = ev.accepted.recv().await.expect("127.0.0.1 still welcome");
    assert_eq!(handle.counters().rejected.total(), 0);
    drop((good, again));
    handle.stop().await;
}

/// The peers of a Tor listener all arrive from 127.0.0.1, but they are Tor
/// peers: no per-IP limit applies, the snapshot says onion, a misbehaving
/// one is only disconnected, and not even a ban of 127.0.0.1 touches them.
#[tokio::test]
async fn tor_listener_peers_are_not_loopback() {
    let tor = ListenerOptions::new().network(Network::Onion);
    let (handle, addr, mut ev) = listening(ConnManager::builder(), tor).await;
    let mut clients = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..5 {
        clients.push(TcpStream::connect(addr).await.expect("connect"));
        peers.push(ev.accepted.recv().await.expect("accepted"));
    }
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.entries.len(), 5);
    assert!(snap.entries.iter().all(|e| e.network == Network::Onion));

    handle
        .misbehaving(peers[0].id(), Points::persistent(100), "spam")
        .await
        .expect("scored");
    let gone = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(gone.info.id, peers[0].id());
    assert!(peers[1..].iter().all(|p| !p.is_closed()));
    let snap = handle.snapshot().await.expect("snapshot");
    assert!(snap.bans.is_empty());
    assert_eq!(snap.discouraged, 0);

    handle
        .ban(subnet("127.0.0.1"), Duration::from_secs(60), "the proxy")
        .await
        .expect("ban");
    assert!(
        peers[1..].iter().all(|p| !p.is_closed()),
        "an IP ban does not reach Tor peers"
    );
    clients.push(TcpStream::connect(addr).await.expect("connect"));
    ev.accepted.recv().await.expect("a new Tor peer gets in");
    handle.stop().await;
}

/// 8 connections from 127.0.0.1 fill `max_inbound`; a routable newcomer
/// still gets in, and the peer that goes is a local one (the local group is
/// counted and evicted like any other).
#[tokio::test]
async fn local_flood_cannot_lock_out_routable_peers() {
    let policy = Policy::new().treat_as_routable(subnet("127.2.0.0/16"));
    let b = ConnManager::builder().max_inbound(Some(8)).policy(policy);
    let (handle, addr, mut ev) = listening(b, ListenerOptions::new()).await;
    let mut flood = Vec::new();
    let mut local = Vec::new();
    for _ in 0..8 {
        flood.push(TcpStream::connect(addr).await.expect("flood"));
        local.push(ev.accepted.recv().await.expect("accepted"));
    }
    let _honest = connect_from(ip(2, 0, 1), addr).await;
    let admitted = ev.accepted.recv().await.expect("the routable peer gets in");
    assert_eq!(admitted.addr().ip(), IpAddr::V4(ip(2, 0, 1)));
    let gone = ev.disconnected.recv().await.expect("someone evicted");
    assert_eq!(gone.reason, DisconnectReason::Evicted);
    assert!(
        local.iter().any(|c| c.id() == gone.info.id),
        "a local peer makes room"
    );
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.entries.len(), 8);
    assert_eq!(
        snap.get(admitted.id()).map(|e| e.network),
        Some(Network::Ipv4)
    );
    handle.stop().await;
}

// ===== eviction =====

/// When `max_inbound` is full someone is always evicted: with one peer in
/// each of 40 groups (which the old rule kept for ever), and with only two
/// peers (all of whom Core would protect).
#[tokio::test]
async fn eviction_always_evicts_when_full() {
    let b = ConnManager::builder()
        .max_inbound(Some(40))
        .policy(routable());
    let (handle, addr, mut ev) = listening(b, ListenerOptions::new()).await;
    let mut clients = Vec::new();
    let mut order = Vec::new();
    for g in 0..40u8 {
        clients.push(connect_from(ip(10 + g, 0, 1), addr).await);
        order.push(ev.accepted.recv().await.expect("accepted"));
    }
    clients.push(connect_from(ip(60, 0, 1), addr).await);
    let newcomer = ev.accepted.recv().await.expect("the newcomer gets in");
    let gone = ev.disconnected.recv().await.expect("evicted");
    assert_eq!(gone.reason, DisconnectReason::Evicted);
    let rank = order
        .iter()
        .position(|c| c.id() == gone.info.id)
        .expect("one of the 40");
    assert!(rank >= 20, "the older half is protected by uptime: {rank}");
    assert_eq!(handle.counters().evicted, 1);
    drop(newcomer);
    handle.stop().await;

    let b = ConnManager::builder()
        .max_inbound(Some(2))
        .policy(routable());
    let (handle, addr, mut ev) = listening(b, ListenerOptions::new()).await;
    let _a = connect_from(ip(10, 0, 1), addr).await;
    let first = ev.accepted.recv().await.expect("first");
    let _b = connect_from(ip(11, 0, 1), addr).await;
    let second = ev.accepted.recv().await.expect("second");
    let _c = connect_from(ip(12, 0, 1), addr).await;
    ev.accepted.recv().await.expect("third gets in");
    let gone = ev.disconnected.recv().await.expect("evicted");
    assert_eq!(gone.info.id, second.id(), "the youngest");
    assert!(!first.is_closed());
    handle.stop().await;
}

/// Peers the application reports as useful (lowest ping, a new block, a
/// new transaction) are protected: five newcomers evict five others, never
/// them, although they are the youngest.
#[tokio::test]
async fn eviction_protects_reported_peers() {
    let b = ConnManager::builder()
        .max_inbound(Some(30))
        .policy(routable());
    let (handle, addr, mut ev) = listening(b, ListenerOptions::new()).await;
    let mut clients = Vec::new();
    let mut held = Vec::new();
    for g in 0..30u8 {
        clients.push(connect_from(ip(10 + g, 0, 1), addr).await);
        held.push(ev.accepted.recv().await.expect("accepted"));
    }
    let (pinged, blocks, txs) = (held[29].id(), held[28].id(), held[27].id());
    handle
        .report(pinged, Report::Ping(Duration::from_millis(3)))
        .await
        .expect("ping");
    handle.report(blocks, Report::Block).await.expect("block");
    handle.report(txs, Report::Transaction).await.expect("tx");
    for g in 0..5u8 {
        clients.push(connect_from(ip(100 + g, 0, 1), addr).await);
        held.push(ev.accepted.recv().await.expect("newcomer"));
        let gone = ev.disconnected.recv().await.expect("evicted");
        assert!(
            ![pinged, blocks, txs].contains(&gone.info.id),
            "a reported peer was evicted"
        );
    }
    assert_eq!(handle.counters().evicted, 5);
    handle.stop().await;
}

// ===== permissions =====

/// A `noban` peer keeps its connection at any score and under a ban of its
/// subnet; so does a permanent peer; their scores are still reported.
#[tokio::test]
async fn noban_permission_never_banned() {
    let peer = HoldingPeer::start_on(vec![ip(12, 0, 1)]).await;
    let policy = routable().whitelist(subnet("127.3.0.0/16"), Permissions::NOBAN);
    let (handle, addr, mut ev) = listening(
        ConnManager::builder().policy(policy),
        ListenerOptions::new(),
    )
    .await;
    let _client = connect_from(ip(3, 0, 1), addr).await;
    let trusted = ev.accepted.recv().await.expect("accepted");
    let score = handle
        .misbehaving(trusted.id(), Points::persistent(500), "whatever")
        .await
        .expect("scored");
    assert_eq!(score, 500);
    handle
        .ban(subnet("127.3.0.0/16"), Duration::from_secs(60), "test")
        .await
        .expect("ban");
    assert!(!trusted.is_closed());
    let snap = handle.snapshot().await.expect("snapshot");
    let entry = snap.get(trusted.id()).expect("still there");
    assert_eq!(
        (entry.ban_score, entry.permissions),
        (500, Permissions::NOBAN)
    );
    assert_eq!(snap.discouraged, 0);

    let permanent = handle.connect_permanent(peer.addr).await.expect("connect");
    let conn = ev.connected.recv().await.expect("connected");
    assert_eq!(
        handle
            .misbehaving(permanent, Points::persistent(100), "x")
            .await,
        Ok(100)
    );
    assert!(!conn.is_closed(), "a permanent peer is not disconnected");
    assert_eq!(handle.snapshot().await.expect("snapshot").discouraged, 0);

    // A listener's permission works the same way.
    drop(handle);
    let trusted_listener = ListenerOptions::new().permissions(Permissions::NOBAN);
    let b = ConnManager::builder().policy(routable());
    let (handle, addr, mut ev) = listening(b, trusted_listener).await;
    let _client = connect_from(ip(4, 0, 1), addr).await;
    let tool = ev.accepted.recv().await.expect("accepted");
    handle
        .misbehaving(tool.id(), Points::persistent(100), "x")
        .await
        .expect("scored");
    assert!(!tool.is_closed());
    handle.stop().await;
}

// ===== addresses =====

/// IPv6 bans match in IPv6 space: `2001::/32` covers Teredo, `2002::/16`
/// and a 6to4 /48 cover 6to4, `64:ff9b::/96` covers NAT64, `::/0` covers
/// all three, and none of them covers an IPv4 address. A ban of the
/// embedded IPv4 address covers every form. A /96 stays IPv6.
#[tokio::test]
async fn subnet_ipv6_ranges_cover_embedded_ipv4_forms() {
    let a = |s: &str| -> IpAddr { s.parse().expect("ip") };
    // 198.51.100.7 in every form.
    let teredo = a("2001:0:4136:e378:8000:63bf:39cc:9bf8");
    let six_to_four = a("2002:c633:6407::1");
    let nat64 = a("64:ff9b::c633:6407");
    let v4 = a("198.51.100.7");
    for (net, inside) in [
        ("2001::/32", teredo),
        ("2002::/16", six_to_four),
        ("2002:c633:6407::/48", six_to_four),
        ("64:ff9b::/96", nat64),
    ] {
        assert!(subnet(net).contains(inside), "{net} covers {inside}");
        assert!(!subnet(net).contains(v4), "{net} is IPv6 only");
    }
    for inside in [teredo, six_to_four, nat64] {
        assert!(subnet("::/0").contains(inside), "::/0 covers {inside}");
        assert!(
            subnet("198.51.100.7").contains(inside),
            "the IPv4 ban covers {inside}"
        );
        assert!(subnet("198.51.0.0/16").contains(inside));
    }
    assert!(!subnet("::/0").contains(v4));
    assert!(!subnet("198.51.100.8").contains(teredo));
    let teredo96 = Subnet::new(teredo, 96).expect("a /96");
    assert!(teredo96.to_string().contains(':'), "{teredo96}");
    assert!(
        !teredo96.contains(a("8.8.8.8")),
        "a /96 never widens to IPv4"
    );
    assert!(!teredo96.contains(v4));
    // IPv4-mapped is IPv4 written for a dual-stack socket.
    assert_eq!(subnet("::ffff:198.51.100.0/120"), subnet("198.51.100.0/24"));

    // In the manager: a ban of 2002::/16 refuses a 6to4 peer, a ban of an
    // IPv4 address refuses its Teredo form.
    let handle = ConnManager::builder().start().expect("start");
    handle
        .ban(subnet("2002::/16"), Duration::from_secs(60), "6to4")
        .await
        .expect("ban");
    handle
        .ban(subnet("198.51.100.7"), Duration::from_secs(60), "v4")
        .await
        .expect("ban");
    let refused = |ip: IpAddr| SocketAddr::new(ip, 8333);
    assert!(matches!(
        handle.connect(refused(a("2002:c633:0101::1"))).await,
        Err(Error::Banned(_))
    ));
    assert_eq!(
        handle.connect(refused(teredo)).await,
        Err(Error::Banned(subnet("198.51.100.7")))
    );
    assert_eq!(handle.counters().dials, 0);
    handle.stop().await;
}

/// 6to4 and Teredo addresses are routable whatever IPv4 address they
/// embed, and grouped by it: a source offering eight 6to4 addresses around
/// 10.0.0.0/16 gets one automatic connection, not eight.
#[tokio::test(start_paused = true)]
async fn embedded_private_ipv4_is_routable() {
    let h = Host::ip("2002:0a00:0001::1".parse().expect("ip"));
    assert_eq!(h.network(), Network::Ipv6);
    assert_eq!(h.netgroup(), NetGroup::Ipv4([10, 0]));
    let teredo = Host::ip("2001:0:1:2:3:4:f5ff:fffe".parse().expect("ip")); // 10.0.0.1
    assert_eq!(teredo.network(), Network::Ipv6);
    assert_eq!(teredo.netgroup(), NetGroup::Ipv4([10, 0]));
    assert!(connmgr::policy::is_routable(
        "2002:c0a8:0101::1".parse().expect("ip")
    ));

    // The stack dials a loopback peer whatever the address, so the
    // manager's choice is all that is tested.
    let peer = HoldingPeer::start().await;
    let target = peer.addr;
    let stack = tower::service_fn(move |_: SocketAddr| TcpStream::connect(target));
    let candidates: Vec<SocketAddr> = (1..=8u16)
        .map(|i| {
            SocketAddr::new(
                IpAddr::V6(format!("2002:0a00:{i:04x}::1").parse().expect("ip")),
                8333,
            )
        })
        .collect();
    let (_held, on_connection) = keep();
    let handle = ConnManager::with_dialer(stack)
        .target_outbound(8)
        .on_connection(on_connection)
        .address_source(cycle(candidates))
        .start()
        .expect("start");
    until("one connection", || peer.accepted() == 1).await;
    until_async("the others are skipped by group", || async {
        handle.counters().skipped.netgroup > 8
    })
    .await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.entries.len(), 1, "{:?}", snap.entries);
    assert_eq!(snap.entries[0].network, Network::Ipv6);
    assert_eq!(peer.accepted(), 1);
    handle.stop().await;
}

/// An onion service's address, as an application's own address type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Onion {
    key: [u8; 32],
    port: u16,
}

impl Onion {
    fn new(first: u8) -> Self {
        let mut key = [0x42; 32];
        key[0] = first;
        Self { key, port: 8333 }
    }
}

impl PeerAddr for Onion {
    fn host(&self) -> Host {
        Host::Onion(self.key)
    }
}

impl fmt::Display for Onion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", Host::Onion(self.key), self.port)
    }
}

/// A Tor-only node fills its target: onion groups do not count for
/// diversity (their keys are random), so four onion peers take four slots.
#[tokio::test(start_paused = true)]
async fn onion_only_node_fills_outbound_target() {
    let peer = HoldingPeer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let onions: Vec<Onion> = (0..8u8).map(|i| Onion::new(i * 0x10)).collect();
    let mut next = 0;
    let (_held, on_connection) = keep();
    let handle = Builder::new(to_peer::<Onion>(peer.addr, calls))
        .target_outbound(4)
        .on_connection(on_connection)
        .address_source(move || {
            next += 1;
            std::future::ready(Some(onions[next % 8].clone()))
        })
        .start()
        .expect("start");
    until("four onion connections", || peer.accepted() == 4).await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.established(ConnKind::Automatic), 4);
    assert!(snap.entries.iter().all(|e| e.network == Network::Onion));
    handle.stop().await;
}

/// A misbehaving onion peer is disconnected and its host discouraged: the
/// source keeps offering it, and it is never dialled again. A manual ban of
/// an onion host refuses an explicit request to it, and exports as text.
#[tokio::test(start_paused = true)]
async fn misbehaving_onion_peer_banned() {
    let peer = HoldingPeer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let bad = Onion::new(0xa0);
    let (tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let b = bad.clone();
    let handle = Builder::new(to_peer::<Onion>(peer.addr, calls.clone()))
        .target_outbound(1)
        .retry_base(Duration::from_secs(1))
        .address_source(move || std::future::ready(Some(b.clone())))
        .on_connection(move |c| {
            let _ = tx.send(c);
        })
        .start()
        .expect("start");
    let conn = connected.recv().await.expect("connected");
    handle
        .misbehaving(conn.id(), Points::persistent(100), "bad tx")
        .await
        .expect("scored");
    assert!(conn.is_closed());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "never dialled again");
    let c = handle.counters();
    assert!(c.skipped.discouraged > 0, "{c:?}");
    assert_eq!(handle.snapshot().await.expect("snapshot").discouraged, 1);

    let other = Onion::new(0xb0);
    let ban = Subnet::from(other.host());
    handle
        .ban(ban, Duration::from_secs(3600), "manual")
        .await
        .expect("ban");
    assert_eq!(handle.connect(other).await, Err(Error::Banned(ban)));
    let bans = handle.bans().await.expect("bans");
    let text = bans[0].subnet.to_string();
    assert!(text.ends_with(".onion"), "{text}");
    assert_eq!(text.parse::<Subnet>(), Ok(ban));
    handle.stop().await;
}

// ===== the policy before the stack =====

/// A candidate the policy refuses never reaches the stack's `call`: a
/// banned address offered for a minute costs no call, and a duplicate
/// none either.
#[tokio::test(start_paused = true)]
async fn refused_candidate_never_reaches_stack() {
    let peer = HoldingPeer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let target = peer.addr;
    let stack = tower::service_fn(move |addr: SocketAddr| {
        c.fetch_add(1, Ordering::SeqCst);
        TcpStream::connect(addr)
    });
    let banned = Ban {
        subnet: Subnet::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        until: SystemTime::now() + Duration::from_secs(3600),
        reason: "test".into(),
    };
    let handle = ConnManager::with_dialer(stack.clone())
        .target_outbound(2)
        .retry_base(Duration::from_secs(1))
        .bans([banned])
        .address_source(fixed(target))
        .start()
        .expect("start");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no call for a banned address"
    );
    assert!(handle.counters().skipped.banned > 0);
    handle.stop().await;

    // Duplicates: one connection, then every candidate is the same address.
    let (_held, on_connection) = keep();
    let handle = ConnManager::with_dialer(stack)
        .target_outbound(2)
        .retry_base(Duration::from_secs(1))
        .on_connection(on_connection)
        .address_source(fixed(target))
        .start()
        .expect("start");
    until("connected", || peer.accepted() == 1).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one call, for the one dial"
    );
    assert!(handle.counters().skipped.duplicate > 0);
    handle.stop().await;
}

// ===== duplicates =====

/// No outbound dial to an IP that is connected in either direction: not on
/// another port, not written as IPv4-mapped IPv6, not to a host connected
/// inbound, not twice automatically with two per group allowed.
#[tokio::test]
async fn duplicate_by_ip_including_mapped() {
    let peer = HoldingPeer::start_on(vec![ip(4, 0, 1), ip(4, 0, 1)]).await;
    let (a0, a1) = (peer.addrs[0], peer.addrs[1]);
    let b = ConnManager::builder().policy(routable());
    let (handle, addr, mut ev) = listening(b, ListenerOptions::new()).await;
    let id = handle.connect(a0).await.expect("first");
    assert_eq!(handle.connect(a1).await, Err(Error::Duplicate(id)));
    let mapped: SocketAddr = format!("[::ffff:127.4.0.1]:{}", a0.port())
        .parse()
        .expect("mapped");
    assert_eq!(handle.connect(mapped).await, Err(Error::Duplicate(id)));

    let _client = connect_from(ip(5, 0, 1), addr).await;
    let inbound = ev.accepted.recv().await.expect("inbound");
    let back = SocketAddr::from((ip(5, 0, 1), 8333));
    assert_eq!(
        handle.connect(back).await,
        Err(Error::Duplicate(inbound.id()))
    );
    handle.stop().await;

    // Automatic, two per group allowed: still one connection to the IP.
    let policy = routable().max_outbound_per_netgroup(2);
    let (_held, on_connection) = keep();
    let handle = ConnManager::builder()
        .policy(policy)
        .target_outbound(2)
        .on_connection(on_connection)
        .address_source(cycle(vec![a0, a1]))
        .start()
        .expect("start");
    until_async("duplicates skipped", || async {
        handle.counters().skipped.duplicate > 4
    })
    .await;
    settle().await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.entries.len(), 1, "{:?}", snap.entries);
    handle.stop().await;
}

// ===== permanent requests =====

/// `connect_permanent` for an address an automatic request holds makes it
/// permanent (same id): when the connection drops, it is reconnected. The
/// same for a one-shot request.
#[tokio::test(start_paused = true)]
async fn permanent_request_for_automatic_peer_is_kept() {
    let peer = HoldingPeer::start().await;
    let other = HoldingPeer::start().await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .target_outbound(1)
            .address_source(fixed(peer.addr)),
    );
    let handle = b.start().expect("start");
    let auto = ev.connected.recv().await.expect("automatic");
    assert_eq!(auto.kind(), ConnKind::Automatic);
    let id = handle.connect_permanent(peer.addr).await.expect("kept");
    assert_eq!(id, auto.id());
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.get(id).map(|e| e.info.kind), Some(ConnKind::Permanent));
    assert_eq!(snap.established(ConnKind::Automatic), 0);

    drop(auto);
    let gone = ev.disconnected.recv().await.expect("dropped");
    assert_eq!(gone.info.id, id);
    assert!(
        gone.reconnect_at.is_some(),
        "a permanent request reconnects"
    );
    let again = ev.connected.recv().await.expect("reconnected");
    assert_eq!((again.id(), again.kind()), (id, ConnKind::Permanent));

    let once = handle.connect(other.addr).await.expect("one-shot");
    let _conn = ev.connected.recv().await.expect("connected");
    assert_eq!(handle.connect_permanent(other.addr).await, Ok(once));
    assert_eq!(
        handle.connect_permanent(other.addr).await,
        Err(Error::Duplicate(once)),
        "already permanent"
    );
    handle.stop().await;
}

// ===== callbacks behind =====

/// A permanent peer that fails hundreds of times while `on_dial_failure`
/// is stuck leaves at most one failure of it waiting: the callback sees
/// the first, the one in the queue, and the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_events_coalesce_behind_stuck_callback() {
    let down = support::refused_addr().await;
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (g, s) = (gate.clone(), seen.clone());
    let handle = ConnManager::builder()
        .retry_base(Duration::from_millis(1))
        .retry_cap(Duration::from_millis(1))
        .jitter(0.0)
        .callback_queue(1)
        .on_dial_failure(move |f| {
            s.lock().expect("seen").push(f.attempt);
            tokio::task::block_in_place(|| {
                let (open, cv) = &*g;
                let mut open = open.lock().expect("gate");
                while !*open {
                    open = cv.wait(open).expect("gate");
                }
            });
        })
        .start()
        .expect("start");
    // Opens the gate when dropped, also if an assertion fails first (a
    // callback blocked for ever would hold the runtime's shutdown).
    struct Open(Arc<(Mutex<bool>, std::sync::Condvar)>);
    impl Drop for Open {
        fn drop(&mut self) {
            let (open, cv) = &*self.0;
            *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
    }
    let opener = Open(gate);
    let id = handle.connect_permanent(down).await.expect("connect");
    // The failures take real time (1 ms each): wait for them, boundedly.
    for _ in 0..10_000 {
        if handle.counters().failures >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(handle.counters().failures >= 300);
    handle.remove(id).await.expect("removed");
    let failures = handle.counters().failures;
    drop(opener);
    handle.stop().await;
    let seen = seen.lock().expect("seen").clone();
    assert!(
        seen.len() <= 3,
        "{} failure events for one request",
        seen.len()
    );
    let last = *seen.last().expect("some");
    assert!(
        u64::from(last) + 5 >= failures,
        "the latest attempt is reported: {last} of {failures}"
    );
}

// ===== long times =====

/// A ban "for ever" exports with an end far in the future, not now, and a
/// manager restored from the export still refuses the address.
#[tokio::test]
async fn long_ban_survives_export() {
    let handle = ConnManager::builder().start().expect("start");
    let target = SocketAddr::from((ip(9, 0, 1), 8333));
    handle
        .ban(Subnet::from(target.ip()), Duration::MAX, "for ever")
        .await
        .expect("ban");
    let exported = handle.bans().await.expect("bans");
    let fifty_years = Duration::from_secs(50 * 365 * 24 * 3600);
    assert!(exported[0].until > SystemTime::now() + fifty_years);
    handle.stop().await;

    let restored = ConnManager::builder()
        .bans(exported)
        .start()
        .expect("start");
    assert!(matches!(
        restored.connect(target).await,
        Err(Error::Banned(_))
    ));
    restored.stop().await;
}

/// A permanent peer stays connected for three years, drops, and is dialled
/// again: no timer deadline is too far after years of quiet.
#[tokio::test(start_paused = true)]
async fn retry_after_years_of_quiet() {
    let peer = HoldingPeer::start().await;
    let (b, mut ev) = record(ConnManager::builder());
    let handle = b.start().expect("start");
    let id = handle.connect_permanent(peer.addr).await.expect("connect");
    let conn = ev.connected.recv().await.expect("connected");
    tokio::time::sleep(Duration::from_secs(3 * 365 * 24 * 3600)).await;
    drop(conn);
    let gone = ev.disconnected.recv().await.expect("dropped");
    assert!(gone.reconnect_at.is_some());
    let again = ev.connected.recv().await.expect("redialled");
    assert_eq!(again.id(), id);
    assert!(handle.state(id).await.is_ok());
    handle.stop().await;
}
