//! Attacks on the address manager (issue 15), kept as regression tests:
//! each failed before its fix. Failure counting that never made an address
//! terrible, unroutable addresses brought back by `load`, addresses leaked
//! "in use" by the manager, a silent DNS seed that still delayed the first
//! dial, concurrent saves that broke the file, and a bad path that
//! `load_or_new` moved aside though it was no address file. The comment on
//! each test says what the attack did.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

mod support;

use connmgr::{
    addrman::{AddrMan, PersistError, Source},
    manager::{Builder, ConnKind, ConnManager},
    resolve::{Addrs, Name, ResolveError},
    seed::DnsSeeder,
};
use support::{
    HoldingPeer,
    addrs::{peer, temp_dir, v4},
    manager::keep,
    until,
};

// ===== the table =====

/// Core's `Attempt_` counts a failure when the address's last counted
/// failure is older than the table's last success anywhere (`m_last_good`);
/// `IsTerrible` then drops a never-successful address after 3 failures, and
/// a flood into its bucket overwrites it. Here the gate is the entry's own
/// `last_success`, so a never-successful address counts one failure, ever:
/// it never becomes terrible, keeps its place and its 0.66 chance.
#[tokio::test(start_paused = true)]
async fn attack_failures_never_make_an_address_terrible() {
    let man = AddrMan::<SocketAddr>::seeded(21);
    let src = peer(1, 1);
    let dead = v4(50, 60, 1, 1);
    assert_eq!(man.add([dead], src), 1);
    for i in 0..5u8 {
        // Another address works (the node is online) ...
        let ok = v4(70 + i, 1, 1, 1);
        man.add([ok], peer(2, 2));
        assert!(man.good(&ok));
        tokio::time::advance(Duration::from_secs(120)).await;
        // ... and the dead one fails again.
        man.attempt(&dead, true);
        tokio::time::advance(Duration::from_secs(120)).await;
    }
    // Five failures, none recent: Core calls it terrible. A flood from the
    // same source into the same group lands in the same new bucket and
    // covers all 64 places; a terrible occupant gives its place up.
    for c in 0..=255u8 {
        for d in 1..=4u8 {
            man.add([v4(50, 60, c, d)], src);
        }
    }
    man.check().expect("invariants");
    assert!(
        !man.contains(&dead),
        "an address that failed 5 times (never worked, other addresses did) \
         is still not terrible: it kept its place against a flood; {:?}",
        man.stats()
    );
}

/// A table saved with `admit_local` (regtest, tests) and loaded by a node
/// that does not admit local addresses: `load` turns `admit_local` on
/// while it restores, so loopback, private and `0.0.0.0` come back and are
/// selected for dialing, though `add` would refuse every one of them.
#[test]
fn attack_load_brings_back_unroutable_addresses() {
    let path = temp_dir().join("peers.dat");
    let regtest = AddrMan::<SocketAddr>::seeded(22).admit_local(true);
    let bad: Vec<SocketAddr> = ["0.0.0.0:8333", "127.0.0.1:18444", "10.0.0.1:8333"]
        .iter()
        .map(|s| s.parse().expect("addr"))
        .collect();
    for a in &bad {
        regtest.add([*a], Source::User);
    }
    assert!(!regtest.is_empty());
    regtest.save(&path, &[]).expect("save");

    let (man, _) = AddrMan::<SocketAddr>::load(&path, false).expect("load");
    // admit_local is off on the loaded table (the default).
    let fresh = AddrMan::<SocketAddr>::seeded(22);
    assert_eq!(fresh.add(bad.iter().copied(), Source::User), 0);
    let held: Vec<_> = bad.iter().filter(|a| man.contains(a)).collect();
    assert!(
        held.is_empty() && man.select().is_none(),
        "loaded table without admit_local holds {held:?} and selects {:?}",
        man.select()
    );
}

// ===== the manager's in-use set =====

/// A dialer that maps every address to `target` (loopback); the dials
/// numbered in `hang` never finish.
fn mapping_dialer(
    target: SocketAddr,
    calls: Arc<AtomicUsize>,
    hang: fn(usize) -> bool,
) -> impl tower::Service<
    SocketAddr,
    Response = tokio::net::TcpStream,
    Error = std::io::Error,
    Future = futures_util::future::BoxFuture<'static, std::io::Result<tokio::net::TcpStream>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_addr: SocketAddr| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let fut: futures_util::future::BoxFuture<'static, _> = Box::pin(async move {
            if hang(n) {
                std::future::pending::<()>().await;
            }
            tokio::net::TcpStream::connect(target).await
        });
        fut
    })
}

/// An automatic dial cancelled while pending (`remove`, or a `ban` of its
/// subnet) ends without telling the address manager: the
/// address stays "in use" forever, and the node never dials it again.
#[tokio::test(start_paused = true)]
async fn attack_cancelled_automatic_dial_leaks_address() {
    let honest = HoldingPeer::start().await;
    let x = v4(8, 8, 8, 8);
    let man = AddrMan::<SocketAddr>::seeded(23);
    man.add([x], Source::User);
    let calls = Arc::new(AtomicUsize::new(0));
    let (_held, on_connection) = keep();
    let handle =
        Builder::<SocketAddr, _>::new(mapping_dialer(honest.addr, calls.clone(), |n| n == 0))
            .target_outbound(1)
            .address_manager(man.clone())
            .on_connection(on_connection)
            .start()
            .expect("start");
    until("the first dial", || calls.load(Ordering::SeqCst) == 1).await;
    let snap = handle.snapshot().await.expect("snapshot");
    let id = snap
        .entries
        .iter()
        .find(|e| e.info.addr == x && e.info.kind == ConnKind::Automatic)
        .map(|e| e.info.id)
        .expect("the automatic dial");
    handle.remove(id).await.expect("remove");
    // Ten minutes: the only address is free again and works.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let (dials, up) = (calls.load(Ordering::SeqCst), honest.accepted());
    handle.stop().await;
    assert!(
        dials >= 2 && up == 1,
        "after a cancelled dial the only address was never dialled again in 10 min: \
         {dials} dials, {up} connections; table {:?}",
        man.stats()
    );
}

/// `stop` aborts pending automatic dials without telling the address
/// manager; a manager started again on the same `AddrMan` (a restart in
/// the process) never dials those addresses.
#[tokio::test(start_paused = true)]
async fn attack_stop_leaks_pending_addresses_to_next_manager() {
    let honest = HoldingPeer::start().await;
    let x = v4(8, 8, 4, 4);
    let man = AddrMan::<SocketAddr>::seeded(24);
    man.add([x], Source::User);
    let calls = Arc::new(AtomicUsize::new(0));
    let handle =
        Builder::<SocketAddr, _>::new(mapping_dialer(honest.addr, calls.clone(), |_| true))
            .target_outbound(1)
            .address_manager(man.clone())
            .start()
            .expect("start");
    until("the first dial", || calls.load(Ordering::SeqCst) == 1).await;
    handle.stop().await;

    let calls2 = Arc::new(AtomicUsize::new(0));
    let (_held, on_connection) = keep();
    let handle =
        Builder::<SocketAddr, _>::new(mapping_dialer(honest.addr, calls2.clone(), |_| false))
            .target_outbound(1)
            .address_manager(man.clone())
            .on_connection(on_connection)
            .start()
            .expect("start again");
    tokio::time::sleep(Duration::from_secs(600)).await;
    let dials = calls2.load(Ordering::SeqCst);
    handle.stop().await;
    assert!(
        dials >= 1 && honest.accepted() == 1,
        "the restarted manager never dialled the table's only address: {dials} dials"
    );
}

// ===== seeding =====

/// A resolver that answers `name` with `ips` and never answers any other.
fn resolver(
    name: &'static str,
    ips: Vec<IpAddr>,
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
        let ips = ips.clone();
        let fut: futures_util::future::BoxFuture<'static, Result<Addrs, ResolveError>> =
            if n.as_str() == name {
                Box::pin(async move { Ok(ips) })
            } else {
                Box::pin(std::future::pending())
            };
        fut
    })
}

/// The issue: "One silent DNS seed delays all of them". The fast seed's
/// answer is in the table at once, but the fill task awaits the whole
/// seeding (the silent seed's 15 s timeout) before it takes an address: the
/// first dial still waits for the slowest seed.
#[tokio::test(start_paused = true)]
async fn attack_silent_seed_still_delays_first_dial() {
    let honest = HoldingPeer::start().await;
    let seeder = DnsSeeder::new(resolver("fast.test", vec![honest.addr.ip()]))
        .seeds(["slow.test", "fast.test"])
        .port(honest.addr.port())
        .timeout(Duration::from_secs(15));
    let man = AddrMan::<SocketAddr>::seeded(25)
        .admit_local(true)
        .seeder(seeder);
    let (_held, on_connection) = keep();
    let handle = ConnManager::builder()
        .target_outbound(1)
        .address_manager(man.clone())
        .on_connection(on_connection)
        .start()
        .expect("start");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let early = (man.len(), honest.accepted());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let late = honest.accepted();
    handle.stop().await;
    assert_eq!(
        early.1, 1,
        "3 s in: the fast seed's address is in the table ({} entries) but not dialled; \
         dialled only after the silent seed timed out ({late} connections at 18 s)",
        early.0
    );
}

// ===== the file =====

/// Two saves to one path at once (the interval's save still running when
/// `stop` saves, a slow disk, the user saving too) share one temporary
/// file `<path>.tmp`: one truncates and overwrites what the other is about
/// to rename. The file at `path` must always load; here it is sometimes
/// damaged, and a save fails.
#[test]
fn attack_concurrent_saves_break_the_file() {
    let path = temp_dir().join("peers.dat");
    let big = AddrMan::<SocketAddr>::seeded(26);
    for a in 1..=200u8 {
        for b in 0..20u8 {
            big.add([v4(a, b, 1, 1)], peer(a, 1));
        }
    }
    let small = AddrMan::<SocketAddr>::seeded(27);
    small.add([v4(8, 8, 8, 8)], Source::User);
    big.save(&path, &[]).expect("first save");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let save_errors = Arc::new(AtomicUsize::new(0));
    let savers: Vec<_> = [big, small]
        .into_iter()
        .map(|man| {
            let (path, save_errors) = (path.clone(), save_errors.clone());
            std::thread::spawn(move || {
                for _ in 0..250 {
                    if man.save(&path, &[]).is_err() {
                        save_errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match AddrMan::<SocketAddr>::load(&path, false) {
                    Ok(_) => {}
                    Err(PersistError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => bad.push(e.to_string()),
                }
            }
            bad
        })
    };
    for s in savers {
        s.join().expect("saver");
    }
    stop.store(true, Ordering::SeqCst);
    let bad = reader.join().expect("reader");
    let end = AddrMan::<SocketAddr>::load(&path, false)
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        bad.is_empty() && save_errors.load(Ordering::SeqCst) == 0 && end.is_ok(),
        "concurrent saves: {} failed saves, {} bad reads (first {:?}), final load {end:?}",
        save_errors.load(Ordering::SeqCst),
        bad.len(),
        bad.first()
    );
}

/// `load_or_new` moves whatever cannot be read aside as `<path>.bad`, even
/// when the path is no address file at all (a directory given by mistake):
/// the user's directory is renamed.
#[test]
fn attack_load_or_new_moves_a_directory_aside() {
    let dir = temp_dir().join("data");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("wallet.dat"), b"precious").expect("write");
    let (_man, _bans, err) = AddrMan::<SocketAddr>::load_or_new(&dir, false);
    assert!(err.is_some());
    assert!(
        dir.join("wallet.dat").exists(),
        "load_or_new renamed the directory {} (error {err:?})",
        dir.display()
    );
}
