//! Classes on the manager task: feelers, extra outbound connections and
//! anchors.

use std::{cmp::Reverse, pin::Pin};

use tokio::time::{Instant, Sleep};

use super::Actor;
use crate::manager::{
    Address, ConnClass, ConnId, ConnKind, ConnState, DialService, Error, class::exponential,
    config::Feelers,
};

/// The feeler schedule: the next feeler's time, and the one in flight.
pub(super) struct FeelerState<A> {
    config: Feelers<A>,
    next: Pin<Box<Sleep>>,
    /// The feeler being dialled or held; one at a time.
    pub(super) in_flight: Option<ConnId>,
}

impl<A> FeelerState<A> {
    pub(super) fn new(mut config: Feelers<A>) -> Self {
        let first = Instant::now() + exponential(config.interval, config.rng.f64());
        Self {
            config,
            next: Box::pin(tokio::time::sleep_until(first)),
            in_flight: None,
        }
    }

    /// How long the manager holds a feeler open.
    pub(super) fn hold(&self) -> std::time::Duration {
        self.config.hold
    }
}

/// Whether the next feeler's time has come: never without feelers.
pub(super) fn poll_feeler_due<A>(
    feelers: &mut Option<FeelerState<A>>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<()> {
    match feelers {
        Some(f) => f.next.as_mut().poll(cx),
        None => std::task::Poll::Pending,
    }
}

impl<A: Address, D: DialService<A>> Actor<A, D> {
    /// A feeler is due: the next one is scheduled, and this one dials a
    /// tried address a collision waits on, or else an address of the new
    /// table, unless a feeler is under way, the callbacks are behind, the
    /// table has nothing, or the policy refuses it.
    pub(super) fn on_feeler_due(&mut self) {
        let behind = self.outbox.is_behind();
        let Some(feelers) = self.feelers.as_mut() else {
            return;
        };
        let now = Instant::now();
        let wait = exponential(feelers.config.interval, feelers.config.rng.f64());
        feelers.next.as_mut().reset(now + wait);
        if feelers.in_flight.is_some() || behind {
            tracing::debug!(behind, "feeler skipped: one under way, or callbacks behind");
            return;
        }
        let man = &feelers.config.addrman;
        let Some(addr) = man.collision_to_test().or_else(|| man.select_new()) else {
            tracing::trace!("feeler skipped: no address to test");
            return;
        };
        let checked = match self.peers.check_dial(&addr, true, now) {
            Ok(checked) => checked,
            Err(why) => {
                tracing::debug!(%addr, %why, "feeler skipped");
                return;
            }
        };
        let id = self.shared.next_id();
        feelers.in_flight = Some(id);
        let place = self.peers.add_checked(checked, id);
        let slot = self.insert(id, addr, (ConnKind::Feeler, ConnClass::Feeler), place, now);
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, "dialing feeler");
        // Dialled like an explicit request: no permit, no throttle.
        self.start_dial(id);
    }

    pub(super) fn extra_outbound(&mut self, class: ConnClass) -> Result<(), Error> {
        // Only classes the fill task keeps at a target (with a source).
        let limit = self
            .limits
            .iter()
            .find(|l| l.class == class)
            .filter(|_| self.auto.is_some())
            .ok_or(Error::NoTarget(class))?;
        if !limit.add_extra() {
            return Err(Error::ExtraPending(class));
        }
        tracing::debug!(%class, "one extra outbound connection allowed");
        Ok(())
    }

    /// The established automatic connection of `class` whose last block is
    /// oldest (never is oldest), the youngest among equals.
    pub(super) fn drop_candidate(&self, class: ConnClass) -> Option<ConnId> {
        self.slots
            .values()
            .filter(|s| {
                s.info.kind == ConnKind::Automatic
                    && s.info.class == class
                    && s.state == ConnState::Established
            })
            .min_by_key(|s| {
                let last_block = s.extra.as_ref().and_then(|e| e.last_block);
                (last_block, Reverse(s.at), Reverse(s.info.id))
            })
            .map(|s| s.info.id)
    }

    /// Records the established block-relay connections as the anchors of
    /// the address manager, to be saved with it.
    pub(super) fn save_anchors(&self) {
        let Some((man, max)) = &self.anchors else {
            return;
        };
        let anchors: Vec<A> = self
            .slots
            .values()
            .filter(|s| {
                s.info.kind == ConnKind::Automatic
                    && s.info.class == ConnClass::BlockRelay
                    && s.state == ConnState::Established
            })
            .take(*max)
            .map(|s| s.info.addr.clone())
            .collect();
        tracing::debug!(anchors = anchors.len(), "anchors recorded");
        man.set_anchors(anchors);
    }
}
