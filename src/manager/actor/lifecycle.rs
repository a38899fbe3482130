//! The life of a request: dialing, connected, retrying, ended.

use std::sync::Arc;

use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tower::{BoxError, ServiceExt};
use tracing::Instrument;

use super::{Actor, LONGEST_DELAY, Slot, TOMBSTONES};
use crate::manager::{
    Address, ConnClass, ConnId, ConnInfo, ConnKind, ConnState, Connection, DialFailure,
    DialService, Direction, DisconnectReason, Disconnected, Error,
    class::ClassPermit,
    connection::Control,
    counters::Shared,
    dial,
    events::Event,
    fill,
    message::{AutoDial, Dialed, Dropped, Io},
};
use crate::policy::state::Place;

impl<A: Address, D: DialService<A>> Actor<A, D> {
    // ===== dials =====

    /// Adds an entry to the map; `place` is what it counts for in the
    /// policy, and it is `Pending` until it connects; `at` is now, read
    /// once by the caller.
    pub(super) fn insert(
        &mut self,
        id: ConnId,
        addr: A,
        (kind, class): (ConnKind, ConnClass),
        place: Place,
        at: Instant,
    ) -> &mut Slot<A> {
        self.shared
            .state_changed((kind, class), None, Some(ConnState::Pending));
        self.slots.entry(id).or_insert_with(|| {
            Box::new(Slot {
                info: ConnInfo {
                    id,
                    addr,
                    kind,
                    class,
                },
                state: ConnState::Pending,
                attempts: 0,
                retries: 0,
                at,
                dial: None,
                next_attempt: None,
                control: None,
                idle: (super::UNSEEN, super::UNSEEN),
                place,
                counted: class,
                extra: None,
            })
        })
    }

    /// An explicit request, if the policy allows it.
    ///
    /// A permanent request for an address that an automatic or one-shot
    /// request holds makes that request permanent; one for a host that an
    /// inbound peer holds waits, and dials once the host is free.
    pub(super) fn connect(&mut self, addr: A, kind: ConnKind) -> Result<ConnId, Error> {
        let now = Instant::now();
        // A feeler only tests the address: it gives way to a request.
        let feeler = self.peers.outbound_to(&addr).filter(|id| {
            self.slots
                .get(id)
                .is_some_and(|s| s.info.kind == ConnKind::Feeler)
        });
        if let Some(feeler) = feeler {
            tracing::debug!(%addr, %feeler, "feeler ended for a connection request");
            let _ = self.close(feeler, DisconnectReason::FeelerDone);
        }
        if let Some(existing) = self.peers.outbound_to(&addr) {
            // Only a request to this very address: one to another port or
            // form of the host is a duplicate, not the same peer.
            let upgradable = self.slots.get(&existing).is_some_and(|s| {
                matches!(s.info.kind, ConnKind::Automatic | ConnKind::OneShot)
                    && s.info.addr == addr
            });
            if kind.is_permanent() && upgradable {
                self.make_permanent(existing);
                return Ok(existing);
            }
            tracing::debug!(%addr, %existing, "connection request refused: duplicate");
            return Err(Error::Duplicate(existing));
        }
        if let Some(ban) = self.peers.banned(addr.host(), now) {
            tracing::debug!(%addr, %ban, "connection request refused: banned");
            return Err(Error::Banned(ban));
        }
        let inbound = self.peers.inbound_from(&addr);
        if let (Some(ip), false) = (inbound, kind.is_permanent()) {
            let holder = self.inbound_holder(ip);
            tracing::debug!(%addr, %holder, "connection request refused: connected inbound");
            return Err(Error::Duplicate(holder));
        }
        let id = self.shared.next_id();
        let place = self.peers.add_outbound(&addr, id, false);
        let slot = self.insert(id, addr, (kind, ConnClass::FullRelay), place, now);
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, %kind, "connection requested");
        if inbound.is_some() {
            tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, "host connected inbound: dialing when it is free");
            self.schedule_retry(id, ConnState::Pending);
        } else {
            self.start_dial(id);
        }
        Ok(id)
    }

    /// The inbound entry from `ip`.
    fn inbound_holder(&self, ip: std::net::IpAddr) -> ConnId {
        self.slots
            .values()
            .find(|s| {
                matches!(s.place, Place::Inbound { ip: from, .. }
                    if crate::policy::canonical(from) == ip)
            })
            .map_or(ConnId(0), |s| s.info.id)
    }

    /// Makes an automatic or one-shot request permanent: it no longer
    /// counts against the target or for diversity (its outbound permit is
    /// released, and the fill task dials a replacement), and it is retried
    /// and reconnected from now on.
    fn make_permanent(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        // An explicit request: full-relay, whatever class it had.
        let (old, class) = (slot.info.kind, slot.info.class);
        self.shared
            .state_changed((old, class), Some(slot.state), None);
        slot.info.kind = ConnKind::Permanent;
        slot.info.class = ConnClass::FullRelay;
        self.shared.state_changed(
            (ConnKind::Permanent, ConnClass::FullRelay),
            None,
            Some(slot.state),
        );
        slot.place = self.peers.upgrade(&slot.info.addr, slot.place);
        if let Some(control) = &slot.control {
            control.release();
        }
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, from = %old, "request made permanent");
    }

    /// Dials an explicit request: its first attempt, or a retry.
    pub(super) fn start_dial(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        set_state(&self.shared, slot, ConnState::Pending);
        slot.attempts = slot.attempts.saturating_add(1);
        slot.at = Instant::now();
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, attempt = slot.attempts, "dialing");
        let fut = self.dialer.clone().oneshot(slot.info.addr.clone());
        self.spawn_dial(id, fut, |io| (io, None), false);
    }

    pub(super) fn on_auto_dial(&mut self, dial: AutoDial<A, fill::Ready<D>>) {
        let AutoDial {
            addr,
            started,
            svc,
            class,
        } = dial;
        let checked = match self.peers.check_dial(&addr, true, Instant::now()) {
            Ok(checked) => checked,
            Err(why) => {
                // Not a dial and not a failure, and the stack never sees
                // it: dropping the ready stack frees its permit for the
                // next one.
                tracing::debug!(%addr, %why, "automatic candidate skipped");
                self.shared.skipped(why);
                if let Some(o) = &self.observer {
                    o.skipped(&addr);
                }
                return;
            }
        };
        self.shared.candidate_taken();
        let id = self.shared.next_id();
        let place = self.peers.add_checked(checked, id);
        let slot = self.insert(
            id,
            addr.clone(),
            (ConnKind::Automatic, class),
            place,
            started,
        );
        slot.attempts = 1;
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, "dialing automatic peer");
        // The stack's `call` runs on the dial task, where a panic in it is
        // one failed attempt.
        let (mut svc, permit) = svc;
        let fut = async move {
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| svc.call(addr)));
            // Not kept across the dial: the task stays small.
            drop(svc);
            match called {
                // The permit moves into the connection, as through the
                // limit's own `call`.
                Ok(fut) => crate::limit::future::ResponseFuture::new(fut, Some(permit))
                    .await
                    .map_err(Into::into),
                Err(_) => Err(BoxError::from(dial::CallPanicked)),
            }
        };
        self.spawn_dial(id, fut, crate::limit::Permitted::into_parts, true);
    }

    /// Runs the current attempt of request `id` on a dial task of its own;
    /// its one result comes back to [`on_dialed`](Self::on_dialed).
    fn spawn_dial<F, T, E>(
        &mut self,
        id: ConnId,
        fut: F,
        split: fn(T) -> Io<D::Response>,
        automatic: bool,
    ) where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: 'static,
        E: Into<BoxError> + 'static,
    {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.counted = slot.info.class;
        self.shared.dial_started(slot.counted);
        let task = dial::Attempt::new(
            id,
            fut,
            split,
            self.connect_timeout,
            automatic,
            self.dial_cx.clone(),
        );
        // A span per dial, made only when a subscriber wants it.
        let span =
            tracing::debug_span!("dial", id = %id, addr = %slot.info.addr, kind = %slot.info.kind);
        let task = self.dials.track_future(task.instrument(span));
        slot.dial = Some(tokio::spawn(task).abort_handle());
    }

    pub(super) fn on_dialed(&mut self, Dialed { id, result }: Dialed<D::Response>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            // Removed while dialing, and counted as canceled then. A
            // connection is dropped here, which closes it.
            return;
        };
        slot.dial = None;
        match result {
            Ok((io, permit)) => self.established(id, io, permit),
            Err(error) => self.dial_failed(id, error),
        }
    }

    fn established(&mut self, id: ConnId, io: D::Response, permit: Option<OwnedSemaphorePermit>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        // The permit is the class's, whatever the request is now: one made
        // permanent while it dialed gives it back here (an extra one is
        // taken back, as at any release), and holds no target slot.
        let counted = slot.counted;
        let permit = permit
            .and_then(|p| {
                let limit = self.limits.iter().find(|l| l.class == counted)?;
                Some(ClassPermit::new(p, limit.clone()))
            })
            .filter(|_| slot.info.kind == ConnKind::Automatic);
        set_state(&self.shared, slot, ConnState::Established);
        let now = Instant::now();
        slot.at = now;
        slot.idle = (super::UNSEEN, super::UNSEEN);
        let control = Control::new(permit);
        slot.control = Some(control.clone());
        self.shared.dial_established(counted);
        if let (ConnKind::Feeler, Some(feelers)) = (slot.info.kind, &self.feelers) {
            // Closed at the end of its hold, unless its owner drops it
            // first; `end` takes the timer away.
            let at = now + feelers.hold();
            slot.next_attempt = Some(at);
            self.retries.insert(at, id);
        }
        if let Some(o) = &self.observer {
            o.connected(&slot.info.addr);
        }
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, "connection established");
        // An automatic connection's drop frees a permit: the fill task
        // hears of it first.
        let notices = match (&self.auto_dropped_tx, slot.info.kind) {
            (Some(fill), ConnKind::Automatic) => fill.clone(),
            _ => self.dropped_tx.clone(),
        };
        let conn = Connection::new(io, slot.info.clone(), control, Some(notices));
        if self.wants.connections {
            self.outbox.emit(Event::Connected(conn));
        }
    }

    /// An attempt failed: a permanent request is retried after its backoff,
    /// any other ends (an automatic one is replaced by the fill task).
    fn dial_failed(&mut self, id: ConnId, error: BoxError) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        self.shared.dial_failed(slot.counted, &error);
        if let Some(o) = &self.observer {
            o.failed(&slot.info.addr);
        }
        let (attempt, started) = (slot.attempts, slot.at);
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, %error, attempt, "dial failed");
        let info = self.wants.failures.then(|| slot.info.clone());
        let retry_at = if slot.info.kind.is_permanent() {
            Some(self.schedule_retry(id, ConnState::Failing))
        } else {
            self.end(id, ConnState::Canceled);
            None
        };
        if let Some(info) = info {
            self.outbox.emit(Event::DialFailed(DialFailure {
                info,
                attempt,
                started,
                error,
                retry_at,
            }));
        }
    }

    // ===== connections =====

    pub(super) fn on_dropped(&mut self, Dropped { id, control }: Dropped) {
        // The drop has released the outbound slot, if it held one. The
        // notice of an earlier connection of the same request may come late;
        // only the current connection's owner can end it.
        let current = self.slots.get(&id).is_some_and(|s| {
            s.state == ConnState::Established
                && s.control.as_ref().is_some_and(|c| Arc::ptr_eq(c, &control))
        });
        if current {
            self.connection_ended(id, DisconnectReason::Dropped);
        }
    }

    /// An established connection ended. A permanent request is reconnected
    /// after its backoff unless it was removed or stopped; any other ends.
    pub(super) fn connection_ended(&mut self, id: ConnId, reason: DisconnectReason) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if let Some(control) = slot.control.take() {
            control.close();
        }
        if let (Some(o), Direction::Outbound) = (&self.observer, slot.info.direction()) {
            o.disconnected(&slot.info.addr);
        }
        let info = self.wants.disconnections.then(|| slot.info.clone());
        let reconnect = matches!(
            reason,
            DisconnectReason::Dropped | DisconnectReason::Disconnect | DisconnectReason::Inactive
        );
        let reconnect_at = if slot.info.kind.is_permanent() && reconnect {
            Some(self.schedule_retry(id, ConnState::Pending))
        } else {
            self.end(id, ConnState::Disconnected);
            None
        };
        tracing::debug!(%id, %reason, ?reconnect_at, "connection ended");
        if let Some(info) = info {
            self.outbox.emit(Event::Disconnected(Disconnected {
                info,
                reason,
                reconnect_at,
            }));
        }
    }

    // ===== retries =====

    /// Schedules the next attempt of a permanent request, after a failed dial
    /// or a disconnect, and puts it in `state`. The backoff starts again from
    /// the base only after a connection that stayed up for the stable period.
    fn schedule_retry(&mut self, id: ConnId, state: ConnState) -> Instant {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(&id) else {
            return now;
        };
        // Called while the connection is still marked established.
        let stable = slot.state == ConnState::Established
            && now.saturating_duration_since(slot.at) >= self.stable_period;
        if stable {
            slot.retries = 0;
        }
        let delay = self.backoff.delay(slot.retries).min(LONGEST_DELAY);
        slot.retries = slot.retries.saturating_add(1);
        // `delay` is capped, so this does not overflow; were it to, the retry
        // would be a year away, never at once.
        let year = std::time::Duration::from_secs(365 * 24 * 60 * 60);
        let at = now
            .checked_add(delay)
            .or_else(|| now.checked_add(year))
            .unwrap_or(now);
        if let Some(old) = slot.next_attempt.replace(at) {
            self.retries.remove(old, id);
        }
        self.retries.insert(at, id);
        set_state(&self.shared, slot, state);
        at
    }

    pub(super) fn on_retry_due(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        // The timer has fired: it must not be removed again.
        slot.next_attempt = None;
        if slot.info.kind == ConnKind::Feeler {
            // A feeler's hold is over.
            if slot.state == ConnState::Established {
                self.connection_ended(id, DisconnectReason::FeelerDone);
            }
            return;
        }
        if self.peers.inbound_from(&slot.info.addr).is_some() {
            // The host is still connected inbound: wait again.
            let state = slot.state;
            self.schedule_retry(id, state);
            return;
        }
        self.start_dial(id);
    }

    /// Takes a request out of the map, with its timer, remembering how it
    /// ended.
    pub(super) fn end(&mut self, id: ConnId, state: ConnState) {
        if let Some(slot) = self.slots.remove(&id) {
            if let Some(at) = slot.next_attempt {
                self.retries.remove(at, id);
            }
            self.peers.remove(&slot.info.addr, id, slot.place);
            self.shared
                .state_changed((slot.info.kind, slot.info.class), Some(slot.state), None);
            if let Some(feelers) = self.feelers.as_mut().filter(|f| f.in_flight == Some(id)) {
                feelers.in_flight = None;
            }
        }
        if self.ended.len() == TOMBSTONES {
            self.ended.pop_front();
        }
        self.ended.push_back((id, state));
    }
}

pub(super) fn set_state<A>(shared: &Shared, slot: &mut Slot<A>, state: ConnState) {
    shared.state_changed(
        (slot.info.kind, slot.info.class),
        Some(slot.state),
        Some(state),
    );
    slot.state = state;
}
