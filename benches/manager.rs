//! The manager's own per-event overhead, without sockets.
//!
//! - `manager/command_round_trip`: `Handle::state` on a running manager: one
//!   command to the manager task and its reply.
//! - `manager/snapshot_100`: `Handle::snapshot` of a state map of 100 entries.
//! - `manager/fill_loop_step`: one turn of the fill loop with an in-memory
//!   dial stack (tokio `duplex` streams): an automatic connection is dropped,
//!   its permit returns, the fill task dials a replacement, the manager
//!   registers it and hands it to `on_connection`.
//! - `baseline/oneshot_round_trip`: the raw tokio work a command is built
//!   from (an mpsc send to a task and a oneshot reply), in the same run.
//! - `unused/instrumentation_per_connection` and `unused/nothing`: the
//!   pair that shows what tracing (and, with the `metrics` feature, the
//!   metrics) cost when no subscriber and no recorder is installed: the
//!   calls the manager makes for one automatic connection (a span with its
//!   fields, four events in it, an instrumented future; the counters and
//!   gauge moves), against an empty loop. Compare with `fill_loop_step`.
//!
//! Each loop runs as a task on a 2-worker runtime, as application code does.
//!
//! Run with: `cargo bench --bench manager`
#![allow(missing_docs)]

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use std::{future::Future, hint::black_box, time::Instant};

use connmgr::manager::{Builder, ConnManager};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::{io::DuplexStream, sync::mpsc};

fn memory_dialer() -> impl tower::Service<
    SocketAddr,
    Response = DuplexStream,
    Error = Infallible,
    Future = std::future::Ready<Result<DuplexStream, Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_addr: SocketAddr| std::future::ready(Ok(tokio::io::duplex(64).0)))
}

/// A manager with an in-memory dial stack and `n` explicit connections.
async fn connected(
    addr: SocketAddr,
    n: usize,
    permanent: bool,
) -> (
    connmgr::manager::Handle,
    Vec<connmgr::manager::Connection<DuplexStream>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = Builder::<SocketAddr, _>::new(memory_dialer())
        .on_connection(move |c| {
            let _ = tx.send(c);
        })
        .start()
        .expect("start");
    let mut conns = Vec::new();
    for i in 0..n {
        // One request per address: the manager refuses duplicates.
        let addr = SocketAddr::new(addr.ip(), addr.port() + i as u16);
        if permanent {
            handle.connect_permanent(addr).await.expect("connect");
        } else {
            handle.connect(addr).await.expect("connect");
        }
        conns.push(rx.recv().await.expect("connected"));
    }
    (handle, conns)
}

/// Runs a timed loop as a task of the runtime, as application code would.
fn in_runtime<F>(rt: &tokio::runtime::Runtime, fut: F) -> Duration
where
    F: Future<Output = Duration> + Send + 'static,
{
    rt.block_on(async move { tokio::spawn(fut).await.expect("bench task") })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let addr: SocketAddr = "127.0.0.1:8333".parse().expect("addr");

    let mut group = c.benchmark_group("manager");
    group.measurement_time(Duration::from_secs(4));

    // A manager with one permanent in-memory connection to query.
    let (handle, conns) = rt.block_on(connected(addr, 1, true));
    let id = conns[0].id();
    group.bench_function("command_round_trip", |b| {
        b.iter_custom(|iters| {
            let handle = handle.clone();
            in_runtime(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(handle.state(id).await.expect("state"));
                }
                start.elapsed()
            })
        })
    });
    let big = rt.block_on(connected(addr, 100, false));
    group.bench_function("snapshot_100", |b| {
        b.iter_custom(|iters| {
            let handle = big.0.clone();
            in_runtime(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(handle.snapshot().await.expect("snapshot").entries.len());
                }
                start.elapsed()
            })
        })
    });

    let (auto, mut conns) = rt.block_on(async {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = ConnManager::with_dialer(memory_dialer())
            .target_outbound(1)
            .address_source(move || std::future::ready(Some(addr)))
            .on_connection(move |c| {
                let _ = tx.send(c);
            })
            .start()
            .expect("start");
        (handle, rx)
    });
    let first = rt.block_on(conns.recv()).expect("first connection");
    let conns = std::sync::Arc::new(tokio::sync::Mutex::new((conns, Some(first))));
    group.bench_function("fill_loop_step", |b| {
        b.iter_custom(|iters| {
            let conns = conns.clone();
            in_runtime(&rt, async move {
                let mut guard = conns.lock().await;
                let (rx, current) = &mut *guard;
                let start = Instant::now();
                for _ in 0..iters {
                    drop(current.take());
                    *current = Some(rx.recv().await.expect("replacement"));
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("baseline");
    group.measurement_time(Duration::from_secs(4));
    let (req_tx, mut req_rx) = mpsc::channel::<tokio::sync::oneshot::Sender<u64>>(64);
    rt.spawn(async move {
        while let Some(reply) = req_rx.recv().await {
            let _ = reply.send(1);
        }
    });
    group.bench_function("oneshot_round_trip", |b| {
        b.iter_custom(|iters| {
            let req_tx = req_tx.clone();
            in_runtime(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    req_tx.send(tx).await.expect("send");
                    black_box(rx.await.expect("reply"));
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    rt.block_on(async {
        handle.stop().await;
        big.0.stop().await;
        auto.stop().await;
    });
}

/// The tracing and metrics calls the manager makes for one automatic
/// connection, from its span to its end.
fn instrumentation(id: u64, addr: SocketAddr) {
    use tracing::Instrument;
    let kind = "automatic";
    let span = tracing::debug_span!("conn", %id, %addr, %kind);
    tracing::debug!(parent: &span, "dialing automatic peer");
    let fut = std::future::ready(()).instrument(span.clone());
    drop(black_box(fut));
    tracing::debug!(parent: &span, "connection established");
    tracing::debug!(%id, reason = "dropped", "connection ended");
    tracing::debug!(parent: &span, attempt = 1, "dial done");
    #[cfg(feature = "metrics")]
    {
        use connmgr::manager::metric_names as names;
        metrics::counter!(names::DIALS, "conn_class" => "full-relay").increment(1);
        metrics::counter!(names::ESTABLISHED, "conn_class" => "full-relay").increment(1);
        for state in ["pending", "established"] {
            let g = metrics::gauge!(names::CONNECTIONS, "kind" => kind, "conn_class" => "full-relay", "state" => state);
            g.increment(1);
            g.decrement(1);
        }
    }
    black_box(span);
}

fn unused(c: &mut Criterion) {
    let mut group = c.benchmark_group("unused");
    let addr: SocketAddr = "127.0.0.1:8333".parse().expect("addr");
    group.bench_function("instrumentation_per_connection", |b| {
        let mut id = 0;
        b.iter(|| {
            id += 1;
            instrumentation(black_box(id), black_box(addr));
        })
    });
    group.bench_function("nothing", |b| {
        let mut id = 0u64;
        b.iter(|| {
            id += 1;
            black_box((black_box(id), black_box(addr)));
        })
    });
    group.finish();
}

criterion_group!(benches, bench, unused);
criterion_main!(benches);
