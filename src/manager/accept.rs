//! The accept loop: one task per listener.
//!
//! It takes a place in the callback queue *before* it accepts, so that when
//! the application's `on_accept` falls behind, accepting pauses and new
//! peers wait in the kernel's backlog instead of in this process. Each
//! accepted connection holds an inbound slot for its life; without a free
//! slot the socket is closed at once and counted. Accept errors (running out
//! of descriptors, say) back off instead of spinning.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};

use super::{ConnInfo, ConnKind, Connection, connection::Control, counters::Shared, events::Event};

/// The first wait after an accept error; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) async fn run<IO, A>(
    listener: TcpListener,
    slots: Option<Arc<Semaphore>>,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event<IO, A>>,
) {
    let local = listener.local_addr().ok();
    loop {
        let Ok(place) = events.reserve().await else {
            return;
        };
        let (stream, permit, peer) = admit(&listener, local, slots.as_ref(), &shared).await;
        shared.inbound_accepted();
        let info = ConnInfo {
            id: shared.next_id(),
            addr: peer,
            kind: ConnKind::Inbound,
        };
        tracing::debug!(id = %info.id, %peer, "inbound connection accepted");
        place.send(Event::Accepted(Connection::new(
            stream,
            info,
            Control::inbound(permit),
            None,
        )));
    }
}

/// Accepts until a connection gets an inbound slot.
async fn admit(
    listener: &TcpListener,
    local: Option<SocketAddr>,
    slots: Option<&Arc<Semaphore>>,
    shared: &Shared,
) -> (
    TcpStream,
    Option<tokio::sync::OwnedSemaphorePermit>,
    SocketAddr,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                accepted
            }
            Err(error) => {
                shared.accept_error();
                backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                tracing::warn!(?local, %error, wait = ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Some(slots) = slots else {
            return (stream, None, peer);
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => return (stream, Some(permit), peer),
            Err(_) => {
                let rejected = shared.inbound_rejected("limit");
                tracing::debug!(%peer, rejected, "inbound limit reached; connection closed");
            }
        }
    }
}
