//! Connection classes (Bitcoin Core's outbound layout): full-relay and
//! block-relay targets, feelers, anchors across a restart, and an extra
//! outbound connection above a target. Real loopback peers, paused time.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

mod support;

use connmgr::{
    addrman::{AddrMan, Source},
    backoff::JitterRng,
    manager::{
        Builder, ConnClass, ConnId, ConnKind, ConnManager, ConnState, Connection, DisconnectReason,
        Error, Report,
    },
};
use support::{
    Gate, HoldingPeer,
    addrs::temp_dir,
    manager::{Log, assert_counts_exact, cycle, dials_to, established_in, keep, recording},
    refused_addrs, settle, until_async,
};
use tokio::net::TcpStream;

/// Each class keeps its own target from one source: 3 full-relay and 2
/// block-relay connections; a dropped block-relay connection is replaced
/// by a block-relay one, and the full-relay class is untouched.
#[tokio::test(start_paused = true)]
async fn classes_have_separate_targets() {
    let peer = HoldingPeer::start_many(8).await;
    let (held, on_connection) = keep();
    let handle = ConnManager::builder()
        .target_outbound(3)
        .class_target(ConnClass::BlockRelay, 2)
        .address_source(cycle(peer.addrs.clone()))
        .on_connection(on_connection)
        .start()
        .expect("start");
    until_async("both classes at their targets", || async {
        established_in(&handle, ConnClass::FullRelay).await == 3
            && established_in(&handle, ConnClass::BlockRelay).await == 2
    })
    .await;
    settle().await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.entries.len(), 5, "nothing beyond the two targets");

    // Drop one block-relay connection: a block-relay one replaces it.
    let gone = {
        let mut held = held.lock().expect("held");
        let i = held
            .iter()
            .position(|c| c.class() == ConnClass::BlockRelay)
            .expect("a block-relay connection");
        held.remove(i).id()
    };
    until_async("block-relay replaced", || async {
        let snap = handle.snapshot().await.expect("snapshot");
        snap.get(gone).is_none() && snap.established_in(ConnClass::BlockRelay) == 2
    })
    .await;
    settle().await;
    assert_eq!(established_in(&handle, ConnClass::FullRelay).await, 3);
    let c = handle.counters();
    assert_eq!(c.class(ConnClass::BlockRelay).established, 3);
    assert_eq!(c.class(ConnClass::FullRelay).established, 3);
    assert_eq!(c.class(ConnClass::Feeler).dials, 0);
    handle.stop().await;
    assert_counts_exact(&handle.counters());
}

/// The application learns each connection's class in `on_connection`, and
/// the snapshot agrees with it, connection by connection.
#[tokio::test(start_paused = true)]
async fn class_reported_in_snapshot_and_callback() {
    let peer = HoldingPeer::start_many(8).await;
    let seen: Arc<Mutex<HashMap<ConnId, ConnClass>>> = Arc::default();
    let held: Arc<Mutex<Vec<Connection<TcpStream>>>> = Arc::default();
    let (s, h) = (seen.clone(), held.clone());
    let handle = ConnManager::builder()
        .target_outbound(2)
        .class_target(ConnClass::BlockRelay, 2)
        .address_source(cycle(peer.addrs.clone()))
        .on_connection(move |conn| {
            s.lock().expect("seen").insert(conn.id(), conn.info().class);
            assert_eq!(conn.class(), conn.info().class);
            h.lock().expect("held").push(conn);
        })
        .start()
        .expect("start");
    until_async("four connections", || async {
        tokio::task::yield_now().await;
        seen.lock().expect("seen").len() == 4
    })
    .await;
    let snap = handle.snapshot().await.expect("snapshot");
    let seen = seen.lock().expect("seen").clone();
    for (id, class) in &seen {
        let entry = snap.get(*id).expect("entry");
        assert_eq!(entry.info.class, *class, "{id}");
        assert_eq!(entry.info.kind, ConnKind::Automatic);
    }
    let block = seen
        .values()
        .filter(|c| **c == ConnClass::BlockRelay)
        .count();
    assert_eq!((seen.len() - block, block), (2, 2));
    // Explicit requests are full-relay.
    let extra = HoldingPeer::start().await;
    let id = handle.connect(extra.addr).await.expect("connect");
    until_async("explicit connected", || async {
        handle.state(id).await == Ok(ConnState::Established)
    })
    .await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(
        snap.get(id).map(|e| e.info.class),
        Some(ConnClass::FullRelay)
    );
    assert_eq!(
        snap.established_in(ConnClass::FullRelay),
        2,
        "automatic only"
    );
    handle.stop().await;
    assert_counts_exact(&handle.counters());
}

/// Feelers come at exponentially distributed intervals: over 500 of them
/// the mean is within 10 % of the configured 2 minutes, and the spread is
/// an exponential's (standard deviation close to the mean), not a fixed
/// tick. The stack records when each feeler is dialled and fails at once.
#[tokio::test(start_paused = true)]
async fn feeler_interval_on_paused_time() {
    let man = AddrMan::<SocketAddr>::seeded(5).admit_local(true);
    let addrs = refused_addrs(16).await;
    man.add(addrs, Source::User);
    let times: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let t = times.clone();
    let stack = tower::service_fn(move |_: SocketAddr| {
        t.lock().expect("times").push(tokio::time::Instant::now());
        std::future::ready(Err::<TcpStream, _>(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    });
    let start = tokio::time::Instant::now();
    let handle = ConnManager::with_dialer(stack)
        .target_outbound(0)
        .address_manager(man)
        .feelers(Some(Duration::from_secs(120)))
        .rng(JitterRng::seeded(3))
        .start()
        .expect("start");
    while times.lock().expect("times").len() < 501 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            start.elapsed() < Duration::from_secs(120 * 2000),
            "too few feelers"
        );
    }
    let times = times.lock().expect("times").clone();
    let gaps: Vec<f64> = times
        .windows(2)
        .take(500)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
    println!("500 feeler gaps: mean {mean:.1} s, standard deviation {sd:.1} s");
    assert!((108.0..=132.0).contains(&mean), "mean gap {mean:.1} s");
    assert!(
        sd / mean > 0.8 && sd / mean < 1.2,
        "sd/mean {:.2}",
        sd / mean
    );
    let c = handle.counters();
    assert_eq!(c.class(ConnClass::Feeler).failures, c.failures);
    assert_eq!(c.consecutive_failures, 0, "feelers never feed the throttle");
    handle.stop().await;
    assert_counts_exact(&handle.counters());
}

/// A feeler dials an address of the new table; it answers, and the
/// address moves to tried. The application sees class `Feeler`; one it
/// keeps is closed by the manager after the hold, reported as
/// `FeelerDone`. Feelers count against no target.
#[tokio::test(start_paused = true)]
async fn feeler_moves_address_to_tried() {
    let peer = HoldingPeer::start().await;
    let man = AddrMan::<SocketAddr>::seeded(6).admit_local(true);
    man.add([peer.addr], Source::User);
    assert!(!man.is_tried(&peer.addr));
    let (held, on_connection) = keep();
    let reasons: Arc<Mutex<Vec<DisconnectReason>>> = Arc::default();
    let r = reasons.clone();
    let handle = ConnManager::builder()
        .target_outbound(0)
        .address_manager(man.clone())
        .feelers(Some(Duration::from_secs(10)))
        .feeler_hold(Duration::from_secs(5))
        .on_connection(on_connection)
        .on_disconnection(move |d| r.lock().expect("reasons").push(d.reason))
        .start()
        .expect("start");
    until_async("a feeler connected", || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        !held.lock().expect("held").is_empty()
    })
    .await;
    {
        let held = held.lock().expect("held");
        assert_eq!(held[0].class(), ConnClass::Feeler);
        assert_eq!(held[0].addr(), &peer.addr);
    }
    assert!(man.is_tried(&peer.addr), "the feeler moved it to tried");
    // The manager closes the feeler the application kept.
    tokio::time::sleep(Duration::from_secs(6)).await;
    until_async("feeler closed", || async {
        tokio::task::yield_now().await;
        reasons.lock().expect("reasons").as_slice() == [DisconnectReason::FeelerDone]
    })
    .await;
    assert!(held.lock().expect("held")[0].is_closed());
    // Nothing left in the map, and no new-table address left to feel.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let snap = handle.snapshot().await.expect("snapshot");
    assert!(snap.entries.is_empty(), "{:?}", snap.entries);
    let c = handle.counters();
    assert_eq!(c.class(ConnClass::Feeler).established, 1);
    assert_eq!(peer.accepted(), 1);
    handle.stop().await;
    assert_counts_exact(&handle.counters());
}

/// Feelers that fail, many in a row, never feed the failure throttle:
/// with `max_failures(1)` and an hour's throttle wait, the count of
/// consecutive failures stays 0, no throttle wait happens, and a dropped
/// full-relay connection is replaced at once.
#[tokio::test(start_paused = true)]
async fn feelers_do_not_feed_throttle() {
    let peer = HoldingPeer::start_many(2).await;
    let man = AddrMan::<SocketAddr>::seeded(7).admit_local(true);
    man.add(refused_addrs(8).await, Source::User);
    let (held, on_connection) = keep();
    let handle = ConnManager::builder()
        .target_outbound(1)
        .max_failures(1)
        .throttle_wait(Duration::from_secs(3600))
        // Feelers test the table; automatic peers come from live ones.
        .address_manager(man.clone())
        .address_source(cycle(peer.addrs.clone()))
        .feelers(Some(Duration::from_secs(10)))
        .on_connection(on_connection)
        .start()
        .expect("start");
    until_async("20 feelers failed", || async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        handle.counters().class(ConnClass::Feeler).failures >= 20
    })
    .await;
    let c = handle.counters();
    assert_eq!(c.consecutive_failures, 0);
    assert_eq!(c.throttled, 0);
    assert_eq!(c.class(ConnClass::FullRelay).established, 1);

    held.lock()
        .expect("held")
        .retain(|c| c.class() != ConnClass::FullRelay);
    tokio::time::sleep(Duration::from_secs(1)).await;
    until_async("replaced at once", || async {
        tokio::task::yield_now().await;
        handle.counters().class(ConnClass::FullRelay).established == 2
    })
    .await;
    assert_eq!(handle.counters().throttled, 0);
    handle.stop().await;
    assert_counts_exact(&handle.counters());
}

/// No feeler is dialled while the callbacks are behind: with the callback
/// stuck and its queue full, feelers due every 5 ms stop; when it returns,
/// they go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feelers_wait_while_callbacks_behind() {
    let man = AddrMan::<SocketAddr>::seeded(12).admit_local(true);
    man.add(refused_addrs(8).await, Source::User);
    let gate = Gate::default();
    let g = gate.clone();
    let handle = ConnManager::builder()
        .target_outbound(0)
        .address_manager(man)
        .feelers(Some(Duration::from_millis(5)))
        .callback_queue(1)
        .on_dial_failure(move |_| g.wait())
        .start()
        .expect("start");
    // Sixty feelers would be due in this time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled = handle.counters().class(ConnClass::Feeler).dials;
    // Opened before the check, so that a failure does not hang the test.
    gate.open();
    // One in the stuck callback, one in the queue, one kept back.
    assert!(stalled <= 3, "feelers while behind: {stalled}");
    until_async("feelers resume", || async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        handle.counters().class(ConnClass::Feeler).dials > stalled + 5
    })
    .await;
    handle.stop().await;
    assert_counts_exact(&handle.counters());
}

/// Core's layout on a loopback network, across a restart: the block-relay
/// peers at stop are saved as anchors in the address file, and the next
/// start dials them first, as block-relay connections; the anchors are
/// taken out of the table, so a crash does not dial them again.
#[tokio::test(start_paused = true)]
async fn anchors_dialled_first_after_restart() {
    let path = temp_dir().join("peers.dat");
    let peer = HoldingPeer::start_many(10).await;
    let man = AddrMan::<SocketAddr>::seeded(9).admit_local(true);
    man.add(peer.addrs.clone(), Source::User);
    let (held, on_connection) = keep();
    let handle = ConnManager::builder()
        .target_outbound(3)
        .class_target(ConnClass::BlockRelay, 2)
        .feelers(None)
        .address_manager(man)
        .save_to(&path, Duration::from_secs(3600))
        .on_connection(on_connection)
        .start()
        .expect("start");
    until_async("five connections", || async {
        tokio::task::yield_now().await;
        held.lock().expect("held").len() == 5
    })
    .await;
    let block: HashSet<SocketAddr> = held
        .lock()
        .expect("held")
        .iter()
        .filter(|c| c.class() == ConnClass::BlockRelay)
        .map(|c| *c.addr())
        .collect();
    assert_eq!(block.len(), 2);
    handle.stop().await;
    drop(held);

    let (back, _bans, err) = AddrMan::<SocketAddr>::load_or_new(&path, true);
    assert!(err.is_none(), "{err:?}");
    let anchors: HashSet<SocketAddr> = back.anchors().into_iter().collect();
    assert_eq!(anchors, block, "the block-relay peers are the anchors");

    let log: Log = Arc::default();
    let (held, on_connection) = keep();
    let handle = Builder::new(recording(log.clone(), Duration::ZERO))
        .target_outbound(3)
        .class_target(ConnClass::BlockRelay, 2)
        .feelers(None)
        .address_manager(back.clone())
        .on_connection(on_connection)
        .start()
        .expect("start");
    assert!(back.anchors().is_empty(), "taken at start");
    until_async("five connections again", || async {
        tokio::task::yield_now().await;
        held.lock().expect("held").len() == 5
    })
    .await;
    let first: HashSet<SocketAddr> = log.lock().expect("log")[..2].iter().copied().collect();
    assert_eq!(first, anchors, "the anchors were dialled first");
    for conn in held.lock().expect("held").iter() {
        let expected = if anchors.contains(conn.addr()) {
            ConnClass::BlockRelay
        } else {
            ConnClass::FullRelay
        };
        assert_eq!(conn.class(), expected, "{}", conn.addr());
    }
    handle.stop().await;
    assert_counts_exact(&handle.counters());
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

/// An anchor that fails is dialled once and forgotten: not retried, not
/// saved again; the other anchor connects as block-relay.
#[tokio::test(start_paused = true)]
async fn failed_anchor_forgotten() {
    let live = HoldingPeer::start_many(4).await;
    let dead = refused_addrs(1).await[0];
    let man = AddrMan::<SocketAddr>::seeded(10).admit_local(true);
    man.add(live.addrs[1..].iter().copied(), Source::User);
    man.set_anchors([dead, live.addrs[0]]);
    let log: Log = Arc::default();
    let (held, on_connection) = keep();
    let handle = Builder::new(recording(log.clone(), Duration::ZERO))
        .target_outbound(1)
        .class_target(ConnClass::BlockRelay, 2)
        .feelers(None)
        .address_manager(man.clone())
        .on_connection(on_connection)
        .start()
        .expect("start");
    until_async("three connections", || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        held.lock().expect("held").len() == 3
    })
    .await;
    // An hour later the dead anchor has still been dialled once.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let dials_to_dead = dials_to(&log, dead);
    assert_eq!(dials_to_dead, 1, "a failed anchor is not retried");
    let anchor = held
        .lock()
        .expect("held")
        .iter()
        .find(|c| c.addr() == &live.addrs[0])
        .map(Connection::class);
    assert_eq!(anchor, Some(ConnClass::BlockRelay));
    handle.stop().await;
    let saved = man.anchors();
    assert!(!saved.contains(&dead), "{saved:?}");
    assert!(saved.contains(&live.addrs[0]), "{saved:?}");
    assert_counts_exact(&handle.counters());
}

/// Core's extra outbound peer: the class goes one above its target, the
/// application asks which connection to drop (the youngest, unless a
/// report says it brought a block), drops it, and the class is back at its
/// target for good, every count exact.
#[tokio::test(start_paused = true)]
async fn extra_outbound_above_target_then_back() {
    let peer = HoldingPeer::start_many(8).await;
    let (held, on_connection) = keep();
    let handle = ConnManager::builder()
        .target_outbound(2)
        .address_source(cycle(peer.addrs.clone()))
        .on_connection(on_connection)
        .start()
        .expect("start");
    until_async("at the target", || async {
        established_in(&handle, ConnClass::FullRelay).await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    handle
        .extra_outbound(ConnClass::FullRelay)
        .await
        .expect("extra");
    assert_eq!(
        handle.extra_outbound(ConnClass::FullRelay).await,
        Err(Error::ExtraPending(ConnClass::FullRelay))
    );
    assert_eq!(
        handle.extra_outbound(ConnClass::BlockRelay).await,
        Err(Error::NoTarget(ConnClass::BlockRelay))
    );
    assert_eq!(
        handle.extra_outbound(ConnClass::Feeler).await,
        Err(Error::NoTarget(ConnClass::Feeler))
    );
    until_async("one above the target", || async {
        established_in(&handle, ConnClass::FullRelay).await == 3
    })
    .await;
    settle().await;
    assert_eq!(established_in(&handle, ConnClass::FullRelay).await, 3);

    // The youngest goes, unless it brought a block.
    let snap = handle.snapshot().await.expect("snapshot");
    let mut ids: Vec<ConnId> = snap.entries.iter().map(|e| e.id()).collect();
    ids.sort();
    let youngest = ids[2];
    assert_eq!(
        handle.drop_candidate(ConnClass::FullRelay).await,
        Ok(Some(youngest))
    );
    handle
        .report(youngest, Report::Block)
        .await
        .expect("report");
    let candidate = handle
        .drop_candidate(ConnClass::FullRelay)
        .await
        .expect("candidate")
        .expect("some");
    assert_eq!(candidate, ids[1], "the youngest without a block");
    assert_eq!(handle.drop_candidate(ConnClass::BlockRelay).await, Ok(None));

    handle.disconnect(candidate).await.expect("disconnect");
    held.lock().expect("held").retain(|c| c.id() != candidate);
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(
        established_in(&handle, ConnClass::FullRelay).await,
        2,
        "back at the target, nothing replaced the dropped one"
    );

    // And the target works as before: a drop is replaced.
    let id = {
        let mut held = held.lock().expect("held");
        held.remove(0).id()
    };
    until_async("replaced", || async {
        let snap = handle.snapshot().await.expect("snapshot");
        snap.get(id).is_none() && snap.established_in(ConnClass::FullRelay) == 2
    })
    .await;
    settle().await;
    assert_eq!(established_in(&handle, ConnClass::FullRelay).await, 2);
    // The extra can be asked for again.
    handle
        .extra_outbound(ConnClass::FullRelay)
        .await
        .expect("extra again");
    handle.stop().await;
    assert_counts_exact(&handle.counters());
}

/// A feeler gives way to a request for its address: a permanent request
/// ends the feeler and is a full-relay permanent peer of its own (not a
/// feeler closed after the hold), and every class's counts stay exact.
#[tokio::test(start_paused = true)]
async fn request_for_feeler_address_ends_the_feeler() {
    let peer = HoldingPeer::start().await;
    let man = AddrMan::<SocketAddr>::seeded(13).admit_local(true);
    man.add([peer.addr], Source::User);
    let (held, on_connection) = keep();
    let reasons: Arc<Mutex<Vec<DisconnectReason>>> = Arc::default();
    let r = reasons.clone();
    let handle = ConnManager::builder()
        .target_outbound(0)
        .address_manager(man)
        .feelers(Some(Duration::from_secs(10)))
        .feeler_hold(Duration::from_secs(60))
        .on_connection(on_connection)
        .on_disconnection(move |d| r.lock().expect("reasons").push(d.reason))
        .start()
        .expect("start");
    until_async("a feeler connected", || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        !held.lock().expect("held").is_empty()
    })
    .await;
    let feeler = held.lock().expect("held")[0].id();
    let id = handle
        .connect_permanent(peer.addr)
        .await
        .expect("permanent");
    assert_ne!(id, feeler);
    until_async("the permanent peer connected", || async {
        tokio::task::yield_now().await;
        held.lock().expect("held").len() == 2
    })
    .await;
    assert!(
        held.lock().expect("held")[0].is_closed(),
        "the feeler ended"
    );
    assert_eq!(
        reasons.lock().expect("reasons").as_slice(),
        [DisconnectReason::FeelerDone]
    );
    // Past the feeler hold, the permanent peer is still up, full-relay.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let snap = handle.snapshot().await.expect("snapshot");
    let entry = snap.get(id).expect("entry");
    assert_eq!(entry.state, ConnState::Established);
    assert_eq!(entry.info.class, ConnClass::FullRelay);
    assert_eq!(entry.info.kind, ConnKind::Permanent);
    handle.stop().await;
    assert_counts_exact(&handle.counters());
}

/// One feeler at a time: while a feeler's dial hangs (no connect timeout),
/// no other feeler starts, however many come due.
#[tokio::test(start_paused = true)]
async fn one_feeler_at_a_time() {
    let man = AddrMan::<SocketAddr>::seeded(14).admit_local(true);
    man.add(refused_addrs(8).await, Source::User);
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let stack = tower::service_fn(move |_: SocketAddr| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::pending::<std::io::Result<TcpStream>>()
    });
    let handle = ConnManager::with_dialer(stack)
        .target_outbound(0)
        .connect_timeout(None)
        .address_manager(man)
        .feelers(Some(Duration::from_secs(10)))
        .start()
        .expect("start");
    // About sixty feelers come due in ten minutes.
    tokio::time::sleep(Duration::from_secs(600)).await;
    settle().await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let snap = handle.snapshot().await.expect("snapshot");
    assert_eq!(snap.entries.len(), 1, "{:?}", snap.entries);
    assert_eq!(snap.entries[0].info.kind, ConnKind::Feeler);
    handle.stop().await;
    assert_counts_exact(&handle.counters());
}
