//! The address manager: what it admits, what a flood can and cannot do to
//! it, what it keeps across a restart, and its invariants under any
//! sequence of operations.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime},
};

mod support;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use connmgr::{
    addrman::{AddrMan, PersistError, Source},
    manager::{Builder, ConnManager},
    policy::{Ban, Host, Subnet},
    resolve::{Addrs, Name, ResolveError},
    seed::DnsSeeder,
};
use proptest::prelude::*;
use support::{
    HoldingPeer,
    addrs::{peer, temp_dir, v4},
    manager::keep,
    until_async,
};

/// Impossible and local addresses never enter (a seed answering `0.0.0.0`
/// or `127.0.0.1` is harmless), and each refusal is counted; with
/// `admit_local` a loopback network works.
#[test]
fn addrman_refuses_unroutable() {
    let man = AddrMan::<SocketAddr>::seeded(2);
    let bad = [
        "0.0.0.0:8333",
        "[::]:8333",
        "127.0.0.1:8333",
        "10.1.2.3:8333",
        "192.168.0.1:8333",
        "224.0.0.1:8333",
        "255.255.255.255:8333",
        "[::1]:8333",
        "[ff02::1]:8333",
        "[fe80::1]:8333",
        "[::ffff:10.0.0.1]:8333",
        "198.18.0.1:8333",
    ];
    let seed = Source::Seed(Host::name("seed.example.org"));
    let added = man.add(bad.iter().map(|s| s.parse().expect("addr")), seed);
    assert_eq!(added, 0);
    assert_eq!(man.stats().unroutable, bad.len() as u64);
    assert!(man.is_empty());
    assert_eq!(man.select(), None);
    assert_eq!(man.add([v4(8, 8, 8, 8)], seed), 1);
    assert_eq!(man.select(), Some(v4(8, 8, 8, 8)));

    let local = AddrMan::<SocketAddr>::seeded(2).admit_local(true);
    assert_eq!(local.add([v4(127, 0, 0, 1)], Source::User), 1);
}

/// Honest addresses that worked sit in tried; a flood of a million new
/// addresses from one attacker cannot push them out, and selection still
/// finds them half the time.
#[test]
fn addrman_tried_survives_new_flood() {
    let man = AddrMan::<SocketAddr>::seeded(3);
    let honest: Vec<SocketAddr> = (0..64u8).map(|g| v4(20 + g, g, 1, 1)).collect();
    man.add(honest.iter().copied(), Source::User);
    for a in &honest {
        man.good(a);
    }
    man.resolve_collisions();
    let tried_before: HashSet<SocketAddr> =
        honest.iter().copied().filter(|a| man.is_tried(a)).collect();
    assert!(tried_before.len() >= 60, "{}", tried_before.len());

    let attacker = peer(6, 6);
    for a in 0..16u8 {
        for b in 0..=255u8 {
            let batch = (0..=255u8).map(move |c| v4(100 + a, b, c, 7));
            man.add(batch, attacker);
        }
    }
    for a in &tried_before {
        assert!(man.is_tried(a), "{a} pushed out of tried");
    }
    let stats = man.stats();
    assert!(
        stats.new <= 64 * 64,
        "one source group: at most 64 buckets ({})",
        stats.new
    );
    let picks = (0..2000)
        .filter_map(|_| man.select())
        .filter(|a| honest.contains(a))
        .count();
    assert!(picks > 800, "honest picks {picks} of 2000");
    man.check().expect("invariants");
}

/// A saved table loads with the same addresses, the same tables, the same
/// secret (so the same buckets), and its bans.
#[test]
fn addrman_persist_roundtrip() {
    let path = temp_dir().join("peers.dat");
    let man = AddrMan::<SocketAddr>::seeded(4);
    for g in 0..200u8 {
        man.add([v4(30, g, 0, 1), v4(31, g, 0, 1)], peer(40, g));
    }
    let v6 = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2a01, 0x4f8, 0, 0, 0, 0, 0, 1)),
        8333,
    );
    man.add([v6], Source::User);
    for g in 0..50u8 {
        man.good(&v4(30, g, 0, 1));
    }
    let bans = vec![Ban {
        subnet: "203.0.113.0/24".parse::<Subnet>().expect("subnet"),
        until: SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000),
        reason: "spam ünïcode".into(),
    }];
    man.save(&path, &bans).expect("save");
    let (back, bans_back) = AddrMan::<SocketAddr>::load(&path, false).expect("load");
    assert_eq!(bans_back, bans);
    assert_eq!(back.len(), man.len());
    assert_eq!(back.stats().tried, man.stats().tried);
    for g in 0..200u8 {
        for a in [v4(30, g, 0, 1), v4(31, g, 0, 1)] {
            assert_eq!(back.contains(&a), man.contains(&a), "{a}");
            assert_eq!(back.is_tried(&a), man.is_tried(&a), "{a}");
        }
    }
    assert!(back.contains(&v6));
    back.check().expect("invariants after load");
    // Saved again, the bytes are the same: nothing is lost or reordered.
    let again = path.with_extension("2");
    back.save(&again, &bans).expect("save again");
    let (third, _) = AddrMan::<SocketAddr>::load(&again, false).expect("load again");
    assert_eq!(third.len(), back.len());
}

/// A truncated, damaged, foreign or newer file is a typed error, never a
/// panic; `load_or_new` starts empty and keeps the bad file aside.
#[test]
fn addrman_corrupt_file_is_typed_error() {
    let path = temp_dir().join("peers.dat");
    let man = AddrMan::<SocketAddr>::seeded(5);
    for g in 0..100u8 {
        man.add([v4(30, g, 0, 1)], peer(40, g));
    }
    man.save(&path, &[]).expect("save");
    let good = std::fs::read(&path).expect("read");

    let cases: Vec<(Vec<u8>, fn(&PersistError) -> bool)> = vec![
        (good[..good.len() / 2].to_vec(), |e| {
            matches!(e, PersistError::Truncated)
        }),
        (Vec::new(), |e| matches!(e, PersistError::Foreign)),
        (b"GIF89a, not ours at all".to_vec(), |e| {
            matches!(e, PersistError::Foreign)
        }),
        (
            {
                let mut b = good.clone();
                b[40] ^= 0x55;
                b
            },
            |e| matches!(e, PersistError::Checksum),
        ),
        (
            {
                let mut b = good.clone();
                b[8..12].copy_from_slice(&7u32.to_le_bytes());
                b
            },
            |e| matches!(e, PersistError::Version(7)),
        ),
        (
            {
                let mut b = good.clone();
                b.push(0);
                b
            },
            |e| matches!(e, PersistError::Corrupt(_)),
        ),
    ];
    for (i, (bytes, expected)) in cases.into_iter().enumerate() {
        std::fs::write(&path, &bytes).expect("write");
        match AddrMan::<SocketAddr>::load(&path, false) {
            Err(e) => assert!(expected(&e), "case {i}: {e:?}"),
            Ok(_) => panic!("case {i} loaded"),
        }
        let (table, bans, err) = AddrMan::<SocketAddr>::load_or_new(&path, true);
        assert!(
            err.is_some() && table.is_empty() && bans.is_empty(),
            "case {i}"
        );
        let aside = path.with_file_name("peers.dat.bad");
        assert_eq!(
            std::fs::read(&aside).expect("kept aside"),
            bytes,
            "case {i}"
        );
        assert!(!path.exists(), "case {i}: moved, not copied");
    }
    // Random garbage never panics.
    let mut rng = fastrand::Rng::with_seed(9);
    for n in 0..200 {
        let mut bytes = good.clone();
        for _ in 0..(n % 7 + 1) {
            let i = rng.usize(..bytes.len());
            bytes[i] = rng.u8(..);
        }
        std::fs::write(&path, &bytes).expect("write");
        let _ = AddrMan::<SocketAddr>::load(&path, false);
    }
    let (empty, _, err) =
        AddrMan::<SocketAddr>::load_or_new(&path.with_file_name("missing.dat"), false);
    assert!(
        err.is_none() && empty.is_empty(),
        "a missing file is a first start"
    );
}

/// A save that is interrupted leaves the old file whole: the temporary
/// file it writes first is never the file; a failed save creates nothing;
/// two saves at once never break the file.
#[test]
fn addrman_save_is_atomic() {
    let path = temp_dir().join("peers.dat");
    let man = AddrMan::<SocketAddr>::seeded(6);
    man.add([v4(30, 1, 0, 1)], Source::User);
    man.save(&path, &[]).expect("first save");
    let old = std::fs::read(&path).expect("read");

    // A crash mid-write: a partial temporary file is left behind.
    let tmp = path.with_file_name("peers.dat.tmp");
    std::fs::write(&tmp, &old[..old.len() / 3]).expect("partial");
    let (loaded, _) = AddrMan::<SocketAddr>::load(&path, false).expect("the old file is whole");
    assert_eq!(loaded.len(), 1);

    // A save that cannot write fails with an I/O error and creates nothing
    // (here its folder is a file).
    let blocked = path.with_file_name("not-a-dir");
    std::fs::write(&blocked, b"x").expect("file");
    assert!(matches!(
        man.save(&blocked.join("peers.dat"), &[]),
        Err(PersistError::Io(_))
    ));
    assert_eq!(
        std::fs::read(&path).expect("read"),
        old,
        "the old file is untouched"
    );
    std::fs::remove_file(&tmp).expect("rm");

    // Two saves at once (the interval's and stop's) each rename a whole
    // file of their own: every load in between reads a whole table.
    man.add([v4(30, 2, 0, 1)], Source::User);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..50 {
                    man.save(&path, &[]).expect("concurrent save");
                }
            });
        }
        scope.spawn(|| {
            for _ in 0..100 {
                let (t, _) = AddrMan::<SocketAddr>::load(&path, false).expect("a whole file");
                assert!(!t.is_empty());
            }
        });
    });

    // And a save that works replaces it whole.
    man.save(&path, &[]).expect("save");
    let (loaded, _) = AddrMan::<SocketAddr>::load(&path, false).expect("load");
    assert_eq!(loaded.len(), 2);
    let leftovers = std::fs::read_dir(path.parent().expect("dir"))
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains(".tmp."))
        })
        .count();
    assert_eq!(leftovers, 0, "no temporary file is left behind");
}

#[derive(Clone, Debug)]
enum Op {
    Add(u8, u8, u8, u8),
    Good(usize),
    Attempt(usize, bool),
    Resolve,
    Select,
    Connected(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..8, any::<u8>(), any::<u8>(), 0u8..4).prop_map(|(a, b, s, k)| Op::Add(a, b, s, k)),
        2 => any::<usize>().prop_map(Op::Good),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, c)| Op::Attempt(i, c)),
        1 => Just(Op::Resolve),
        1 => Just(Op::Select),
        1 => any::<usize>().prop_map(Op::Connected),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("CI").map_or(200, |_| 1000)
    ))]

    /// Core's `CheckAddrman` along any sequence of steps: places match
    /// the keyed hash, counts agree, no address is in both tables, bounds
    /// hold; and a save and load keeps them.
    #[test]
    fn addrman_invariants(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..120)) {
        let man = AddrMan::<SocketAddr>::seeded(seed);
        let mut known: Vec<SocketAddr> = Vec::new();
        let last = ops.len() - 1;
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Add(a, b, s, k) => {
                    // Few groups and sources, so that places collide.
                    let addr = v4(40 + a, b % 4, k, 1);
                    man.add([addr], peer(90 + s % 3, 0));
                    known.push(addr);
                }
                Op::Good(i) if !known.is_empty() => { man.good(&known[i % known.len()]); }
                Op::Attempt(i, c) if !known.is_empty() => man.attempt(&known[i % known.len()], c),
                Op::Connected(i) if !known.is_empty() => man.connected(&known[i % known.len()]),
                Op::Resolve => man.resolve_collisions(),
                Op::Select => { let _ = man.select(); }
                _ => {}
            }
            // The full check scans all 81 920 places: every few steps, and
            // at the end.
            if step % 8 == 0 || step == last {
                prop_assert_eq!(man.check(), Ok(()));
            }
            let s = man.stats();
            prop_assert!(s.new + s.tried <= connmgr::addrman::MAX_ENTRIES);
            prop_assert_eq!(s.new + s.tried, man.len());
        }
        let path = temp_dir().join("p.dat");
        man.save(&path, &[]).expect("save");
        let (back, _) = AddrMan::<SocketAddr>::load(&path, false).expect("load");
        prop_assert_eq!(back.check(), Ok(()));
        prop_assert_eq!(back.len(), man.len());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}

// ===== with the manager =====

/// Listeners on 127.9.0.1..=n, all on one port (a DNS seed gives IPs, and
/// the port is the network's).
async fn same_port_peers(n: u8) -> (u16, Vec<tokio::net::TcpListener>) {
    'retry: for _ in 0..20 {
        let first = tokio::net::TcpListener::bind((Ipv4Addr::new(127, 9, 0, 1), 0))
            .await
            .expect("bind");
        let port = first.local_addr().expect("addr").port();
        let mut all = vec![first];
        for i in 2..=n {
            match tokio::net::TcpListener::bind((Ipv4Addr::new(127, 9, 0, i), port)).await {
                Ok(l) => all.push(l),
                Err(_) => continue 'retry,
            }
        }
        return (port, all);
    }
    panic!("no common free port");
}

/// Accepts and holds connections on each listener.
fn hold(listeners: Vec<tokio::net::TcpListener>) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    for l in listeners {
        let a = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
    }
    accepted
}

/// A resolver that answers `name` with `ips` (counting questions) and
/// never answers any other name.
fn resolver(
    name: &'static str,
    ips: Vec<IpAddr>,
    asked: Arc<AtomicUsize>,
) -> impl tower::Service<
    Name,
    Response = Addrs,
    Error = ResolveError,
    Future = futures_util::future::BoxFuture<'static, Result<Addrs, ResolveError>>,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |n: Name| {
        let (ips, asked) = (ips.clone(), asked.clone());
        let fut: futures_util::future::BoxFuture<'static, Result<Addrs, ResolveError>> =
            if n.as_str() == name {
                Box::pin(async move {
                    asked.fetch_add(1, Ordering::SeqCst);
                    Ok(ips)
                })
            } else {
                Box::pin(std::future::pending())
            };
        fut
    })
}

/// When every address of the table is in use, the source seeds again (at
/// most once per reseed interval), and the new addresses fill the target.
#[tokio::test(start_paused = true)]
async fn addrman_reseeds_when_every_address_in_use() {
    let (port, listeners) = same_port_peers(4).await;
    let accepted = hold(listeners);
    let asked = Arc::new(AtomicUsize::new(0));
    let ips: Vec<IpAddr> = (2..=4)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 9, 0, i)))
        .collect();
    let seeder = DnsSeeder::new(resolver("seed.test", ips, asked.clone()))
        .seeds(["seed.test"])
        .port(port);
    // The port is random, so a table secret is looked for under which the
    // four addresses take four places (in about 1 in 30 secrets two of them
    // would want the same place).
    let at = |i: u8| SocketAddr::from((Ipv4Addr::new(127, 9, 0, i), port));
    let seed = (7..200)
        .find(|&seed| {
            let trial = AddrMan::<SocketAddr>::seeded(seed).admit_local(true);
            trial.add([at(1)], Source::User);
            trial.add((2..=4).map(at), Source::Seed(Host::name("seed.test")));
            trial.len() == 4
        })
        .expect("a secret without collisions");
    let man = AddrMan::<SocketAddr>::seeded(seed)
        .admit_local(true)
        .seeder(seeder)
        .reseed_interval(Duration::from_secs(60));
    // One address known, already: the seeding is what fills the rest.
    man.add(
        [SocketAddr::from((Ipv4Addr::new(127, 9, 0, 1), port))],
        Source::User,
    );
    let (_held, on_connection) = keep();
    let handle = ConnManager::builder()
        .target_outbound(4)
        .address_manager(man.clone())
        .on_connection(on_connection)
        .start()
        .expect("start");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "asked {}, {:?}, {:?}",
        asked.load(Ordering::SeqCst),
        man.stats(),
        handle.counters()
    );
    assert!(asked.load(Ordering::SeqCst) >= 1);
    // Everything is in use now: seedings stay at one a minute.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let n = asked.load(Ordering::SeqCst);
    assert!(n <= 12, "{n} seedings in 10 minutes");
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    handle.stop().await;
}

/// A DNS seed's answers go into the table as soon as it answers: a seed
/// that never answers delays no other.
#[tokio::test(start_paused = true)]
async fn dns_seed_answers_added_as_they_arrive() {
    let asked = Arc::new(AtomicUsize::new(0));
    let fast = IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8));
    let seeder = DnsSeeder::new(resolver("fast.test", vec![fast], asked))
        .seeds(["slow.test", "fast.test"])
        .timeout(Duration::from_secs(15));
    let man = AddrMan::<SocketAddr>::seeded(8).seeder(seeder);
    let m = man.clone();
    let seeding = tokio::spawn(async move { m.seed().await });
    until_async("the fast seed's answer is in", || async {
        tokio::task::yield_now().await;
        man.contains(&SocketAddr::new(fast, 8333))
    })
    .await;
    assert!(!seeding.is_finished(), "the slow seed is still out");
    assert_eq!(seeding.await.expect("seeded"), 1);
}

/// 95 % of the new table unreachable, the honest addresses in tried: the
/// target still fills (at least 6 of 8 within 60 s) with the failure
/// throttle on; and a table where everything is dead is not hammered.
#[tokio::test(start_paused = true)]
async fn poisoned_table_still_fills() {
    let honest = HoldingPeer::start_many(8).await;
    let dead = support::refused_addrs(160).await;
    // The honest addresses all in tried, as the scenario says: their ports
    // are random, so a table secret is looked for under which no two of
    // them collide there (about 1 in 20 secrets has a collision).
    let man = (9..100)
        .map(|seed| {
            let man = AddrMan::<SocketAddr>::seeded(seed).admit_local(true);
            man.add(honest.addrs.iter().copied(), Source::User);
            for a in &honest.addrs {
                man.good(a);
            }
            man
        })
        .find(|man| man.stats().tried == 8)
        .expect("a secret without collisions");
    man.add(
        dead.iter().copied(),
        Source::Peer(Host::ip(IpAddr::V4(Ipv4Addr::new(6, 6, 6, 6)))),
    );
    assert_eq!(man.stats().tried, 8, "{:?}", man.stats());
    let (_held, on_connection) = keep();
    let handle = ConnManager::builder()
        .target_outbound(8)
        .address_manager(man.clone())
        .on_connection(on_connection)
        .start()
        .expect("start");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let up = honest.accepted();
    assert!(
        up >= 6,
        "{up} of 8 honest connections in 60 s; {:?}",
        handle.counters()
    );
    handle.stop().await;

    // Everything dead: the throttle rests it.
    let dead_only = AddrMan::<SocketAddr>::seeded(10).admit_local(true);
    dead_only.add(dead.iter().copied(), Source::User);
    let handle = Builder::<SocketAddr, _>::new(connmgr::Dialer::new())
        .target_outbound(8)
        .throttle_wait(Duration::from_secs(10))
        .address_manager(dead_only)
        .start()
        .expect("start");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let dials = handle.counters().dials;
    // 25 failures start the throttle, then about one dial per wait.
    assert!(
        dials <= 25 + 8 + 6 + 8,
        "{dials} dials in 60 s to a dead table"
    );
    handle.stop().await;
}

/// The manager saves its address manager and bans at the interval and on
/// stop; the next start loads them and dials from the table before it
/// seeds.
#[tokio::test(start_paused = true)]
async fn addrman_manager_saves_on_stop_and_interval() {
    let path = temp_dir().join("peers.dat");
    let peer = HoldingPeer::start().await;
    let man = AddrMan::<SocketAddr>::seeded(11).admit_local(true);
    man.add([peer.addr], Source::User);
    let (_held, on_connection) = keep();
    let handle = ConnManager::builder()
        .target_outbound(1)
        .address_manager(man)
        .save_to(&path, Duration::from_secs(60))
        .on_connection(on_connection)
        .start()
        .expect("start");
    tokio::time::sleep(Duration::from_secs(61)).await;
    until_async("saved at the interval", || async {
        tokio::task::yield_now().await;
        path.exists()
    })
    .await;
    handle
        .ban(
            "203.0.113.0/24".parse().expect("subnet"),
            Duration::from_secs(3600),
            "x",
        )
        .await
        .expect("ban");
    handle.stop().await;
    let (back, bans, err) = AddrMan::<SocketAddr>::load_or_new(&path, true);
    assert!(err.is_none(), "{err:?}");
    assert!(back.is_tried(&peer.addr), "the good address is in tried");
    assert_eq!(bans.len(), 1);

    // The next start dials from the file (no seeder here at all).
    let (_held, on_connection) = keep();
    let handle = ConnManager::builder()
        .target_outbound(1)
        .address_manager(back)
        .bans(bans)
        .on_connection(on_connection)
        .start()
        .expect("start");
    until_async("dialled from the saved table", || async {
        tokio::task::yield_now().await;
        peer.accepted() == 2
    })
    .await;
    handle.stop().await;
}
