//! The messages the manager task receives.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, oneshot},
    time::Instant,
};
use tower::BoxError;

use super::{
    ConnClass, ConnId, ConnKind, ConnState, Error, Points, Report, Snapshot, connection::Control,
};
use crate::policy::{Ban, Subnet, state::Origin};

/// A command from a [`Handle`](super::Handle); the reply goes back on the
/// oneshot.
pub(crate) enum Command<A> {
    Connect {
        addr: A,
        kind: ConnKind,
        reply: oneshot::Sender<Result<ConnId, Error>>,
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
    Ban {
        subnet: Subnet,
        duration: Duration,
        reason: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Unban {
        subnet: Subnet,
        reply: oneshot::Sender<bool>,
    },
    Bans {
        reply: oneshot::Sender<Vec<Ban>>,
    },
    Misbehaving {
        id: ConnId,
        points: Points,
        reason: String,
        reply: oneshot::Sender<Result<u32, Error>>,
    },
    Report {
        id: ConnId,
        report: Report,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    ExtraOutbound {
        class: ConnClass,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    DropCandidate {
        class: ConnClass,
        reply: oneshot::Sender<Result<Option<ConnId>, Error>>,
    },
    Stop {
        close: bool,
        reply: oneshot::Sender<()>,
    },
}

/// An automatic candidate from the fill task, with a ready dial stack that
/// holds its outbound permit. The manager checks the policy before anyone
/// calls the stack; the permit moves into the connection.
pub(crate) struct AutoDial<A, S> {
    pub(crate) addr: A,
    pub(crate) started: Instant,
    pub(crate) svc: S,
    pub(crate) class: ConnClass,
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

/// A socket an accept loop took; the manager admits it or closes it.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) origin: Origin,
}
