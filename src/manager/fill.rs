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

use std::{
    collections::VecDeque,
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::FutureExt;
use tokio::{sync::mpsc, time::Instant};
use tower::{BoxError, Service};

use super::{
    Address, AddressSource, ConnClass, DialService,
    class::ClassLimit,
    counters::Shared,
    message::{AutoDial, Dropped},
};
use crate::limit::OutboundLimit;

/// A ready dial stack with the outbound permit it was made ready with.
pub(crate) type Ready<D> = (D, tokio::sync::OwnedSemaphorePermit);

/// How many candidates in a row the policy may skip before the fill task
/// waits the throttle wait.
const SKIPS_PER_ROUND: u64 = 32;

/// How many drop notices the task passes on at once.
const NOTICES: usize = 64;

/// What the fill task needs besides the address source.
pub(crate) struct Fill<A, D: Service<A>> {
    pub(crate) dialer: D,
    /// The classes with a target, in the order they are served.
    pub(crate) classes: Vec<Arc<ClassLimit>>,
    /// Anchors, dialled as block-relay connections before anything else.
    pub(crate) anchors: VecDeque<A>,
    pub(crate) tx: mpsc::Sender<AutoDial<A, Ready<D>>>,
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

    async fn fill<S: AddressSource<A>>(mut self, mut source: S) {
        let mut svcs: Vec<OutboundLimit<D>> =
            (0..self.classes.len()).map(|i| self.limited(i)).collect();
        let block_relay = self
            .classes
            .iter()
            .position(|c| c.class == ConnClass::BlockRelay);
        loop {
            // Each candidate takes a ready stack of its own to the manager:
            // the first class with a free permit, in order; only the
            // block-relay class while anchors are left.
            let only = block_relay.filter(|_| !self.anchors.is_empty());
            let (i, ready) = poll_fn(|cx| poll_any(&mut svcs, only, cx)).await;
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, wait = ?self.throttle_wait, "dial stack not ready");
                    self.shared.attempt_ended(false);
                    tokio::time::sleep(self.throttle_wait).await;
                    continue;
                }
                Err(()) => {
                    self.shared.panicked("dial stack poll_ready");
                    self.shared.attempt_ended(false);
                    svcs[i] = self.limited(i);
                    continue;
                }
            }
            let anchor = if Some(i) == block_relay {
                self.anchors.pop_front()
            } else {
                None
            };
            let addr = match anchor {
                Some(anchor) => {
                    tracing::debug!(addr = %anchor, "dialing anchor");
                    anchor
                }
                None => match self.next_candidate(&mut source).await {
                    Some(addr) => addr,
                    None => continue,
                },
            };
            let started = Instant::now();
            // The ready stack and its permit go with the candidate; the
            // limit stays, with a fresh clone of the stack, so its next
            // wait reuses what the last one allocated.
            let Some(ready) = svcs[i].take_ready(self.dialer.clone()) else {
                continue;
            };
            let dial = AutoDial {
                addr,
                started,
                svc: ready,
                class: self.classes[i].class,
            };
            if self.tx.send(dial).await.is_err() {
                return;
            }
        }
    }

    /// Waits out the throttles, then asks the source for a candidate;
    /// `None` when it had none (or panicked), after the wait that follows.
    async fn next_candidate<S: AddressSource<A>>(&mut self, source: &mut S) -> Option<A> {
        // A source that offers only candidates the policy skips (full
        // netgroups, duplicates, bans) is asked a bounded number of times,
        // then rests like a failing one.
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
        match AssertUnwindSafe(async { source.next_address().await })
            .catch_unwind()
            .await
        {
            Ok(Some(addr)) => Some(addr),
            Ok(None) => {
                tracing::debug!(wait = ?self.throttle_wait, "address source has no address");
                self.shared.no_address();
                // One wait before the next ask: this one, or the
                // throttle's at the top of the loop.
                if self.shared.consecutive_failures() < u64::from(self.max_failures) {
                    tokio::time::sleep(self.throttle_wait).await;
                }
                None
            }
            Err(_) => {
                self.shared.panicked("address source");
                self.shared.attempt_ended(false);
                // Yield, so that a source that always panics cannot
                // hold this worker until the throttle starts.
                tokio::task::yield_now().await;
                None
            }
        }
    }

    /// A fresh clone of the dial stack behind class `i`'s outbound limit.
    fn limited(&self, i: usize) -> OutboundLimit<D> {
        OutboundLimit::with_semaphore(self.dialer.clone(), self.classes[i].permits.clone())
    }
}

/// Polls the stacks in order (only stack `only`, if set) and returns the
/// first that is ready, with its readiness: an error of the stack, or
/// `Err(())` when its `poll_ready` panicked.
fn poll_any<A, D: Service<A>>(
    svcs: &mut [OutboundLimit<D>],
    only: Option<usize>,
    cx: &mut Context<'_>,
) -> Poll<(usize, Result<Result<(), BoxError>, ()>)>
where
    D::Error: Into<BoxError>,
{
    for (i, svc) in svcs.iter_mut().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| svc.poll_ready(cx))) {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(ready)) => return Poll::Ready((i, Ok(ready.map_err(Into::into)))),
            Err(_) => return Poll::Ready((i, Err(()))),
        }
    }
    Poll::Pending
}
