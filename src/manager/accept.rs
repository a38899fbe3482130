//! The accept loop: one task per listener.
//!
//! It takes a place in the manager's queue *before* it accepts, so that when
//! the manager pauses (its callbacks are behind), accepting pauses too and
//! new peers wait in the kernel's listen backlog instead of in this process.
//! The manager decides on each socket (the inbound limits, bans, eviction).
//! Accept errors (running out of descriptors, say) back off instead of
//! spinning.

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::mpsc};

use super::{counters::Shared, message::Accepted};
use crate::policy::state::Origin;

/// The first wait after an accept error; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    listener: TcpListener,
    origin: Origin,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Accepted>,
) {
    let local = listener.local_addr().ok();
    let mut backoff = Duration::ZERO;
    loop {
        let Ok(place) = tx.reserve().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                place.send(Accepted {
                    stream,
                    peer,
                    origin,
                });
            }
            Err(error) => {
                shared.accept_error();
                backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                tracing::warn!(?local, %error, wait = ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
