//! The messages the manager task receives.

use std::sync::Arc;

use tokio::{
    sync::{OwnedSemaphorePermit, oneshot},
    time::Instant,
};
use tower::BoxError;

use super::{ConnId, ConnKind, ConnState, Error, Panicked, Snapshot, connection::Control};

/// A command from a [`Handle`](super::Handle); the reply goes back on the
/// oneshot.
pub(crate) enum Command<A> {
    Connect {
        addr: A,
        kind: ConnKind,
        reply: oneshot::Sender<ConnId>,
    },
    Disconnect {
        id: ConnId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Remove {
        id: ConnId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    State {
        id: ConnId,
        reply: oneshot::Sender<Result<ConnState, Error>>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot<A>>,
    },
    Stop {
        close: bool,
        reply: oneshot::Sender<()>,
    },
}

/// An automatic dial started by the fill task: its outbound permit is in
/// `fut`, and moves into the connection. `Err` when the dial stack's `call`
/// panicked: the attempt has failed already.
pub(crate) struct AutoDial<A, F> {
    pub(crate) addr: A,
    pub(crate) started: Instant,
    pub(crate) fut: Result<F, Panicked>,
}

/// A connection, with the outbound permit it holds if it is automatic.
pub(crate) type Io<IO> = (IO, Option<OwnedSemaphorePermit>);

/// The one result of one dial attempt, from its dial task.
pub(crate) struct Dialed<IO> {
    pub(crate) id: ConnId,
    pub(crate) result: Result<Io<IO>, BoxError>,
}

/// An owner dropped its connection. `control` tells the connection apart
/// from an earlier one of the same request, whose notice may arrive late.
pub(crate) struct Dropped {
    pub(crate) id: ConnId,
    pub(crate) control: Arc<Control>,
}
