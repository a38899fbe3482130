//! The manager's side of the peer policy: admitting inbound peers, evicting,
//! banning, scoring. The rules themselves are in [`crate::policy`].

use std::time::Duration;

use tokio::time::Instant;

use super::{Actor, Extra, lifecycle::set_state};
use crate::{
    manager::{
        Address, ConnId, ConnKind, ConnState, Connection, DialService, DisconnectReason, Error,
        Points, Report, connection::Control, events::Event, message::Accepted,
    },
    policy::{
        Network, Permissions, Subnet,
        eviction::{self, Candidate},
        state::{Admission, Peer, Place, PolicyState},
    },
};

impl<A: Address, D: DialService<A>> Actor<A, D> {
    /// An accept loop took a socket: admit it (an entry, then `on_accept`),
    /// evict someone for it, or close it.
    pub(super) fn on_accepted(
        &mut self,
        Accepted {
            stream,
            peer,
            origin,
        }: Accepted,
    ) {
        // Set with every listener.
        let Some(to_addr) = self.inbound_addr else {
            return;
        };
        let now = Instant::now();
        let ip = peer.ip();
        let refuse = |this: &mut Self, why| {
            // Dropping the stream closes it, before `on_accept`.
            this.shared.inbound_rejected(why);
            tracing::debug!(%peer, reason = %why, "inbound connection refused");
        };
        match self.peers.admission(ip, origin, now) {
            Admission::Refuse(why) => return refuse(self, why),
            Admission::Evict => match self.select_to_evict() {
                Some(victim) => {
                    self.shared.evicted();
                    tracing::debug!(%peer, %victim, "inbound slots full: evicting");
                    let _ = self.close(victim, DisconnectReason::Evicted);
                }
                None => return refuse(self, crate::policy::Refusal::InboundFull),
            },
            Admission::Admit => {}
        }
        let id = self.shared.next_id();
        let place = self.peers.add_inbound(ip, origin);
        self.insert(
            id,
            to_addr(peer),
            (ConnKind::Inbound, crate::manager::ConnClass::FullRelay),
            place,
            now,
        );
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        set_state(&self.shared, slot, ConnState::Established);
        slot.at = now;
        slot.idle = (super::UNSEEN, super::UNSEEN);
        let control = Control::new(None);
        slot.control = Some(control.clone());
        self.shared.inbound_accepted();
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, "inbound connection accepted");
        let conn = Connection::new(
            stream,
            slot.info.clone(),
            control,
            Some(self.dropped_tx.clone()),
        );
        self.outbox.emit(Event::Accepted(conn));
    }

    /// The inbound peer to evict, after Core's protections (see
    /// [`eviction`]). `NOBAN` peers are never candidates.
    fn select_to_evict(&self) -> Option<ConnId> {
        let candidates = self
            .slots
            .values()
            .filter(|s| s.state == ConnState::Established)
            .filter_map(|s| {
                let Place::Inbound { ip, origin } = s.place else {
                    return None;
                };
                let peer = self.peers.inbound_peer(ip, origin);
                let perms = self.peers.permissions(&peer, origin.permissions);
                if perms.contains(Permissions::NOBAN) {
                    return None;
                }
                let extra = s.extra.as_deref();
                Some(Candidate {
                    id: s.info.id,
                    connected: s.at,
                    keyed_group: self.peers.keyed_group(peer.group),
                    network: peer.network,
                    min_ping: extra.and_then(|e| e.min_ping),
                    last_block: extra.and_then(|e| e.last_block),
                    last_tx: extra.and_then(|e| e.last_tx),
                })
            })
            .collect();
        eviction::select(candidates)
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
            self.shared.dial_canceled(slot.counted);
        }
        if let (Some(o), Place::Outbound { .. }) = (&self.observer, slot.place) {
            o.canceled(&slot.info.addr);
        }
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, %reason, "request ended");
        self.end(id, ConnState::Canceled);
        Ok(())
    }

    /// Bans `subnet` and ends every entry inside it, but `NOBAN` peers'.
    pub(super) fn ban(
        &mut self,
        subnet: Subnet,
        duration: Duration,
        reason: String,
    ) -> Result<(), Error> {
        self.peers
            .ban(subnet, duration, reason.clone(), Instant::now())
            .map_err(Error::BanListFull)?;
        tracing::info!(%subnet, ?duration, %reason, "banned");
        self.shared.banned();
        let inside = self.ids_where(|peer, perms| {
            peer.identified
                && !perms.contains(Permissions::NOBAN)
                && subnet.contains_host(peer.host)
        });
        for id in inside {
            let _ = self.close(id, DisconnectReason::Banned);
        }
        Ok(())
    }

    /// The ids of the entries whose peer and permissions match.
    fn ids_where(&self, matches: impl Fn(&Peer, Permissions) -> bool) -> Vec<ConnId> {
        self.slots
            .values()
            .filter(|s| {
                let (peer, perms) = s.peer(&self.peers);
                matches(&peer, perms)
            })
            .map(|s| s.info.id)
            .collect()
    }

    /// Adds to an entry's ban score; past the threshold the peer is
    /// punished as its network and permissions allow (see the policy
    /// docs). Returns the score, decayed.
    pub(super) fn misbehaving(
        &mut self,
        id: ConnId,
        points: Points,
        reason: String,
    ) -> Result<u32, Error> {
        let slot = self.slots.get_mut(&id).ok_or(Error::UnknownId(id))?;
        let now = Instant::now();
        let score = slot.extra.get_or_insert_default().score.increase(
            points.persistent,
            points.transient,
            now,
        );
        let threshold = self.peers.policy().ban_threshold;
        tracing::debug!(id = %slot.info.id, addr = %slot.info.addr, score, threshold, %reason, "misbehaving");
        if score < threshold {
            return Ok(score);
        }
        let (peer, perms) = slot.peer(&self.peers);
        if perms.contains(Permissions::NOBAN) || slot.info.kind.is_permanent() {
            tracing::info!(id = %slot.info.id, addr = %slot.info.addr, score, %reason, "misbehaving peer kept: noban or permanent");
            return Ok(score);
        }
        let discourage = peer.identified && peer.network != Network::Local;
        if discourage {
            tracing::info!(id = %slot.info.id, addr = %slot.info.addr, host = %peer.host, %reason, "misbehaving: host discouraged");
            self.peers.discourage(peer.host, now);
            self.shared.banned();
            // Every form of the host: an embedded IPv4 address is the host.
            let host = match peer.host {
                crate::policy::Host::Ip(ip) => Subnet::from(crate::policy::canonical(ip)),
                other => Subnet::from(other),
            };
            let same_host = self.ids_where(|p, perms| {
                p.identified && host.contains_host(p.host) && !perms.contains(Permissions::NOBAN)
            });
            for other in same_host {
                let permanent = self
                    .slots
                    .get(&other)
                    .is_some_and(|s| s.info.kind.is_permanent());
                if other == id || !permanent {
                    let _ = self.close(other, DisconnectReason::Banned);
                }
            }
        } else {
            // A local or Tor-inbound peer shares its address with others:
            // only this connection goes.
            tracing::info!(id = %slot.info.id, addr = %slot.info.addr, %reason, "misbehaving: disconnected");
            self.close(id, DisconnectReason::Banned)?;
        }
        Ok(score)
    }

    /// Records what the application reports of a peer, for eviction.
    pub(super) fn report(&mut self, id: ConnId, report: Report) -> Result<(), Error> {
        let slot = self.slots.get_mut(&id).ok_or(Error::UnknownId(id))?;
        let extra: &mut Extra = slot.extra.get_or_insert_default();
        let now = Instant::now();
        match report {
            Report::Ping(rtt) => {
                extra.min_ping = Some(extra.min_ping.map_or(rtt, |m| m.min(rtt)));
            }
            Report::Block => extra.last_block = Some(now),
            Report::Transaction => extra.last_tx = Some(now),
        }
        Ok(())
    }
}

impl<A: Address> super::Slot<A> {
    /// The peer as the policy sees it, and its permissions.
    pub(super) fn peer(&self, peers: &PolicyState<A, ConnId>) -> (Peer, Permissions) {
        match self.place {
            Place::Inbound { ip, origin } => {
                let peer = peers.inbound_peer(ip, origin);
                (peer, peers.permissions(&peer, origin.permissions))
            }
            Place::Outbound { .. } => {
                let peer = peers.classify(self.info.addr.host());
                (peer, peers.permissions(&peer, Permissions::NONE))
            }
        }
    }
}
