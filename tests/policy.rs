//! The peer policy over real loopback sockets: duplicates, netgroup
//! diversity, inbound limits, eviction, bans, inbound entries, and an
//! eclipse attempt. Peers sit on 127.a.b.c addresses, which Linux routes to
//! `lo`, and the policy is told to treat loopback as routable
//! (`Policy::treat_as_routable`).

mod support;

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use connmgr::{
    DialStack,
    manager::{ConnKind, ConnManager, ConnState, DisconnectReason, Error, Points},
    policy::{Policy, Subnet},
};
use support::{
    HoldingPeer, connect_from,
    manager::{cycle, fixed, record},
    settle, until, until_async,
};
use tokio::{io::AsyncReadExt, net::TcpListener};

fn ip(a: u8, b: u8, c: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, a, b, c)
}

/// The policy applied to loopback peers, as to public ones: 127.a.b.c is
/// treated as a routable address in group 127.a.
fn strict() -> Policy {
    Policy::new().treat_as_routable("127.0.0.0/8".parse().expect("subnet"))
}

/// Reads until the manager closes the socket (EOF or reset).
async fn closed_by_manager(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Never two outbound requests to one address: a duplicate automatic
/// candidate is skipped (not a failure, and the source is not asked in a
/// tight loop), and an explicit request to an address that is connected or
/// being retried names the request that has it.
#[tokio::test(start_paused = true)]
async fn duplicate_address_refused() {
    let peer = HoldingPeer::start().await;
    let refused = support::refused_addr().await;
    let (b, mut ev) = record(
        ConnManager::builder()
            .target_outbound(2)
            .retry_base(Duration::from_secs(5))
            .address_source(fixed(peer.addr)),
    );
    let handle = b.start().expect("start");
    let auto = ev.connected.recv().await.expect("one automatic connection");
    assert_eq!(
        handle.connect(peer.addr).await,
        Err(Error::Duplicate(auto.id()))
    );

    let permanent = handle.connect_permanent(refused).await.expect("permanent");
    ev.failed.recv().await.expect("it fails and will retry");
    assert_eq!(handle.state(permanent).await, Ok(ConnState::Failing));
    assert_eq!(
        handle.connect(refused).await,
        Err(Error::Duplicate(permanent))
    );

    tokio::time::sleep(Duration::from_secs(60)).await;
    let c = handle.counters();
    assert_eq!(peer.accepted(), 1, "never a second connection");
    assert!(c.skipped.duplicate > 0, "{c:?}");
    assert!(c.skipped.duplicate <= 32 * 14, "the source rests: {c:?}");
    assert_eq!(c.consecutive_failures, 0, "skips are not failures");
    handle.stop().await;
}

/// At most one automatic connection per netgroup, dials in flight counted:
/// with dials that hang (a SOCKS5 proxy that never answers), three
/// candidates from 127.1/16 and one from 127.2/16 make two dials, not four.
#[tokio::test(start_paused = true)]
async fn outbound_netgroup_diversity_counts_pending() {
    let silent = HoldingPeer::start().await; // a proxy that never answers
    let candidates: Vec<SocketAddr> = [ip(1, 0, 1), ip(1, 0, 2), ip(1, 0, 3), ip(2, 0, 1)]
        .map(|ip| SocketAddr::from((ip, 8333)))
        .to_vec();
    let handle = ConnManager::with_dialer(DialStack::new().socks5(silent.addr).build())
        .connect_timeout(None)
        .target_outbound(4)
        .policy(strict())
        .address_source(cycle(candidates))
        .start()
        .expect("start");
    until("two dials reach the proxy", || silent.accepted() == 2).await;
    until_async("other candidates are skipped", || async {
        handle.counters().skipped.netgroup > 0
    })
    .await;
    settle().await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.count(ConnState::Pending), 2, "{:?}", snap.entries);
    // Groups as the policy counts them here: 127.a/16.
    let groups: HashSet<u8> = snap
        .entries
        .iter()
        .map(|e| match e.info.addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[1],
            std::net::IpAddr::V6(_) => 0,
        })
        .collect();
    assert_eq!(groups.len(), 2, "one dial per group");
    assert_eq!(silent.accepted(), 2);
    assert_eq!(snap.counters.failures, 0);
    handle.stop().await;
}

/// A manager listening on 127.0.0.1, whose accepted connections are kept.
async fn listening(
    b: connmgr::manager::Builder<SocketAddr, connmgr::Dialer>,
) -> (
    connmgr::manager::Handle,
    SocketAddr,
    support::manager::Events<tokio::net::TcpStream>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (b, ev) = record(b.listener(listener));
    (b.start().expect("start"), addr, ev)
}

/// One inbound connection per IP (the default): a second one from the same
/// address is closed before `on_accept`; another address of the same
/// netgroup gets in.
#[tokio::test]
async fn inbound_per_ip_limit() {
    let (handle, addr, mut ev) = listening(ConnManager::builder().policy(strict())).await;
    let _first = connect_from(ip(3, 0, 1), addr).await;
    let held = ev.accepted.recv().await.expect("first admitted");
    assert_eq!(held.addr().ip(), std::net::IpAddr::V4(ip(3, 0, 1)));
    let mut second = connect_from(ip(3, 0, 1), addr).await;
    assert!(closed_by_manager(&mut second).await, "second closed");
    let _other = connect_from(ip(3, 0, 2), addr).await;
    ev.accepted
        .recv()
        .await
        .expect("another address of the group");
    let c = handle.counters();
    assert_eq!(
        (c.inbound_accepted, c.rejected.ip, c.inbound_rejected),
        (2, 1, 1)
    );
    handle.stop().await;
}

/// At most `max_inbound_per_netgroup` inbound connections per netgroup;
/// other netgroups still get in.
#[tokio::test]
async fn inbound_per_netgroup_limit() {
    let policy = strict().max_inbound_per_netgroup(Some(2));
    let (handle, addr, mut ev) = listening(ConnManager::builder().policy(policy)).await;
    let mut clients = Vec::new();
    for host in 1..=3 {
        clients.push(connect_from(ip(4, 0, host), addr).await);
    }
    let _a = ev.accepted.recv().await.expect("admitted");
    let _b = ev.accepted.recv().await.expect("admitted");
    assert!(
        closed_by_manager(&mut clients[2]).await,
        "third of 127.4/16 closed"
    );
    let _other = connect_from(ip(5, 0, 1), addr).await;
    let other = ev.accepted.recv().await.expect("127.5/16 gets in");
    assert_eq!(other.addr().ip(), std::net::IpAddr::V4(ip(5, 0, 1)));
    let c = handle.counters();
    assert_eq!((c.inbound_accepted, c.rejected.netgroup), (3, 1));
    handle.stop().await;
}

/// When `max_inbound` is reached, a newcomer from a netgroup with fewer
/// slots than the largest evicts the largest group's youngest connection;
/// a newcomer from the largest group is refused; without eviction, every
/// newcomer is refused.
#[tokio::test]
async fn inbound_eviction_protects_diversity() {
    for evict in [true, false] {
        let policy = strict()
            .max_inbound_per_netgroup(Some(4))
            .evict_when_full(evict);
        let b = ConnManager::builder().max_inbound(Some(4)).policy(policy);
        let (handle, addr, mut ev) = listening(b).await;
        let mut clients = Vec::new();
        let mut held = Vec::new();
        for from in [ip(6, 0, 1), ip(6, 0, 2), ip(6, 0, 3), ip(7, 0, 1)] {
            clients.push(connect_from(from, addr).await);
            held.push(ev.accepted.recv().await.expect("admitted"));
        }
        let youngest_of_largest = held[2].id();

        let mut newcomer = connect_from(ip(8, 0, 1), addr).await;
        if evict {
            let admitted = ev.accepted.recv().await.expect("newcomer admitted");
            assert_eq!(admitted.addr().ip(), std::net::IpAddr::V4(ip(8, 0, 1)));
            let gone = ev.disconnected.recv().await.expect("evicted");
            assert_eq!(
                (gone.info.id, gone.reason),
                (youngest_of_largest, DisconnectReason::Evicted)
            );
            assert!(held[2].is_closed());
            assert_eq!(handle.counters().evicted, 1);
            // Full again: someone always goes, the youngest of the largest
            // group (127.6/16, which still holds 2), even for a newcomer
            // of that group.
            let _again = connect_from(ip(6, 0, 9), addr).await;
            let admitted_again = ev.accepted.recv().await.expect("admitted");
            let gone = ev.disconnected.recv().await.expect("evicted");
            assert_eq!(
                (gone.info.id, gone.reason),
                (held[1].id(), DisconnectReason::Evicted)
            );
            held.push(admitted);
            held.push(admitted_again);
            assert_eq!(handle.counters().rejected.full, 0);
        } else {
            assert!(closed_by_manager(&mut newcomer).await, "refused when full");
            assert_eq!(handle.counters().evicted, 0);
            assert_eq!(handle.counters().rejected.full, 1);
        }
        handle.stop().await;
    }
}

/// A ban refuses dials (explicit: a typed error; automatic: skipped) and
/// inbound sockets (closed before `on_accept`); it can be exported,
/// restored in a new manager, and lifted.
#[tokio::test]
async fn ban_refuses_dial_and_accept() {
    let banned_peer = HoldingPeer::start_on(vec![ip(9, 0, 1)]).await;
    let net: Subnet = "127.9.0.0/16".parse().expect("subnet");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (b, mut ev) = record(
        ConnManager::builder()
            .listener(listener)
            .target_outbound(1)
            .address_source(fixed(banned_peer.addr)),
    );
    let handle = b.start().expect("start");
    let auto = ev.connected.recv().await.expect("connected before the ban");
    handle
        .ban(net, Duration::from_secs(3600), "test")
        .await
        .expect("ban");
    ev.disconnected.recv().await.expect("closed by the ban");
    drop(auto);

    assert_eq!(
        handle.connect(banned_peer.addr).await,
        Err(Error::Banned(net))
    );
    until_async("automatic candidates are skipped", || async {
        handle.counters().skipped.banned > 0
    })
    .await;
    let mut inbound = connect_from(ip(9, 0, 5), addr).await;
    assert!(closed_by_manager(&mut inbound).await);
    assert_eq!(handle.counters().rejected.banned, 1);
    assert!(ev.accepted.try_recv().is_err(), "never reached on_accept");
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.bans.len(), 1);
    assert_eq!(
        (snap.bans[0].subnet, snap.bans[0].reason.as_str()),
        (net, "test")
    );

    // Exported and restored.
    let exported = handle.bans().await.expect("bans");
    handle.stop().await;
    let restored = ConnManager::builder()
        .bans(exported)
        .start()
        .expect("start");
    assert_eq!(
        restored.connect(banned_peer.addr).await,
        Err(Error::Banned(net))
    );
    assert_eq!(restored.unban(net).await, Ok(true));
    assert!(restored.connect(banned_peer.addr).await.is_ok(), "lifted");
    restored.stop().await;
}

/// A ban closes the connections inside it, outbound and inbound, and a
/// permanent peer inside it is not reconnected. A ban score past the
/// threshold discourages a routable peer's address.
#[tokio::test]
async fn ban_closes_existing_connections() {
    let peer = HoldingPeer::start_on(vec![ip(10, 0, 1)]).await;
    let (handle, addr, mut ev) = listening(ConnManager::builder().policy(strict())).await;
    let permanent = handle.connect_permanent(peer.addr).await.expect("connect");
    let outbound = ev.connected.recv().await.expect("connected");
    let _client = connect_from(ip(10, 0, 2), addr).await;
    let inbound = ev.accepted.recv().await.expect("accepted");

    let net: Subnet = "127.10.0.0/16".parse().expect("subnet");
    handle
        .ban(net, Duration::from_secs(60), "spam")
        .await
        .expect("ban");
    let mut ended = HashSet::new();
    for _ in 0..2 {
        let gone = ev.disconnected.recv().await.expect("closed");
        assert_eq!(
            (gone.reason, gone.reconnect_at),
            (DisconnectReason::Banned, None)
        );
        ended.insert(gone.info.id);
    }
    assert_eq!(ended, HashSet::from([permanent, inbound.id()]));
    assert!(outbound.is_closed() && inbound.is_closed());
    assert!(handle.state(permanent).await.is_ok_and(|s| s.is_final()));

    // Misbehaviour: transient points decay, persistent ones stay; at 100
    // the host is discouraged for the policy's duration (not a manual
    // ban: discouragement is bounded apart) and refused when it returns.
    let _client = connect_from(ip(11, 0, 1), addr).await;
    let bad = ev.accepted.recv().await.expect("accepted");
    assert_eq!(handle.misbehaving(bad.id(), 50, "noise").await, Ok(50));
    let score = handle
        .misbehaving(bad.id(), Points::persistent(60), "invalid block")
        .await
        .expect("scored");
    assert!(score >= 100, "{score}");
    let gone = ev.disconnected.recv().await.expect("banned");
    assert_eq!(
        (gone.info.id, gone.reason),
        (bad.id(), DisconnectReason::Banned)
    );
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.discouraged, 1);
    assert_eq!(snap.bans.len(), 1, "only the manual ban");
    let mut back = connect_from(ip(11, 0, 1), addr).await;
    assert!(closed_by_manager(&mut back).await, "discouraged: refused");
    assert_eq!(handle.counters().rejected.discouraged, 1);
    let _other = connect_from(ip(11, 0, 2), addr).await;
    ev.accepted
        .recv()
        .await
        .expect("another host of the group is welcome");
    assert_eq!(handle.counters().bans, 2);
    handle.stop().await;
}

/// Inbound connections are entries: listed by `snapshot`, closed by
/// `disconnect` and `remove`, reported by `on_disconnection`.
#[tokio::test]
async fn inbound_entries_in_snapshot() {
    let (handle, addr, mut ev) = listening(ConnManager::builder()).await;
    let mut client_a = connect_from(ip(12, 0, 1), addr).await;
    let a = ev.accepted.recv().await.expect("a");
    let _client_b = connect_from(ip(12, 0, 2), addr).await;
    let b = ev.accepted.recv().await.expect("b");
    let snap = handle.snapshot().await.expect("snapshot");
    for conn in [&a, &b] {
        let entry = snap.get(conn.id()).expect("listed");
        assert_eq!(
            (entry.info.kind, entry.state),
            (ConnKind::Inbound, ConnState::Established)
        );
        assert_eq!(entry.info.addr, *conn.addr());
        assert!(entry.connected_since.is_some());
    }

    handle.disconnect(a.id()).await.expect("disconnect");
    let gone = ev.disconnected.recv().await.expect("reported");
    assert_eq!(
        (gone.info.id, gone.reason),
        (a.id(), DisconnectReason::Disconnect)
    );
    assert!(a.is_closed());
    drop(a);
    assert!(
        closed_by_manager(&mut client_a).await,
        "the peer sees the close"
    );
    handle.remove(b.id()).await.expect("remove");
    let gone = ev.disconnected.recv().await.expect("reported");
    assert_eq!(
        (gone.info.kind, gone.reason),
        (ConnKind::Inbound, DisconnectReason::Remove)
    );
    let snap = handle.snapshot().await.expect("snapshot");
    assert!(snap.entries.is_empty(), "{:?}", snap.entries);
    assert_eq!(handle.state(b.id()).await, Ok(ConnState::Disconnected));
    handle.stop().await;
}

/// An eclipse attempt. Outbound: a source that offers attacker addresses
/// from 2 netgroups 90 % of the time and honest addresses from 20 netgroups
/// 10 % of the time; with a target of 8, at most 2 connections are the
/// attacker's. Inbound: 1 000 connections from one netgroup hold at most
/// `max_inbound_per_netgroup` slots, and peers from other netgroups still
/// get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eclipse_attacker_cannot_take_outbound() {
    let attacker_ips: Vec<Ipv4Addr> = (0..2)
        .flat_map(|g| (1..=10).map(move |h| ip(20 + g, 0, h)))
        .collect();
    let honest_ips: Vec<Ipv4Addr> = (0..20).map(|g| ip(30 + g, 0, 1)).collect();
    let attacker = HoldingPeer::start_on(attacker_ips).await;
    let honest = HoldingPeer::start_on(honest_ips).await;
    let (bad, good) = (attacker.addrs.clone(), honest.addrs.clone());
    let mut rng = fastrand::Rng::with_seed(7);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let (ctx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let handle = ConnManager::builder()
        .target_outbound(8)
        .retry_base(Duration::from_millis(50))
        .policy(strict())
        .address_source(move || {
            let pick = if rng.u8(0..10) < 9 {
                bad[rng.usize(..bad.len())]
            } else {
                good[rng.usize(..good.len())]
            };
            std::future::ready(Some(pick))
        })
        .listener(listener)
        .on_accept(move |c| {
            let _ = tx.send(c);
        })
        .on_connection(move |c| {
            let _ = ctx.send(c);
        })
        .start()
        .expect("start");

    let mut outbound = Vec::new();
    while outbound.len() < 8 {
        let conn = tokio::time::timeout(Duration::from_secs(30), connected.recv())
            .await
            .expect("the target fills")
            .expect("connected");
        outbound.push(conn);
    }
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.established(ConnKind::Automatic), 8);
    let theirs = outbound
        .iter()
        .filter(|c| attacker.addrs.contains(c.addr()))
        .count();
    assert!(theirs <= 2, "the attacker holds {theirs} of 8");
    assert!(snap.counters.skipped.netgroup > 0);

    // Inbound: a flood from 127.60/16.
    raise_nofile();
    let per_group = 117 / 8;
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        let from = ip(60, (i / 250) as u8, (i % 250 + 1) as u8);
        flood.push(connect_from(from, addr).await);
    }
    until_async("the flood is admitted or refused", || async {
        tokio::task::yield_now().await;
        let c = handle.counters();
        c.inbound_accepted + c.inbound_rejected >= 1000
    })
    .await;
    assert_eq!(handle.counters().inbound_accepted, per_group);
    for g in 0..5 {
        flood.push(connect_from(ip(61 + g, 0, 1), addr).await);
    }
    let mut groups = HashSet::new();
    for _ in 0..per_group + 5 {
        let conn = tokio::time::timeout(Duration::from_secs(10), accepted.recv())
            .await
            .expect("admitted")
            .expect("open");
        groups.insert(conn.addr().ip());
    }
    let groups: HashSet<u8> = groups
        .into_iter()
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => v4.octets()[1],
            std::net::IpAddr::V6(_) => 0,
        })
        .collect();
    assert_eq!(
        groups.len(),
        6,
        "the flood's group (127.60/16) and 5 others"
    );
    assert_eq!(handle.counters().inbound_accepted, per_group + 5);
    handle.stop().await;
}

/// Enough descriptors for a thousand client sockets.
fn raise_nofile() {
    if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard.min(8192), hard);
    }
}
