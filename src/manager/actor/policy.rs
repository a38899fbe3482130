//! The manager's side of the peer policy: admitting inbound peers, evicting,
//! banning, scoring. The rules themselves are in
//! [`crate::policy::state`].

use std::{net::IpAddr, time::Duration};

use tokio::time::Instant;

use super::{Actor, lifecycle::set_state};
use crate::{
    manager::{
        Address, ConnId, ConnKind, ConnState, Connection, DialService, DisconnectReason, Error,
        Points, connection::Control, events::Event, message::Accepted,
    },
    policy::{
        NetGroup, PeerAddr, Subnet, canonical,
        state::{Admission, Place},
    },
};

impl<A: Address, D: DialService<A>> Actor<A, D> {
    /// An accept loop took a socket: admit it (an entry, then `on_accept`),
    /// evict someone for it, or close it.
    pub(super) fn on_accepted(&mut self, Accepted { stream, peer }: Accepted) {
        // Set with every listener.
        let Some(to_addr) = self.inbound_addr else {
            return;
        };
        let now = Instant::now();
        let ip = canonical(peer.ip());
        match self.peers.admission(ip, now) {
            Admission::Refuse(why) => {
                // Dropping the stream closes it, before `on_accept`.
                self.shared.inbound_rejected(why);
                tracing::debug!(%peer, reason = %why, "inbound connection refused");
                return;
            }
            Admission::Evict(group) => {
                if let Some(victim) = self.youngest_inbound(group) {
                    self.shared.evicted();
                    tracing::debug!(%peer, %victim, %group, "inbound slot full: evicting");
                    let _ = self.close(victim, DisconnectReason::Evicted);
                }
            }
            Admission::Admit => {}
        }
        let id = self.shared.next_id();
        let place = self.peers.add_inbound(ip);
        self.insert(id, to_addr(peer), ConnKind::Inbound, place);
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        set_state(&self.shared, slot, ConnState::Established);
        slot.since = Some(now);
        let control = Control::new(None);
        slot.control = Some(control.clone());
        self.shared.inbound_accepted();
        tracing::debug!(parent: &slot.span, "inbound connection accepted");
        let conn = Connection::new(
            stream,
            slot.info.clone(),
            control,
            Some(self.dropped_tx.clone()),
        );
        self.outbox.emit(Event::Accepted(conn));
    }

    /// The most recent inbound connection of `group`.
    fn youngest_inbound(&self, group: NetGroup) -> Option<ConnId> {
        self.slots
            .values()
            .filter(|s| s.place.inbound_group() == Some(group))
            .max_by_key(|s| (s.since, s.info.id))
            .map(|s| s.info.id)
    }

    /// Ends an entry at whatever stage it is, for `reason`: an established
    /// connection is closed (and never reconnected), a dial is dropped, a
    /// retry is cancelled.
    pub(super) fn close(&mut self, id: ConnId, reason: DisconnectReason) -> Result<(), Error> {
        let slot = self.slots.get_mut(&id).ok_or(Error::UnknownId(id))?;
        if slot.state == ConnState::Established {
            self.connection_ended(id, reason);
            return Ok(());
        }
        if let Some(dial) = slot.dial.take() {
            dial.abort();
            self.shared.dial_canceled();
        }
        tracing::debug!(parent: &slot.span, %reason, "request ended");
        self.end(id, ConnState::Canceled);
        Ok(())
    }

    /// Bans `subnet` and ends every entry inside it.
    pub(super) fn ban(&mut self, subnet: Subnet, duration: Duration, reason: String) {
        tracing::info!(%subnet, ?duration, %reason, "banned");
        self.peers.ban(subnet, duration, reason, Instant::now());
        self.shared.banned();
        let inside: Vec<ConnId> = self
            .slots
            .values()
            .filter(|s| s.ip().is_some_and(|ip| subnet.contains(ip)))
            .map(|s| s.info.id)
            .collect();
        for id in inside {
            let _ = self.close(id, DisconnectReason::Banned);
        }
    }

    /// Adds to an entry's ban score; past the threshold its IP is banned
    /// (an address without an IP is closed). Returns the score, decayed.
    pub(super) fn misbehaving(
        &mut self,
        id: ConnId,
        points: Points,
        reason: String,
    ) -> Result<u32, Error> {
        let slot = self.slots.get_mut(&id).ok_or(Error::UnknownId(id))?;
        let score = slot.score.get_or_insert_default().increase(
            points.persistent,
            points.transient,
            Instant::now(),
        );
        let threshold = self.peers.policy().ban_threshold;
        tracing::debug!(parent: &slot.span, score, threshold, %reason, "misbehaving");
        if score >= threshold {
            match slot.ip() {
                Some(ip) => {
                    let duration = self.peers.policy().ban_duration;
                    self.ban(Subnet::from(ip), duration, reason);
                }
                None => self.close(id, DisconnectReason::Banned)?,
            }
        }
        Ok(score)
    }
}

impl<A: PeerAddr> super::Slot<A> {
    /// The peer's IP: an inbound peer's, or the dialed address's.
    fn ip(&self) -> Option<IpAddr> {
        match self.place {
            Place::Inbound { ip, .. } => Some(ip),
            Place::Outbound { .. } => self.info.addr.ip(),
        }
    }
}
