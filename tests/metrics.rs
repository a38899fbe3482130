//! The metrics the manager publishes with the `metrics` feature, read
//! through the `metrics` crate's debugging recorder.

mod support;

use connmgr::manager::{ConnManager, metric_names as names};
use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder},
};
use support::{HoldingPeer, manager::record};
use tokio::net::{TcpListener, TcpStream};

type Entry = (
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
);

/// The value of the metric `name` with exactly these labels in one
/// snapshot (taking a snapshot resets the debugging recorder's values).
fn value(snapshot: &[Entry], kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = snapshot.iter().find(|(key, _, _, _)| {
        let k = key.key();
        key.kind() == kind
            && k.name() == name
            && k.labels().count() == labels.len()
            && labels
                .iter()
                .all(|(l, v)| k.labels().any(|x| x.key() == *l && x.value() == *v))
    });
    match found.map(|(_, _, _, v)| v) {
        Some(DebugValue::Counter(n)) => *n as f64,
        Some(DebugValue::Gauge(g)) => g.into_inner(),
        _ => 0.0,
    }
}

/// Dials, outcomes by class, connections by kind and state, and inbound
/// accepts and rejections reach the installed recorder under the documented
/// names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_published() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");

    let peer = HoldingPeer::start().await;
    let refused = support::refused_addr().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let inbound = listener.local_addr().expect("addr");
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let (b, mut ev) = record(
        ConnManager::builder()
            .max_inbound(Some(1))
            .policy(connmgr::policy::Policy::new().evict_when_full(false)),
    );
    let handle = b
        .listener(listener)
        .on_accept(move |c| {
            let _ = accepted_tx.send(c);
        })
        .start()
        .expect("start");

    handle.connect_permanent(peer.addr).await.expect("connect");
    let _conn = ev.connected.recv().await.expect("connected");
    handle.connect(refused).await.expect("connect");
    let _failure = ev.failed.recv().await.expect("refused");
    let _in = TcpStream::connect(inbound).await.expect("first inbound");
    let _held = accepted.recv().await.expect("accepted");
    let _out = TcpStream::connect(inbound).await.expect("second inbound");
    for _ in 0..1000 {
        if handle.counters().inbound_rejected > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let snapshot = snapshotter.snapshot().into_vec();
    let s = &snapshot;
    let limit = [("reason", "full")];
    assert_eq!(
        value(s, MetricKind::Counter, names::INBOUND_REJECTED, &limit),
        1.0
    );
    // Every outbound metric says the connection's class.
    let full = [("conn_class", "full-relay")];
    assert_eq!(value(s, MetricKind::Counter, names::DIALS, &full), 2.0);
    assert_eq!(
        value(s, MetricKind::Counter, names::ESTABLISHED, &full),
        1.0
    );
    let refused_class = [("class", "refused"), ("conn_class", "full-relay")];
    assert_eq!(
        value(s, MetricKind::Counter, names::DIAL_FAILURES, &refused_class),
        1.0
    );
    let permanent_up = [
        ("kind", "permanent"),
        ("conn_class", "full-relay"),
        ("state", "established"),
    ];
    assert_eq!(
        value(s, MetricKind::Gauge, names::CONNECTIONS, &permanent_up),
        1.0
    );
    let oneshot_pending = [
        ("kind", "one-shot"),
        ("conn_class", "full-relay"),
        ("state", "pending"),
    ];
    assert_eq!(
        value(s, MetricKind::Gauge, names::CONNECTIONS, &oneshot_pending),
        0.0
    );
    assert_eq!(
        value(s, MetricKind::Counter, names::INBOUND_ACCEPTED, &[]),
        1.0
    );
    let inbound_up = [
        ("kind", "inbound"),
        ("conn_class", "full-relay"),
        ("state", "established"),
    ];
    assert_eq!(
        value(s, MetricKind::Gauge, names::CONNECTIONS, &inbound_up),
        1.0
    );

    handle.stop().await;
}
