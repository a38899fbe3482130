//! The counters, shared by the manager's tasks and its handles, and their
//! metrics (with the `metrics` feature).
//!
//! Every task updates the counters of the work it does, once, with relaxed
//! atomics: the fill task its throttle waits and empty answers, a dial task
//! the failure count the throttle reads, the actor each dial's outcome, an
//! accept loop its accepts and rejections. A handle reads them without asking
//! the actor.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tower::BoxError;

use super::{
    ConnClass, ConnId, ConnKind, ConnState, Counters, Panicked,
    types::{DialCounts, Refusals},
};
use crate::policy::Refusal;

/// Counters and the id source.
#[derive(Debug)]
pub(crate) struct Shared {
    next_id: AtomicU64,
    dials: AtomicU64,
    failures: AtomicU64,
    established: AtomicU64,
    canceled: AtomicU64,
    throttled: AtomicU64,
    no_address: AtomicU64,
    consecutive_failures: AtomicU64,
    panics: AtomicU64,
    inbound_accepted: AtomicU64,
    rejected: RefusalCounts,
    skipped: RefusalCounts,
    /// Automatic candidates skipped in a row: the fill task reads it.
    skips_in_a_row: AtomicU64,
    evicted: AtomicU64,
    bans: AtomicU64,
    accept_errors: AtomicU64,
    /// Per class: dials, established, failures, canceled.
    classes: [[AtomicU64; 4]; 3],
}

const DIALS: usize = 0;
const ESTABLISHED: usize = 1;
const FAILURES: usize = 2;
const CANCELED: usize = 3;

/// One counter per [`Refusal`].
#[derive(Debug, Default)]
struct RefusalCounts([AtomicU64; 6]);

impl RefusalCounts {
    fn add(&self, why: Refusal) {
        let i = match why {
            Refusal::Duplicate => 0,
            Refusal::Banned => 1,
            Refusal::NetgroupFull => 2,
            Refusal::IpFull => 3,
            Refusal::InboundFull => 4,
            Refusal::Discouraged => 5,
        };
        self.0[i].fetch_add(1, Relaxed);
    }

    fn load(&self) -> Refusals {
        let [duplicate, banned, netgroup, ip, full, discouraged] =
            self.0.each_ref().map(|n| n.load(Relaxed));
        Refusals {
            duplicate,
            banned,
            netgroup,
            ip,
            full,
            discouraged,
        }
    }
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            next_id: AtomicU64::new(1),
            dials: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            established: AtomicU64::new(0),
            canceled: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            no_address: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            inbound_accepted: AtomicU64::new(0),
            rejected: RefusalCounts::default(),
            skipped: RefusalCounts::default(),
            skips_in_a_row: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            bans: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            classes: Default::default(),
        }
    }

    fn class_add(&self, class: ConnClass, which: usize) {
        self.classes[class.index()][which].fetch_add(1, Relaxed);
    }

    pub(crate) fn next_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Relaxed))
    }

    pub(crate) fn counters(&self) -> Counters {
        let rejected = self.rejected.load();
        Counters {
            dials: self.dials.load(Relaxed),
            failures: self.failures.load(Relaxed),
            established: self.established.load(Relaxed),
            canceled: self.canceled.load(Relaxed),
            throttled: self.throttled.load(Relaxed),
            no_address: self.no_address.load(Relaxed),
            consecutive_failures: self.consecutive_failures.load(Relaxed),
            panics: self.panics.load(Relaxed),
            inbound_accepted: self.inbound_accepted.load(Relaxed),
            inbound_rejected: rejected.total(),
            rejected,
            skipped: self.skipped.load(),
            evicted: self.evicted.load(Relaxed),
            bans: self.bans.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            classes: self.classes.each_ref().map(|c| {
                let [dials, established, failures, canceled] =
                    c.each_ref().map(|n| n.load(Relaxed));
                DialCounts {
                    dials,
                    established,
                    failures,
                    canceled,
                }
            }),
        }
    }

    // ===== the failure throttle =====

    /// Consecutive failed automatic attempts.
    pub(crate) fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Relaxed)
    }

    /// Feeds the throttle with an automatic attempt's outcome. A dial task
    /// calls it *before* it drops the dial future (and with it the attempt's
    /// outbound permit), so the fill task sees the count before it can start
    /// a replacement.
    pub(crate) fn attempt_ended(&self, ok: bool) {
        if ok {
            // Written only when it changes: the line is read by the fill
            // task on another thread, and a store would take it away.
            if self.consecutive_failures.load(Relaxed) != 0 {
                self.consecutive_failures.store(0, Relaxed);
            }
        } else {
            self.consecutive_failures.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::THROTTLE_WAITS).increment(1);
    }

    pub(crate) fn no_address(&self) {
        self.no_address.fetch_add(1, Relaxed);
        self.attempt_ended(false);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::NO_ADDRESS).increment(1);
    }

    // ===== dials (the actor) =====

    pub(crate) fn dial_started(&self, class: ConnClass) {
        self.dials.fetch_add(1, Relaxed);
        self.class_add(class, DIALS);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::DIALS, "conn_class" => class.as_str()).increment(1);
    }

    pub(crate) fn dial_established(&self, class: ConnClass) {
        self.established.fetch_add(1, Relaxed);
        self.class_add(class, ESTABLISHED);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::ESTABLISHED, "conn_class" => class.as_str()).increment(1);
    }

    pub(crate) fn dial_failed(&self, class: ConnClass, error: &BoxError) {
        self.failures.fetch_add(1, Relaxed);
        self.class_add(class, FAILURES);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::DIAL_FAILURES, "class" => error_class(error), "conn_class" => class.as_str()).increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = error;
    }

    pub(crate) fn dial_canceled(&self, class: ConnClass) {
        self.canceled.fetch_add(1, Relaxed);
        self.class_add(class, CANCELED);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::CANCELED, "conn_class" => class.as_str()).increment(1);
    }

    /// A panic in user code, caught; `what` names the code.
    pub(crate) fn panicked(&self, what: &'static str) -> Panicked {
        self.panics.fetch_add(1, Relaxed);
        tracing::error!(what, "user code panicked; the manager goes on");
        #[cfg(feature = "metrics")]
        metrics::counter!(names::PANICS, "what" => what).increment(1);
        Panicked(what)
    }

    // ===== inbound =====

    pub(crate) fn inbound_accepted(&self) {
        self.inbound_accepted.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::INBOUND_ACCEPTED).increment(1);
    }

    /// An inbound peer closed before `on_accept`.
    pub(crate) fn inbound_rejected(&self, why: Refusal) {
        self.rejected.add(why);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::INBOUND_REJECTED, "reason" => why.as_str()).increment(1);
    }

    pub(crate) fn evicted(&self) {
        self.evicted.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::EVICTED).increment(1);
    }

    pub(crate) fn banned(&self) {
        self.bans.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::BANS).increment(1);
    }

    // ===== skipped candidates (the actor and the fill task) =====

    /// An automatic candidate the policy refused.
    pub(crate) fn skipped(&self, why: Refusal) {
        self.skipped.add(why);
        self.skips_in_a_row.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::SKIPPED, "reason" => why.as_str()).increment(1);
    }

    /// An automatic candidate the policy let through.
    pub(crate) fn candidate_taken(&self) {
        if self.skips_in_a_row.load(Relaxed) != 0 {
            self.skips_in_a_row.store(0, Relaxed);
        }
    }

    /// Candidates skipped since the last one taken; the fill task resets it
    /// when it waits.
    pub(crate) fn skips_in_a_row(&self) -> u64 {
        self.skips_in_a_row.load(Relaxed)
    }

    pub(crate) fn reset_skips(&self) {
        self.skips_in_a_row.store(0, Relaxed);
    }

    pub(crate) fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(names::ACCEPT_ERRORS).increment(1);
    }

    // ===== gauges =====

    /// An entry of `kind` moved from state `from` to `to` (`None`: it was
    /// created, or it ended).
    #[inline]
    pub(crate) fn state_changed(
        &self,
        (kind, class): (ConnKind, ConnClass),
        from: Option<ConnState>,
        to: Option<ConnState>,
    ) {
        gauge_moved(kind, class, from, to);
    }
}

/// Moves one connection of `kind` and `class` between the state gauges.
#[inline]
fn gauge_moved(kind: ConnKind, class: ConnClass, from: Option<ConnState>, to: Option<ConnState>) {
    #[cfg(feature = "metrics")]
    {
        let gauge = |state| metrics::gauge!(names::CONNECTIONS, "kind" => kind_label(kind), "conn_class" => class.as_str(), "state" => state_label(state));
        if let Some(from) = from {
            gauge(from).decrement(1);
        }
        if let Some(to) = to {
            gauge(to).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (kind, class, from, to);
}

/// The class of a dial error, as the `class` label of
/// [`names::DIAL_FAILURES`].
#[cfg(feature = "metrics")]
fn error_class(error: &BoxError) -> &'static str {
    use crate::{connect::ConnectError, socks::Socks5Error};
    if error.is::<tower::timeout::error::Elapsed>() {
        "timeout"
    } else if error.is::<Panicked>() {
        "panic"
    } else if let Some(e) = error.downcast_ref::<ConnectError>() {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            "refused"
        } else {
            "connect"
        }
    } else if error.is::<Socks5Error>() {
        "proxy"
    } else {
        "other"
    }
}

#[cfg(feature = "metrics")]
fn kind_label(kind: ConnKind) -> &'static str {
    match kind {
        ConnKind::Automatic => "automatic",
        ConnKind::Permanent => "permanent",
        ConnKind::OneShot => "one-shot",
        ConnKind::Inbound => "inbound",
        ConnKind::Feeler => "feeler",
    }
}

#[cfg(feature = "metrics")]
fn state_label(state: ConnState) -> &'static str {
    match state {
        ConnState::Pending => "pending",
        ConnState::Failing => "failing",
        ConnState::Canceled => "canceled",
        ConnState::Established => "established",
        ConnState::Disconnected => "disconnected",
    }
}

/// The names of the metrics the manager publishes with the `metrics`
/// feature. See the [manager docs](super#metrics) for the table.
#[cfg(feature = "metrics")]
pub mod names {
    /// Counter: dials started.
    pub const DIALS: &str = "connmgr_dials_total";
    /// Counter: outbound connections delivered to the application.
    pub const ESTABLISHED: &str = "connmgr_established_total";
    /// Counter: failed dials, by `class` (`timeout`, `refused`, `connect`,
    /// `proxy`, `panic`, `other`).
    pub const DIAL_FAILURES: &str = "connmgr_dial_failures_total";
    /// Counter: dials ended by `remove` or stop.
    pub const CANCELED: &str = "connmgr_dials_canceled_total";
    /// Counter: waits of the failure throttle.
    pub const THROTTLE_WAITS: &str = "connmgr_throttle_waits_total";
    /// Counter: times the address source had no address.
    pub const NO_ADDRESS: &str = "connmgr_no_address_total";
    /// Counter: panics caught in user code, by `what`.
    pub const PANICS: &str = "connmgr_panics_total";
    /// Counter: inbound connections accepted.
    pub const INBOUND_ACCEPTED: &str = "connmgr_inbound_accepted_total";
    /// Counter: inbound connections closed before `on_accept`, by `reason`
    /// (`banned`, `ip`, `netgroup`, `full`).
    pub const INBOUND_REJECTED: &str = "connmgr_inbound_rejected_total";
    /// Counter: automatic candidates skipped by the policy, by `reason`
    /// (`duplicate`, `banned`, `netgroup`).
    pub const SKIPPED: &str = "connmgr_candidates_skipped_total";
    /// Counter: inbound connections evicted for a newcomer.
    pub const EVICTED: &str = "connmgr_inbound_evicted_total";
    /// Counter: bans made.
    pub const BANS: &str = "connmgr_bans_total";
    /// Counter: errors from `accept`.
    pub const ACCEPT_ERRORS: &str = "connmgr_accept_errors_total";
    /// Gauge: entries of the state map by `kind` and `state`; inbound
    /// connections open, as `kind="inbound", state="established"`.
    pub const CONNECTIONS: &str = "connmgr_connections";
}
