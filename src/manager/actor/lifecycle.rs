//! The life of a request: dialing, connected, retrying, ended.

use std::sync::Arc;

use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tower::{BoxError, ServiceExt};
use tracing::Instrument;

use super::{Actor, LONGEST_DELAY, Slot, TOMBSTONES};
use crate::manager::{
    Address, ConnId, ConnInfo, ConnKind, ConnState, Connection, DialFailure, DialService,
    Direction, DisconnectReason, Disconnected, Error,
    connection::Control,
    counters::Shared,
    dial,
    events::Event,
    fill::AutoFuture,
    message::{AutoDial, Dialed, Dropped, Io},
};
use crate::policy::state::Place;

impl<A: Address, D: DialService<A>> Actor<A, D> {
    // ===== dials =====

    /// Adds an entry to the map; `place` is what it counts for in the
    /// policy, and it is `Pending` until it connects.
    pub(super) fn insert(
        &mut self,
        id: ConnId,
        addr: A,
        kind: ConnKind,
        place: Place,
    ) -> &mut Slot<A> {
        let span = tracing::debug_span!("conn", %id, %addr, %kind);
        self.shared
            .state_changed(kind, None, Some(ConnState::Pending));
        self.slots.entry(id).or_insert(Slot {
            info: ConnInfo { id, addr, kind },
            state: ConnState::Pending,
            attempts: 0,
            retries: 0,
            started: Instant::now(),
            dial: None,
            next_attempt: None,
            since: None,
            control: None,
            place,
            score: None,
            span,
        })
    }

    /// An explicit request, if the policy allows it.
    pub(super) fn connect(&mut self, addr: A, kind: ConnKind) -> Result<ConnId, Error> {
        if let Some(existing) = self.peers.outbound_to(&addr) {
            tracing::debug!(%addr, %existing, "connection request refused: duplicate");
            return Err(Error::Duplicate(existing));
        }
        if let Some(ban) = addr
            .ip()
            .and_then(|ip| self.peers.banned(ip, Instant::now()))
        {
            tracing::debug!(%addr, %ban, "connection request refused: banned");
            return Err(Error::Banned(ban));
        }
        let id = self.shared.next_id();
        let place = self.peers.add_outbound(&addr, id, false);
        let slot = self.insert(id, addr, kind, place);
        tracing::debug!(parent: &slot.span, %kind, "connection requested");
        self.start_dial(id);
        Ok(id)
    }

    /// Dials an explicit request: its first attempt, or a retry.
    pub(super) fn start_dial(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        set_state(&self.shared, slot, ConnState::Pending);
        slot.attempts = slot.attempts.saturating_add(1);
        slot.started = Instant::now();
        tracing::debug!(parent: &slot.span, attempt = slot.attempts, "dialing");
        let fut = self.dialer.clone().oneshot(slot.info.addr.clone());
        self.spawn_dial(id, fut, |io| (io, None), false);
    }

    pub(super) fn on_auto_dial(&mut self, dial: AutoDial<A, AutoFuture<A, D>>) {
        if let Err(why) = self.peers.may_dial(&dial.addr, true, Instant::now()) {
            // Not a dial and not a failure; dropping the future frees the
            // permit for the next candidate.
            tracing::debug!(addr = %dial.addr, %why, "automatic candidate skipped");
            self.shared.skipped(why);
            return;
        }
        self.shared.candidate_taken();
        let id = self.shared.next_id();
        let place = self.peers.add_outbound(&dial.addr, id, true);
        let slot = self.insert(id, dial.addr, ConnKind::Automatic, place);
        slot.attempts = 1;
        slot.started = dial.started;
        tracing::debug!(parent: &slot.span, "dialing automatic peer");
        match dial.fut {
            Ok(fut) => self.spawn_dial(id, fut, crate::limit::Permitted::into_parts, true),
            Err(panicked) => {
                self.shared.dial_started();
                self.dial_failed(id, panicked.into());
            }
        }
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
        self.shared.dial_started();
        let task = dial::run(
            id,
            fut,
            split,
            self.connect_timeout,
            automatic,
            self.shared.clone(),
            self.results_tx.clone(),
        );
        let task = self.dials.track_future(task.instrument(slot.span.clone()));
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
        set_state(&self.shared, slot, ConnState::Established);
        slot.since = Some(Instant::now());
        let control = Control::new(permit);
        slot.control = Some(control.clone());
        self.shared.dial_established();
        if let Some(o) = &self.observer {
            o.connected(&slot.info.addr);
        }
        tracing::debug!(parent: &slot.span, "connection established");
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
        self.shared.dial_failed(&error);
        if let Some(o) = &self.observer {
            o.failed(&slot.info.addr);
        }
        let (attempt, started) = (slot.attempts, slot.started);
        tracing::debug!(parent: &slot.span, %error, attempt, "dial failed");
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
            DisconnectReason::Dropped | DisconnectReason::Disconnect
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
        let stable = slot
            .since
            .take()
            .is_some_and(|since| now.saturating_duration_since(since) >= self.stable_period);
        if stable {
            slot.retries = 0;
        }
        let delay = self.backoff.delay(slot.retries).min(LONGEST_DELAY);
        slot.retries = slot.retries.saturating_add(1);
        let at = now + delay;
        let key = self.retries.insert_at(id, at);
        slot.next_attempt = Some((at, key));
        set_state(&self.shared, slot, state);
        at
    }

    pub(super) fn on_retry_due(&mut self, id: ConnId) {
        if let Some(slot) = self.slots.get_mut(&id) {
            // The key has expired: it must not be removed again.
            slot.next_attempt = None;
            self.start_dial(id);
        }
    }

    /// Takes a request out of the map, with its timer, remembering how it
    /// ended.
    pub(super) fn end(&mut self, id: ConnId, state: ConnState) {
        if let Some(slot) = self.slots.remove(&id) {
            if let Some((_, key)) = slot.next_attempt {
                self.retries.remove(&key);
            }
            self.peers.remove(Some(&slot.info.addr), id, slot.place);
            self.shared
                .state_changed(slot.info.kind, Some(slot.state), None);
        }
        if self.ended.len() == TOMBSTONES {
            self.ended.pop_front();
        }
        self.ended.push_back((id, state));
    }
}

pub(super) fn set_state<A>(shared: &Shared, slot: &mut Slot<A>, state: ConnState) {
    shared.state_changed(slot.info.kind, Some(slot.state), Some(state));
    slot.state = state;
}
