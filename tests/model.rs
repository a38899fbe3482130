//! A model-based property test of the manager: random sequences of
//! requests, removals, disconnects, owner drops, dial outcomes (success,
//! error, hang, panic), time steps and stops, against an in-memory dial
//! stack under paused time, checked after every step against a small
//! reference model of what must hold.
//!
//! CI runs 1 000 cases. For more: `PROPTEST_CASES=100000 cargo test
//! --release --test model`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use connmgr::manager::{ConnId, ConnKind, ConnManager, ConnState, Connection, Error};
use proptest::prelude::*;
use tokio::{
    io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf},
    sync::mpsc,
};

const TARGET: usize = 3;

/// What the next dials do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Connect,
    Fail,
    Hang,
    Panic,
}

#[derive(Clone, Debug)]
enum Op {
    Connect(u8),
    ConnectPermanent(u8),
    Remove(usize),
    Disconnect(usize),
    OwnerDrop(usize),
    Dials(Outcome),
    Advance(u64),
    Stop { close: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        3 => Just(Outcome::Connect),
        2 => Just(Outcome::Fail),
        1 => Just(Outcome::Hang),
        1 => Just(Outcome::Panic),
    ];
    prop_oneof![
        3 => (0u8..4).prop_map(Op::Connect),
        3 => (0u8..4).prop_map(Op::ConnectPermanent),
        2 => (0usize..8).prop_map(Op::Remove),
        2 => (0usize..8).prop_map(Op::Disconnect),
        3 => (0usize..8).prop_map(Op::OwnerDrop),
        2 => outcome.prop_map(Op::Dials),
        3 => (1u64..40_000).prop_map(Op::Advance),
        1 => any::<bool>().prop_map(|close| Op::Stop { close }),
    ]
}

/// The in-memory stream: counts itself while alive.
struct Counted {
    io: DuplexStream,
    live: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The dial stack: does what `mode` says, and counts the streams it made.
#[derive(Clone)]
struct Memory {
    mode: Arc<Mutex<Outcome>>,
    live: Arc<AtomicUsize>,
}

impl tower::Service<SocketAddr> for Memory {
    type Response = Counted;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Counted>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: SocketAddr) -> Self::Future {
        let mode = *self.mode.lock().expect("mode");
        let live = self.live.clone();
        Box::pin(async move {
            match mode {
                Outcome::Connect => {
                    let (io, peer) = tokio::io::duplex(64);
                    // The peer end lives as long as the connection.
                    std::mem::forget(peer);
                    live.fetch_add(1, Ordering::SeqCst);
                    Ok(Counted { io, live })
                }
                Outcome::Fail => Err(std::io::ErrorKind::ConnectionRefused.into()),
                Outcome::Hang => std::future::pending().await,
                Outcome::Panic => panic!("a buggy dial future"),
            }
        })
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + u16::from(i)))
}

/// Lets every task run until nothing is left to do now, without letting
/// paused time move.
async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// What the test knows: the connections it holds (the application's side)
/// and the requests it made.
#[derive(Default)]
struct Model {
    held: BTreeMap<ConnId, Connection<Counted>>,
    requests: Vec<(ConnId, ConnKind)>,
    removed: BTreeSet<ConnId>,
    delivered: u64,
    failed: u64,
    stopped: bool,
}

async fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mode = Arc::new(Mutex::new(Outcome::Connect));
    let live = Arc::new(AtomicUsize::new(0));
    let dialer = Memory {
        mode: mode.clone(),
        live: live.clone(),
    };
    let (conn_tx, mut connected) = mpsc::unbounded_channel();
    let (fail_tx, mut failed) = mpsc::unbounded_channel();
    let mut next = 0u8;
    let handle = ConnManager::with_dialer(dialer)
        .target_outbound(TARGET)
        .retry_base(Duration::from_secs(1))
        .retry_cap(Duration::from_secs(30))
        .max_failures(4)
        .connect_timeout(Some(Duration::from_secs(10)))
        .stop_grace(Duration::from_secs(1))
        .address_source(move || {
            next = next.wrapping_add(1);
            std::future::ready(Some(addr(4 + next % 8)))
        })
        .on_connection(move |c| {
            let _ = conn_tx.send(c);
        })
        .on_dial_failure(move |f| {
            let _ = fail_tx.send(f.info.id);
        })
        .start()
        .expect("start");
    let mut m = Model::default();

    for op in ops {
        match op {
            Op::Connect(i) | Op::ConnectPermanent(i) => {
                let permanent = matches!(op, Op::ConnectPermanent(_));
                let asked = if permanent {
                    handle.connect_permanent(addr(i)).await
                } else {
                    handle.connect(addr(i)).await
                };
                match asked {
                    Ok(id) => {
                        let kind = if permanent {
                            ConnKind::Permanent
                        } else {
                            ConnKind::OneShot
                        };
                        m.requests.push((id, kind));
                    }
                    // One request per address: a second is refused,
                    // naming the first.
                    Err(Error::Duplicate(first)) => {
                        prop_assert!(!m.stopped);
                        prop_assert!(m.requests.iter().any(|(id, _)| *id == first));
                    }
                    Err(e) => prop_assert!(m.stopped && e == Error::Stopped, "{e}"),
                }
            }
            Op::Remove(k) | Op::Disconnect(k) => {
                let Some(&(id, _)) = m.requests.get(k) else {
                    continue;
                };
                let result = if matches!(op, Op::Remove(_)) {
                    let r = handle.remove(id).await;
                    if r.is_ok() {
                        m.removed.insert(id);
                    }
                    r
                } else {
                    handle.disconnect(id).await
                };
                if let Err(e) = result {
                    prop_assert!(
                        matches!(
                            e,
                            Error::UnknownId(_) | Error::NotEstablished(..) | Error::Stopped
                        ),
                        "{e}"
                    );
                    prop_assert!(m.stopped || e != Error::Stopped);
                }
            }
            Op::OwnerDrop(k) => {
                let id = m.held.keys().nth(k % m.held.len().max(1)).copied();
                if let Some(id) = id {
                    m.held.remove(&id);
                }
            }
            Op::Dials(outcome) => *mode.lock().expect("mode") = outcome,
            Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
            Op::Stop { close } => {
                if close {
                    handle.stop_and_close().await;
                } else {
                    handle.stop().await;
                }
                m.stopped = true;
            }
        }
        settle().await;
        check(&handle, &mut m, &mut connected, &mut failed, &live).await?;
    }

    // Once dials succeed again, the automatic target is filled.
    if !m.stopped {
        *mode.lock().expect("mode") = Outcome::Connect;
        for _ in 0..8 {
            tokio::time::advance(Duration::from_secs(11)).await;
            settle().await;
        }
        check(&handle, &mut m, &mut connected, &mut failed, &live).await?;
        let snap = handle.snapshot().await.expect("snapshot");
        prop_assert_eq!(snap.established(ConnKind::Automatic), TARGET);
        handle.stop().await;
        m.stopped = true;
        check(&handle, &mut m, &mut connected, &mut failed, &live).await?;
    }
    Ok(())
}

/// The invariants, after a step.
async fn check(
    handle: &connmgr::manager::Handle,
    m: &mut Model,
    connected: &mut mpsc::UnboundedReceiver<Connection<Counted>>,
    failed: &mut mpsc::UnboundedReceiver<ConnId>,
    live: &AtomicUsize,
) -> Result<(), TestCaseError> {
    while let Ok(conn) = connected.try_recv() {
        prop_assert!(!m.stopped, "no callback after stop returned");
        m.delivered += 1;
        let previous = m.held.insert(conn.id(), conn);
        prop_assert!(previous.is_none() || previous.is_some_and(|p| p.is_closed()));
    }
    while let Ok(_id) = failed.try_recv() {
        prop_assert!(!m.stopped, "no callback after stop returned");
        m.failed += 1;
    }
    // Connections the manager closed are the owner's to drop.
    m.held.retain(|_, c| !c.is_closed());

    let c = handle.counters();
    prop_assert_eq!(c.established, m.delivered, "counters match the events");
    prop_assert_eq!(c.failures, m.failed, "counters match the events");
    prop_assert!(c.established + c.failures + c.canceled <= c.dials);

    if m.stopped {
        prop_assert!(handle.is_stopped());
        prop_assert_eq!(c.established + c.failures + c.canceled, c.dials);
        // Every stream still open is one the application holds.
        prop_assert_eq!(live.load(Ordering::SeqCst), m.held.len());
        return Ok(());
    }
    let snap = handle.snapshot().await.expect("snapshot");
    prop_assert!(snap.established(ConnKind::Automatic) <= TARGET);
    // Each established entry has exactly one open connection, and each open
    // connection one established entry.
    let established: BTreeSet<ConnId> = snap
        .entries
        .iter()
        .filter(|e| e.state == ConnState::Established)
        .map(|e| e.id())
        .collect();
    let held: BTreeSet<ConnId> = m.held.keys().copied().collect();
    prop_assert_eq!(established, held);
    // Never two outbound requests to one address.
    let addrs: BTreeSet<SocketAddr> = snap.entries.iter().map(|e| e.info.addr).collect();
    prop_assert_eq!(addrs.len(), snap.entries.len(), "no duplicate address");
    for id in &m.removed {
        prop_assert!(snap.get(*id).is_none(), "removed {id} is gone");
    }
    // Permanent requests never end unless removed.
    for (id, kind) in &m.requests {
        if *kind == ConnKind::Permanent && !m.removed.contains(id) {
            prop_assert!(snap.get(*id).is_some(), "permanent {id} is live");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The manager's promises hold after every step of any sequence.
    #[test]
    fn manager_matches_model(ops in proptest::collection::vec(op(), 1..30)) {
        // The dial stack panics on purpose; keep the output readable.
        std::panic::set_hook(Box::new(|_| {}));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(run_case(ops))?;
    }
}
