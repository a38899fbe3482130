//! The manager's API contract: configuration errors, weak handles, why a
//! connection ended, and counters that count each attempt once.

mod support;

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use connmgr::{
    backoff::InvalidBackoff,
    manager::{ConfigError, ConnKind, ConnManager, DisconnectReason, WeakHandle},
};
use support::{HoldingPeer, manager::record, settle, until_async};
use tokio::net::{TcpListener, TcpStream};

/// Configuration errors come from `start` before it looks for a runtime, so
/// a program learns of a bad option even when it builds the manager early.
#[test]
fn config_errors_before_runtime_check() {
    let zero_timeout = ConnManager::builder()
        .connect_timeout(Some(Duration::ZERO))
        .start();
    assert_eq!(zero_timeout.err(), Some(ConfigError::ZeroConnectTimeout));

    let zero_base = ConnManager::builder().retry_base(Duration::ZERO).start();
    assert_eq!(
        zero_base.err(),
        Some(ConfigError::Backoff(InvalidBackoff::ZeroBase))
    );
    let bad_cap = ConnManager::builder()
        .retry_base(Duration::from_secs(10))
        .retry_cap(Duration::from_secs(1))
        .start();
    assert_eq!(
        bad_cap.err(),
        Some(ConfigError::Backoff(InvalidBackoff::CapBelowBase))
    );
    let bad_jitter = ConnManager::builder().jitter(2.0).start();
    assert_eq!(
        bad_jitter.err(),
        Some(ConfigError::Backoff(InvalidBackoff::JitterOutOfRange))
    );
    let zero_queue = ConnManager::builder().callback_queue(0).start();
    assert_eq!(zero_queue.err(), Some(ConfigError::ZeroCallbackQueue));

    // A valid configuration gets as far as the runtime check.
    let valid = ConnManager::builder().start();
    assert_eq!(valid.err(), Some(ConfigError::NoRuntime));
}

/// A `WeakHandle` held by a callback does not keep the manager running:
/// when the application drops its last handle, the manager stops, and the
/// weak handle no longer upgrades. A strong handle held the same way would
/// keep the listener open for ever.
#[tokio::test]
async fn weak_handle_does_not_keep_manager_alive() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let weak: Arc<OnceLock<WeakHandle>> = Arc::new(OnceLock::new());
    let (tx, mut upgraded) = tokio::sync::mpsc::unbounded_channel();
    let in_callback = weak.clone();
    let handle = ConnManager::builder()
        .listener(listener)
        .on_accept(move |conn| {
            // What a callback would do: reach the manager through the weak
            // handle, for as long as it runs.
            let alive = in_callback.get().and_then(WeakHandle::upgrade).is_some();
            let _ = tx.send(alive);
            drop(conn);
        })
        .start()
        .expect("start");
    weak.set(handle.downgrade()).expect("set once");

    let _client = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(upgraded.recv().await, Some(true), "upgrades while running");

    drop(handle);
    until_async("the manager stops by itself", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    let weak = weak.get().expect("set");
    assert!(weak.upgrade().is_none(), "no upgrade after the stop");
    assert_eq!(weak.counters().inbound_accepted, 1, "counters still read");
}

/// `on_disconnection` says why each connection ended: dropped by its owner,
/// `disconnect`, `remove`, or `stop_and_close`.
#[tokio::test(start_paused = true)]
async fn disconnected_reason() {
    let peer = HoldingPeer::start().await;
    let (b, mut ev) = record(ConnManager::builder().retry_base(Duration::from_secs(1)));
    let handle = b.start().expect("start");

    let dropped = handle.connect(peer.addr).await.expect("connect");
    let conn = ev.connected.recv().await.expect("connected");
    drop(conn);
    let ended = ev.disconnected.recv().await.expect("dropped");
    assert_eq!(
        (ended.info.id, ended.reason),
        (dropped, DisconnectReason::Dropped)
    );

    let permanent = handle.connect_permanent(peer.addr).await.expect("connect");
    let _conn = ev.connected.recv().await.expect("connected");
    handle.disconnect(permanent).await.expect("disconnect");
    let ended = ev.disconnected.recv().await.expect("disconnected");
    assert_eq!(
        (ended.info.id, ended.reason),
        (permanent, DisconnectReason::Disconnect)
    );
    assert!(ended.reconnect_at.is_some(), "a permanent peer reconnects");
    let _again = ev.connected.recv().await.expect("reconnected");
    handle.remove(permanent).await.expect("remove");
    let ended = ev.disconnected.recv().await.expect("removed");
    assert_eq!(
        (ended.info.id, ended.reason, ended.reconnect_at),
        (permanent, DisconnectReason::Remove, None)
    );

    let last = handle.connect_permanent(peer.addr).await.expect("connect");
    let _held = ev.connected.recv().await.expect("connected");
    handle.stop_and_close().await;
    let ended = ev.disconnected.recv().await.expect("closed by stop");
    assert_eq!(
        (
            ended.info.id,
            ended.info.kind,
            ended.reason,
            ended.reconnect_at
        ),
        (last, ConnKind::Permanent, DisconnectReason::Stop, None)
    );
}

/// Dials that finish at the very instant of their connect timeout, on a
/// multi-thread runtime, each end once: counted once, as established or as
/// failed, and every established connection is delivered. Bounded: 1 500
/// dials or 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_race_counts_once() {
    let peers = support::closing_peers(8).await;
    let limit = Duration::from_millis(10);
    // Each dial sleeps between nothing and twice the timeout, then connects:
    // some finish well before it, some are timed out, and those that sleep
    // about as long as the timeout race it. Both outcomes happen even when
    // the machine is busy and the workers run late.
    let dialer = tower::service_fn(move |addr: std::net::SocketAddr| async move {
        tokio::time::sleep(limit.mul_f64(2.0 * fastrand::f64())).await;
        TcpStream::connect(addr).await
    });
    let delivered = Arc::new(AtomicU64::new(0));
    let seen = delivered.clone();
    let failures = Arc::new(Mutex::new(0u64));
    let failed = failures.clone();
    let handle = ConnManager::with_dialer(dialer)
        .connect_timeout(Some(limit))
        .max_failures(u32::MAX)
        .target_outbound(8)
        .address_source(support::manager::cycle(peers))
        .on_connection(move |conn| {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        })
        .on_dial_failure(move |_| {
            *failed.lock().expect("lock") += 1;
        })
        .start()
        .expect("start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while handle.counters().dials < 1_500 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.stop().await;
    let c = handle.counters();
    assert!(c.dials >= 100, "the load ran: {c:?}");
    assert!(
        c.established > 0 && c.failures > 0,
        "both outcomes happen: {c:?}"
    );
    assert_eq!(
        c.established + c.failures + c.canceled,
        c.dials,
        "each dial counted once: {c:?}"
    );
    assert!(c.canceled <= 8, "only dials in flight at stop: {c:?}");
    assert_eq!(delivered.load(Ordering::SeqCst), c.established);
    assert_eq!(*failures.lock().expect("lock"), c.failures);
    settle().await;
}
