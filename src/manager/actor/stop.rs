//! Stopping: every task of the manager ends, in an order that leaves
//! nothing behind.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Actor;
use crate::manager::{Address, ConnId, ConnState, DialService, DisconnectReason};

impl<A: Address, D: DialService<A>> Actor<A, D> {
    /// Stops every task of the manager, in an order that leaves nothing
    /// behind: listeners and the fill task, then the dials (a connection
    /// that arrives now is dropped, closed), then (when asked) the
    /// established connections, and last the callbacks, which get the grace
    /// period to run what is queued.
    pub(super) async fn stop(mut self, close: bool) {
        self.tasks.shutdown().await;
        // Sockets accepted but not yet admitted are closed.
        (self.auto, self.accepted) = (None, None);
        for slot in self.slots.values_mut() {
            if let Some(dial) = slot.dial.take() {
                dial.abort();
                self.shared.dial_canceled(slot.counted);
            }
        }
        self.dials.close();
        self.dials.wait().await;
        // The address source gets its addresses back: this manager no
        // longer dials or tracks them.
        if let Some(o) = &self.observer {
            for slot in self.slots.values() {
                if slot.info.kind.direction() == crate::manager::Direction::Outbound {
                    o.canceled(&slot.info.addr);
                }
            }
        }
        self.save_anchors();
        // Closing only now: the owners' tasks wake up to drop their
        // connections, and stop need not wait behind that work.
        if close {
            let established: Vec<ConnId> = self
                .slots
                .values()
                .filter(|s| s.state == ConnState::Established)
                .map(|s| s.info.id)
                .collect();
            for id in established {
                self.connection_ended(id, DisconnectReason::Stop);
            }
        }
        // The table and the bans, as they are at the end.
        if let Some((persist, man, _)) = &self.persist {
            let bans = self.peers.bans(Instant::now());
            crate::manager::persist::save(persist, man, bans).await;
        }
        let deadline = Instant::now() + self.stop_grace;
        let Self {
            commands,
            outbox,
            callbacks,
            abandoned,
            slots,
            results,
            ..
        } = self;
        // Connections that arrived after the stop are dropped, closed.
        drop((slots, results));
        outbox.close(deadline).await;
        let mut callbacks = callbacks;
        if tokio::time::timeout_at(deadline, &mut callbacks)
            .await
            .is_err()
        {
            tracing::warn!("callbacks still busy after the stop grace period; abandoned");
            abandoned.store(true, Ordering::Release);
            callbacks.abort();
        }
        tracing::debug!("connection manager stopped");
        // Dropped last: `Handle::stop` and `is_stopped` wait for that.
        drop(commands);
    }
}
