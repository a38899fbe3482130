//! The fill task: keeps the automatic outbound connections at the target.
//!
//! The target *is* an [`OutboundLimit`] around the dial stack. The task waits
//! for a free permit (the stack's `poll_ready`), waits out the failure
//! throttle, asks the address source for an address, and hands the address
//! with the ready stack to the manager task. The manager checks the policy
//! first: a candidate it refuses is dropped with its permit and never
//! reaches the stack's `call`; one it takes gets an entry and a dial task,
//! which calls the stack. The permit travels with the dial into the
//! connection and comes back when the connection is dropped, which wakes
//! this task for the replacement. No message is added per dial: the
//! candidate goes to the manager as the started dial did before.
//!
//! User code runs here (the source, the stack's `poll_ready`); a panic in it
//! costs one failed attempt, never the task.
//!
//! The drop notices of automatic connections come here first, and are
//! passed on to the manager at once, even while the source or the stack is
//! busy. A drop so wakes one task, and the chain it starts (this task, then
//! the manager, then the new dial task) stays on one worker thread: tokio
//! runs a chain of three woken tasks on the thread that woke them, and
//! every longer chain, or a task that wakes two, sends one of them to the
//! other worker and wakes that thread (`churn --target 1` measures it).

use std::{future::Future, panic::AssertUnwindSafe, pin::Pin, sync::Arc, time::Duration};

use futures_util::FutureExt;
use tokio::{
    sync::{Semaphore, mpsc},
    time::Instant,
};
use tower::{BoxError, Service, ServiceExt};

use super::{
    Address, AddressSource, DialService,
    counters::Shared,
    message::{AutoDial, Dropped},
};
use crate::limit::OutboundLimit;

/// How many candidates in a row the policy may skip before the fill task
/// waits the throttle wait.
const SKIPS_PER_ROUND: u64 = 32;

/// How many drop notices the task passes on at once.
const NOTICES: usize = 64;

/// What the fill task needs besides the address source.
pub(crate) struct Fill<A, D: Service<A>> {
    pub(crate) dialer: D,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) tx: mpsc::Sender<AutoDial<A, OutboundLimit<D>>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) throttle_wait: Duration,
    pub(crate) max_failures: u32,
}

/// The drop notices of automatic connections, on their way to the manager.
/// Unbounded, yet bounded by the target: one notice per automatic
/// connection, and a replacement needs this task, which passes every notice
/// on before it dials.
pub(crate) struct Relay {
    pub(crate) notices: mpsc::UnboundedReceiver<Dropped>,
    pub(crate) manager: mpsc::UnboundedSender<Dropped>,
}

/// The fill task with its address source, boxed so that the configuration
/// need not name the source's type.
pub(crate) type FillTask<A, D> =
    Box<dyn FnOnce(Fill<A, D>, Relay) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Boxes the fill task for `source`.
pub(crate) fn task<A: Address, D: DialService<A>, S: AddressSource<A>>(
    source: S,
) -> FillTask<A, D> {
    Box::new(move |fill, relay| Box::pin(fill.run(source, relay)))
}

impl<A: Address, D: DialService<A>> Fill<A, D> {
    /// Fills, and passes drop notices on before anything else. Ends when the
    /// manager is gone.
    async fn run<S: AddressSource<A>>(self, source: S, mut relay: Relay) {
        let fill = self.fill(source);
        tokio::pin!(fill);
        let (mut notices, mut open) = (Vec::with_capacity(NOTICES), true);
        loop {
            tokio::select! {
                biased;
                n = relay.notices.recv_many(&mut notices, NOTICES), if open => {
                    open = n > 0;
                    for notice in notices.drain(..) {
                        if relay.manager.send(notice).is_err() {
                            return;
                        }
                    }
                }
                () = &mut fill => return,
            }
        }
    }

    async fn fill<S: AddressSource<A>>(self, mut source: S) {
        let mut svc = self.limited();
        loop {
            // Each candidate takes a ready stack of its own to the manager.

            let ready = AssertUnwindSafe(svc.ready()).catch_unwind().await;
            let ready = ready.map(|r| r.map(drop).map_err(Into::<BoxError>::into));
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, wait = ?self.throttle_wait, "dial stack not ready");
                    self.shared.attempt_ended(false);
                    tokio::time::sleep(self.throttle_wait).await;
                    continue;
                }
                Err(_) => {
                    self.shared.panicked("dial stack poll_ready");
                    self.shared.attempt_ended(false);
                    svc = self.limited();
                    continue;
                }
            }
            // A source that offers only candidates the policy skips (full
            // netgroups, duplicates, bans) is asked a bounded number of
            // times, then rests like a failing one.
            if self.shared.skips_in_a_row() >= SKIPS_PER_ROUND {
                self.shared.reset_skips();
                self.shared.throttled();
                tracing::debug!(wait = ?self.throttle_wait, "only skipped candidates: waiting");
                tokio::time::sleep(self.throttle_wait).await;
            }
            if self.shared.consecutive_failures() >= u64::from(self.max_failures) {
                self.shared.throttled();
                tracing::debug!(
                    failures = self.shared.consecutive_failures(),
                    wait = ?self.throttle_wait,
                    "failure throttle: waiting before the next automatic dial"
                );
                tokio::time::sleep(self.throttle_wait).await;
            }
            let addr = match AssertUnwindSafe(async { source.next_address().await })
                .catch_unwind()
                .await
            {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    tracing::debug!(wait = ?self.throttle_wait, "address source has no address");
                    self.shared.no_address();
                    // One wait before the next ask: this one, or the
                    // throttle's at the top of the loop.
                    if self.shared.consecutive_failures() < u64::from(self.max_failures) {
                        tokio::time::sleep(self.throttle_wait).await;
                    }
                    continue;
                }
                Err(_) => {
                    self.shared.panicked("address source");
                    self.shared.attempt_ended(false);
                    // Yield, so that a source that always panics cannot
                    // hold this worker until the throttle starts.
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let started = Instant::now();
            // The ready stack (holding its permit) goes with the candidate;
            // the next round starts from a fresh clone.
            let ready = std::mem::replace(&mut svc, self.limited());
            let dial = AutoDial {
                addr,
                started,
                svc: ready,
            };
            if self.tx.send(dial).await.is_err() {
                return;
            }
        }
    }

    /// A fresh clone of the dial stack behind the outbound limit.
    fn limited(&self) -> OutboundLimit<D> {
        OutboundLimit::with_semaphore(self.dialer.clone(), self.permits.clone())
    }
}
