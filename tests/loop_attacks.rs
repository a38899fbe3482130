//! Attacks on the manager's one-pass loop (`poll_work`), the callback
//! queue's `poll_flush`, the hand-written dial future (`Attempt`) and the
//! counters written only when they change, written by a review round (#18)
//! and kept as regressions: the two budget tests failed on the first
//! `Attempt`, whose deadline was polled inside tokio's cooperative budget.
//! Real loopback sockets; paused time where the runtime is single-threaded.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use connmgr::{
    addrman::{AddrMan, Source},
    manager::{ConnClass, ConnKind, ConnManager, ConnState, DisconnectReason, Panicked},
    policy::Policy,
};
use support::{
    Gate, HoldingPeer,
    addrs::temp_dir,
    manager::{assert_counts_exact, keep, record},
    refused_addr, refused_addrs, settle, until, until_async,
};
use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tower::timeout::error::Elapsed;

/// Every test must end well within the harness's patience.
const LIMIT: Duration = Duration::from_secs(30);

/// The same, in paused time (it advances on its own while the runtime is
/// idle, so a hang reaches it at once).
const PAUSED: Duration = Duration::from_secs(3600);

/// A dial stack whose dial never completes.
fn hanging() -> impl tower::Service<
    SocketAddr,
    Response = TcpStream,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TcpStream>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: SocketAddr| std::future::pending::<std::io::Result<TcpStream>>())
}

async fn boom() -> std::io::Result<TcpStream> {
    // Pending once, then the panic: the panic is in a later poll, not in
    // the first one nor in `call`.
    tokio::task::yield_now().await;
    panic!("dial future panics in poll");
}

/// A dial stack whose future panics on its second poll, counting calls.
fn panicking(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    SocketAddr,
    Response = TcpStream,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TcpStream>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: SocketAddr| {
        calls.fetch_add(1, Ordering::SeqCst);
        boom()
    })
}

/// Spawns `n` tasks that ask the manager for `id`'s state without pause,
/// until the returned flag is set: a flood of commands.
fn flood_commands(
    handle: &connmgr::manager::Handle,
    id: connmgr::manager::ConnId,
    n: usize,
) -> (Arc<std::sync::atomic::AtomicBool>, Arc<AtomicUsize>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let (h, s, c) = (handle.clone(), stop.clone(), served.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                if h.state(id).await.is_err() {
                    break;
                }
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    (stop, served)
}

// ===================================================================
// Timers combined with other work in the same pass
// ===================================================================

/// The inactivity check (a timer handled after the retry timer in the
/// pass) closes a permanent connection and schedules its reconnect: the
/// retry timer must be armed for that new deadline in the same wake, so the
/// reconnect happens exactly at `reconnect_at`, not at the next unrelated
/// wake (the next inactivity tick, a second later).
#[tokio::test(start_paused = true)]
async fn inactivity_close_arms_reconnect_exactly() {
    tokio::time::timeout(PAUSED, async {
        let peer = HoldingPeer::start().await;
        let (b, mut ev) = record(
            ConnManager::builder()
                .inactivity_timeout(Some(Duration::from_secs(4)))
                .retry_base(Duration::from_millis(300))
                .jitter(0.0),
        );
        let handle = b.start().expect("start");
        handle.connect_permanent(peer.addr).await.expect("connect");
        let first = ev.connected.recv().await.expect("connected");
        let gone = ev.disconnected.recv().await.expect("disconnected");
        assert_eq!(gone.reason, DisconnectReason::Inactive);
        let at = gone.reconnect_at.expect("a reconnect is scheduled");
        drop(first);
        let second = ev.connected.recv().await.expect("reconnected");
        let late = Instant::now().saturating_duration_since(at);
        assert!(Instant::now() >= at, "not before its time");
        assert!(
            late < Duration::from_millis(50),
            "reconnect {late:?} after its deadline (timer not armed in the pass)"
        );
        drop(second);
        handle.stop().await;
    })
    .await
    .expect("test within its limit");
}

/// Persist, inactivity, retries and a feeler all run while a flood of
/// commands keeps the manager busy on every wake: none of them is starved.
#[tokio::test(start_paused = true)]
async fn every_timer_fires_under_command_flood() {
    tokio::time::timeout(PAUSED, async {
        let path = temp_dir().join("peers.dat");
        let peer = HoldingPeer::start_many(2).await;
        let refused = refused_addr().await;
        let man = AddrMan::<SocketAddr>::seeded(3).admit_local(true);
        man.add([peer.addrs[1]], Source::User);
        let reasons: Arc<Mutex<Vec<(ConnClass, DisconnectReason)>>> = Arc::default();
        let r = reasons.clone();
        let (held, on_connection) = keep();
        let handle = ConnManager::builder()
            .target_outbound(0)
            .address_manager(man)
            .save_to(&path, Duration::from_secs(2))
            .feelers(Some(Duration::from_secs(3)))
            .feeler_hold(Duration::from_secs(1))
            .inactivity_timeout(Some(Duration::from_secs(4)))
            .retry_base(Duration::from_secs(1))
            .retry_cap(Duration::from_secs(1))
            .jitter(0.0)
            .on_connection(on_connection)
            .on_disconnection(move |d| r.lock().expect("lock").push((d.info.class, d.reason)))
            .start()
            .expect("start");
        let retried = handle.connect_permanent(refused).await.expect("connect");
        handle
            .connect_permanent(peer.addrs[0])
            .await
            .expect("connect");
        let (stop, served) = flood_commands(&handle, retried, 16);
        let start = Instant::now();
        // 20 seconds in steps, the flood running all along.
        for _ in 0..200 {
            tokio::time::advance(Duration::from_millis(100)).await;
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        }
        assert!(Instant::now() - start >= Duration::from_secs(20));
        assert!(served.load(Ordering::SeqCst) > 100, "the flood ran");
        let c = handle.counters();
        let reasons = reasons.lock().expect("lock").clone();
        let inactive = reasons
            .iter()
            .filter(|(_, r)| *r == DisconnectReason::Inactive)
            .count();
        let feelers_done = reasons
            .iter()
            .filter(|(_, r)| *r == DisconnectReason::FeelerDone)
            .count();
        stop.store(true, Ordering::SeqCst);
        assert!(path.exists(), "saved at the interval");
        // One refused dial a second (retry cap 1 s).
        assert!(
            c.failures >= 15,
            "retries starved: {} failures in 20 s; {c:?}",
            c.failures
        );
        assert!(inactive >= 2, "inactivity starved: {reasons:?}");
        assert!(
            c.class(ConnClass::Feeler).dials >= 1 && feelers_done >= 1,
            "feelers starved: {reasons:?} {c:?}"
        );
        drop(held);
        handle.stop().await;
    })
    .await
    .expect("test within its limit");
}

/// A flood of commands from many handles does not starve the retry timer of
/// a permanent request: each retry is at its deadline, to the millisecond.
#[tokio::test(start_paused = true)]
async fn retries_on_time_under_command_flood() {
    tokio::time::timeout(PAUSED, async {
        let refused = refused_addr().await;
        let (b, mut ev) = record(
            ConnManager::builder()
                .retry_base(Duration::from_secs(1))
                .retry_cap(Duration::from_secs(1))
                .jitter(0.0),
        );
        let handle = b.start().expect("start");
        let id = handle.connect_permanent(refused).await.expect("connect");
        let (stop, _) = flood_commands(&handle, id, 32);
        let mut prev_retry: Option<Instant> = None;
        for attempt in 1..=8u32 {
            let f = loop {
                if let Ok(f) = ev.failed.try_recv() {
                    break f;
                }
                tokio::time::advance(Duration::from_millis(1)).await;
            };
            assert_eq!(f.attempt, attempt);
            if let Some(due) = prev_retry {
                let late = f.started.saturating_duration_since(due);
                assert!(
                    f.started >= due && late <= Duration::from_millis(2),
                    "attempt {attempt} started {late:?} after its retry deadline"
                );
            }
            prev_retry = f.retry_at;
        }
        stop.store(true, Ordering::SeqCst);
        handle.stop().await;
    })
    .await
    .expect("test within its limit");
}

// ===================================================================
// The dial future: timeouts, panics, exactly one result
// ===================================================================

/// A dial that never completes times out at exactly `connect_timeout`,
/// once per attempt: one failure event, with `Elapsed`, per attempt, and
/// the counters agree.
#[tokio::test(start_paused = true)]
async fn connect_timeout_fires_once_per_attempt() {
    tokio::time::timeout(PAUSED, async {
        let (b, mut ev) = record(
            ConnManager::with_dialer(hanging())
                .connect_timeout(Some(Duration::from_secs(3)))
                .retry_base(Duration::from_secs(10))
                .jitter(0.0),
        );
        let handle = b.start().expect("start");
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        handle.connect_permanent(addr).await.expect("connect");
        for attempt in 1..=3u32 {
            let f = ev.failed.recv().await.expect("failure");
            assert_eq!(f.attempt, attempt);
            assert!(f.error.is::<Elapsed>(), "{:?}", f.error);
            assert_eq!(
                Instant::now() - f.started,
                Duration::from_secs(3),
                "timed out at the limit"
            );
        }
        settle().await;
        assert!(ev.failed.try_recv().is_err(), "no second result");
        let c = handle.counters();
        assert_eq!(c.failures, 3, "{c:?}");
        assert_eq!(c.dials, 3, "{c:?}");
        handle.stop().await;
        assert_counts_exact(&handle.counters());
    })
    .await
    .expect("test within its limit");
}

/// A dial ready at the very instant of its time limit is a connection,
/// not a timeout (the dial is polled first, as tokio's `timeout` does).
#[tokio::test(start_paused = true)]
async fn dial_ready_at_deadline_is_a_connection() {
    tokio::time::timeout(PAUSED, async {
        let peer = HoldingPeer::start().await;
        let pool = Arc::new(Mutex::new(Vec::new()));
        let first = TcpStream::connect(peer.addr).await.expect("connect");
        pool.lock().expect("lock").push(first);
        let p = pool.clone();
        let dialer = tower::service_fn(move |_: SocketAddr| {
            let s = p.lock().expect("lock").pop();
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                s.ok_or_else(|| std::io::Error::other("pool empty"))
            }
        });
        let (b, mut ev) =
            record(ConnManager::with_dialer(dialer).connect_timeout(Some(Duration::from_secs(3))));
        let handle = b.start().expect("start");
        handle.connect(peer.addr).await.expect("connect");
        let conn = tokio::select! {
            c = ev.connected.recv() => c.expect("connected"),
            f = ev.failed.recv() => panic!("failed at the deadline: {:?}", f.map(|f| f.error)),
        };
        settle().await;
        assert!(ev.failed.try_recv().is_err());
        let c = handle.counters();
        assert_eq!((c.dials, c.established, c.failures), (1, 1, 0), "{c:?}");
        drop(conn);
        handle.stop().await;
    })
    .await
    .expect("test within its limit");
}

/// A one-shot dial whose future panics on a later poll, with a time limit
/// armed: one failure, `Panicked`, counted once; no timeout afterwards.
#[tokio::test(start_paused = true)]
async fn dial_panic_in_poll_is_one_failure() {
    tokio::time::timeout(PAUSED, async {
        let calls = Arc::new(AtomicUsize::new(0));
        let (b, mut ev) = record(
            ConnManager::with_dialer(panicking(calls.clone()))
                .connect_timeout(Some(Duration::from_secs(2))),
        );
        let handle = b.start().expect("start");
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let id = handle.connect(addr).await.expect("connect");
        let f = ev.failed.recv().await.expect("failure");
        assert!(f.error.is::<Panicked>(), "{:?}", f.error);
        assert_eq!(f.retry_at, None);
        // Past the time limit: nothing more.
        tokio::time::sleep(Duration::from_secs(5)).await;
        settle().await;
        assert!(ev.failed.try_recv().is_err(), "a second result");
        let c = handle.counters();
        assert_eq!((c.dials, c.failures, c.panics), (1, 1, 1), "{c:?}");
        assert_eq!(handle.state(id).await.expect("state"), ConnState::Canceled);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        handle.stop().await;
        assert_counts_exact(&handle.counters());
    })
    .await
    .expect("test within its limit");
}

/// Automatic dials that panic in poll: each feeds the failure throttle
/// exactly once, and each is one failure event.
#[tokio::test(start_paused = true)]
async fn automatic_panics_feed_throttle_once_each() {
    tokio::time::timeout(PAUSED, async {
        let calls = Arc::new(AtomicUsize::new(0));
        let addrs = refused_addrs(4).await;
        let (b, mut ev) = record(
            ConnManager::with_dialer(panicking(calls.clone()))
                .target_outbound(2)
                .max_failures(3)
                .throttle_wait(Duration::from_secs(10))
                .connect_timeout(Some(Duration::from_secs(1)))
                .address_source(support::manager::cycle(addrs)),
        );
        let handle = b.start().expect("start");
        tokio::time::sleep(Duration::from_secs(35)).await;
        settle().await;
        let c = handle.counters();
        let mut events = 0u64;
        while let Ok(f) = ev.failed.try_recv() {
            assert!(f.error.is::<Panicked>(), "{:?}", f.error);
            events += 1;
        }
        assert!(c.failures >= 3, "{c:?}");
        assert_eq!(c.panics, c.failures, "{c:?}");
        assert_eq!(events, c.failures, "one event per failure");
        assert_eq!(
            c.consecutive_failures, c.failures,
            "every automatic failure fed the throttle once: {c:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst) as u64, c.dials, "{c:?}");
        handle.stop().await;
        assert_counts_exact(&handle.counters());
    })
    .await
    .expect("test within its limit");
}

/// A request removed while its timed dial hangs gets no result at all:
/// neither a failure when the time limit passes nor a connection.
#[tokio::test(start_paused = true)]
async fn removed_during_timed_dial_gets_no_result() {
    tokio::time::timeout(PAUSED, async {
        let (b, mut ev) = record(
            ConnManager::with_dialer(hanging()).connect_timeout(Some(Duration::from_secs(3))),
        );
        let handle = b.start().expect("start");
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let id = handle.connect_permanent(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.remove(id).await.expect("remove");
        tokio::time::sleep(Duration::from_secs(10)).await;
        settle().await;
        assert!(ev.failed.try_recv().is_err(), "a result after remove");
        let c = handle.counters();
        assert_eq!((c.dials, c.failures, c.canceled), (1, 0, 1), "{c:?}");
        handle.stop().await;
        assert_counts_exact(&handle.counters());
    })
    .await
    .expect("test within its limit");
}

/// The throttle count goes back to 0 on the first automatic success after
/// failures (written only when it changes, but written).
#[tokio::test(start_paused = true)]
async fn throttle_count_resets_on_success() {
    tokio::time::timeout(PAUSED, async {
        let peer = HoldingPeer::start().await;
        let refused = refused_addrs(3).await;
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let (held, on_connection) = keep();
        let handle = ConnManager::builder()
            .target_outbound(1)
            .max_failures(100)
            .address_source(move || {
                let i = n2.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Some(if i < 3 { refused[i] } else { peer.addr }))
            })
            .on_connection(on_connection)
            .start()
            .expect("start");
        until_async("connected", || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            !held.lock().expect("lock").is_empty()
        })
        .await;
        let c = handle.counters();
        assert_eq!(c.failures, 3, "{c:?}");
        assert_eq!(c.consecutive_failures, 0, "reset by the success: {c:?}");
        handle.stop().await;
    })
    .await
    .expect("test within its limit");
}

// ===================================================================
// Backpressure: the callbacks behind (multi-thread, blocking callbacks)
// ===================================================================

/// A flood on four listeners while `on_accept` is blocked and the callback
/// queue holds one event: the manager takes no accepted socket while the
/// callbacks are behind. It may finish what it took off the accept queue
/// in the step that made it behind (at most the queue, 16), never keep
/// draining the queue as the accept loops refill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_flood_not_drained_while_behind() {
    tokio::time::timeout(LIMIT, async {
        const LISTENERS: usize = 4;
        const PEERS: usize = 400;
        let gate = Gate::default();
        let g = gate.clone();
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        let mut b = ConnManager::builder()
            .max_inbound(Some(10_000))
            .policy(Policy::new().evict_when_full(false))
            .callback_queue(1);
        let mut addrs = Vec::new();
        for _ in 0..LISTENERS {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.push(l.local_addr().expect("addr"));
            b = b.listener(l);
        }
        let handle = b
            .on_accept(move |conn| {
                g.wait();
                h.lock().expect("lock").push(conn);
            })
            .start()
            .expect("start");
        let mut clients = Vec::new();
        for i in 0..PEERS {
            clients.push(
                TcpStream::connect(addrs[i % LISTENERS])
                    .await
                    .expect("connect"),
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let taken = handle.counters().inbound_accepted;
        // One in the callback, one in the queue, one accept queue's worth
        // taken in the step that made it behind, and slack of another.
        gate.open();
        assert!(
            taken <= 1 + 1 + 16 + 16,
            "sockets admitted while the callbacks were behind: {taken}"
        );
        until_async("every peer admitted", || async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            handle.counters().inbound_accepted == PEERS as u64
        })
        .await;
        handle.stop().await;
    })
    .await
    .expect("test within its limit");
}

/// With a callback queue of one and a blocked `on_dial_failure`, automatic
/// dials stop; when the callback runs again, every failure is reported
/// (none lost in the backlog's flush), and dialing resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_of_one_backlog_flushed_none_lost() {
    tokio::time::timeout(LIMIT, async {
        let refused = refused_addrs(8).await;
        let gate = Gate::default();
        let g = gate.clone();
        let reported = Arc::new(AtomicUsize::new(0));
        let r = reported.clone();
        let handle = ConnManager::builder()
            .target_outbound(4)
            .max_failures(u32::MAX)
            .throttle_wait(Duration::from_millis(1))
            .callback_queue(1)
            .address_source(support::manager::cycle(refused))
            .on_dial_failure(move |_| {
                g.wait();
                r.fetch_add(1, Ordering::SeqCst);
            })
            .start()
            .expect("start");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stalled = handle.counters().dials;
        // One in the callback, one in the queue, the backlog (at most the
        // four in flight when it filled) and those four dials.
        assert!(
            stalled <= 1 + 1 + 4 + 4 + 4,
            "dials while blocked: {stalled}"
        );
        gate.open();
        until_async("dialing resumes", || async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            handle.counters().dials > stalled + 200
        })
        .await;
        handle.stop().await;
        let c = handle.counters();
        assert_eq!(c.failures + c.canceled, c.dials);
        until("every failure reported", || {
            reported.load(Ordering::SeqCst) as u64 == c.failures
        })
        .await;
    })
    .await
    .expect("test within its limit");
}

/// Stop while the callbacks are behind with a backlog: everything queued
/// and in the backlog reaches the callback within the grace period once the
/// callback runs again (the wait for room held from the run must not
/// swallow a place in the queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_delivers_backlog_within_grace() {
    tokio::time::timeout(LIMIT, async {
        const N: usize = 6;
        let peer = HoldingPeer::start_many(N).await;
        let gate = Gate::default();
        let g = gate.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        let handle = ConnManager::builder()
            .callback_queue(1)
            .stop_grace(Duration::from_secs(5))
            .on_connection(move |conn| {
                g.wait();
                c.fetch_add(1, Ordering::SeqCst);
                h.lock().expect("lock").push(conn);
            })
            .start()
            .expect("start");
        for a in &peer.addrs {
            handle.connect(*a).await.expect("connect");
        }
        until_async("all connected", || async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            handle.counters().established == N as u64
        })
        .await;
        // Let the manager settle on its wait for room.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let h2 = handle.clone();
        let stopping = tokio::spawn(async move { h2.stop().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.open();
        stopping.await.expect("stop");
        assert_eq!(calls.load(Ordering::SeqCst), N, "every event delivered");
        assert!(
            held.lock()
                .expect("lock")
                .iter()
                .all(|c: &connmgr::manager::Connection<TcpStream>| !c.is_closed())
        );
        assert_eq!(peer.closed(), 0);
    })
    .await
    .expect("test within its limit");
}

/// The callbacks fall behind and catch up many times in a row while
/// automatic dials and drop notices keep coming: the manager never stalls
/// for good (a lost wake-up would leave dialing stopped with the backlog
/// flushed, or the backlog never flushed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_and_back_many_times_never_stalls() {
    tokio::time::timeout(LIMIT, async {
        let peer = HoldingPeer::start_many(16).await;
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let handle = ConnManager::builder()
            .target_outbound(8)
            .callback_queue(1)
            .address_source(support::manager::cycle(peer.addrs.clone()))
            .on_connection(move |conn| {
                // Slow enough to fall behind, then dropped: a drop notice
                // and a replacement dial for each.
                std::thread::sleep(Duration::from_micros(200));
                s.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            })
            .start()
            .expect("start");
        let mut last = 0;
        for round in 0..20 {
            let before = seen.load(Ordering::SeqCst);
            let mut progressed = false;
            for _ in 0..2000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if seen.load(Ordering::SeqCst) >= before + 20 {
                    progressed = true;
                    break;
                }
            }
            let now = seen.load(Ordering::SeqCst);
            assert!(
                progressed,
                "stalled in round {round}: {now} callbacks (was {last}); {:?}",
                handle.counters()
            );
            last = now;
        }
        handle.stop().await;
        let c = handle.counters();
        assert_eq!(c.established as usize, seen.load(Ordering::SeqCst), "{c:?}");
    })
    .await
    .expect("test within its limit");
}

/// A kind check: automatic candidates refused by the policy (duplicates)
/// are counted as skips and never dialled, and the one address that is
/// free is taken (classified once, counted in its netgroup once).
#[tokio::test(start_paused = true)]
async fn duplicate_candidates_skipped_netgroup_counted_once() {
    tokio::time::timeout(PAUSED, async {
        let peer = HoldingPeer::start_many(2).await;
        let (held, on_connection) = keep();
        let handle = ConnManager::builder()
            .target_outbound(2)
            .address_source(support::manager::fixed(peer.addrs[0]))
            .on_connection(on_connection)
            .start()
            .expect("start");
        until_async("one connected", || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            held.lock().expect("lock").len() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let c = handle.counters();
        assert_eq!(peer.accepted(), 1, "no second dial to one address");
        assert!(c.skipped.total() >= 1, "{c:?}");
        let snap = handle.snapshot().await.expect("snapshot");
        assert_eq!(snap.entries.len(), 1);
        assert_eq!(snap.entries[0].info.kind, ConnKind::Automatic);
        // Dropped: the address is free again and taken again.
        held.lock().expect("lock").clear();
        until_async("reconnected", || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            peer.accepted() == 2 && held.lock().expect("lock").len() == 1
        })
        .await;
        handle.stop().await;
        assert_counts_exact(&handle.counters());
    })
    .await
    .expect("test within its limit");
}

// ===================================================================
// The dial's time limit against a dial that spends the task's budget
// ===================================================================

/// A dial stack whose future never completes and spends tokio's
/// cooperative budget on every poll (a busy handshake: always something to
/// read, never the end of it).
fn budget_spender() -> impl tower::Service<
    SocketAddr,
    Response = TcpStream,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TcpStream>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: SocketAddr| async {
        loop {
            tokio::task::consume_budget().await;
        }
    })
}

/// A dial that spends the cooperative budget on every poll still times out
/// at `connect_timeout` (tokio's `timeout` polls its timer with an
/// unconstrained budget when the inner future spent it).
#[tokio::test(start_paused = true)]
async fn connect_timeout_fires_for_budget_spending_dial() {
    tokio::time::timeout(PAUSED, async {
        let (b, mut ev) = record(
            ConnManager::with_dialer(budget_spender())
                .connect_timeout(Some(Duration::from_secs(2))),
        );
        let handle = b.start().expect("start");
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let id = handle.connect(addr).await.expect("connect");
        let start = Instant::now();
        // The dial task is always runnable, so paused time does not move on
        // its own: move it by hand, up to 10 s past the limit.
        let mut failed = None;
        for _ in 0..120 {
            tokio::time::advance(Duration::from_millis(100)).await;
            tokio::task::yield_now().await;
            if let Ok(f) = ev.failed.try_recv() {
                failed = Some(f);
                break;
            }
        }
        let waited = Instant::now() - start;
        let f = failed.unwrap_or_else(|| {
            panic!(
                "no timeout {waited:?} into a dial limited to 2 s; state {:?}, {:?}",
                "(see counters)",
                handle.counters()
            )
        });
        assert!(f.error.is::<Elapsed>(), "{:?}", f.error);
        assert_eq!(handle.state(id).await.expect("state"), ConnState::Canceled);
        handle.stop().await;
    })
    .await
    .expect("test within its limit");
}

/// The same over a real socket: the "proxy" the dial stack talks to floods
/// bytes and never sends the end of its reply; the stack reads it a byte at
/// a time, as a line-oriented handshake does. The connect timeout must
/// still end the attempt.
#[tokio::test(start_paused = true)]
async fn connect_timeout_fires_against_flooding_handshake() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(PAUSED, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = listener.local_addr().expect("addr");
        let stop_flood = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sf = stop_flood.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let sf = sf.clone();
                tokio::spawn(async move {
                    let junk = vec![b'x'; 64 * 1024];
                    while !sf.load(Ordering::SeqCst) {
                        if s.write_all(&junk).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let dialer = tower::service_fn(move |_: SocketAddr| async move {
            let mut s = TcpStream::connect(proxy).await?;
            // Read the reply line, one byte at a time.
            let mut b = [0u8; 1];
            loop {
                s.read_exact(&mut b).await?;
                if b[0] == b'\n' {
                    return Ok::<TcpStream, std::io::Error>(s);
                }
            }
        });
        let (b, mut ev) =
            record(ConnManager::with_dialer(dialer).connect_timeout(Some(Duration::from_secs(2))));
        let handle = b.start().expect("start");
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        handle.connect(addr).await.expect("connect");
        let start = Instant::now();
        let mut failed = None;
        for _ in 0..120 {
            tokio::time::advance(Duration::from_millis(100)).await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            if let Ok(f) = ev.failed.try_recv() {
                failed = Some(f);
                break;
            }
        }
        stop_flood.store(true, Ordering::SeqCst);
        let waited = Instant::now() - start;
        let f = failed.unwrap_or_else(|| {
            panic!(
                "no timeout {waited:?} into a dial limited to 2 s: {:?}",
                handle.counters()
            )
        });
        assert!(f.error.is::<Elapsed>(), "{:?}", f.error);
        handle.stop().await;
    })
    .await
    .expect("test within its limit");
}
