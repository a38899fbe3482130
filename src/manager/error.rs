//! The manager's errors, and the arguments that go with them.

use std::{error::Error as StdError, fmt};

use super::{ConnClass, ConnId, ConnState};
use crate::policy::Subnet;

/// The error of an attempt whose user code panicked: the dial stack's
/// `poll_ready`, `call` or future, or the address source.
///
/// The panic is caught; the attempt fails with this error, is counted in
/// [`Counters::panics`](super::Counters::panics) and logged at error level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Panicked(pub(crate) &'static str);

impl Panicked {
    /// What panicked, e.g. `"dial future"`.
    pub fn what(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} panicked", self.0)
    }
}

impl StdError for Panicked {}

/// Ban-score points for [`Handle::misbehaving`](super::Handle::misbehaving):
/// btcd's persistent part, which stays, and transient part, which halves
/// every minute. A bare number is transient points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Points {
    /// Points that never decay.
    pub persistent: u32,
    /// Points that decay with a half-life of 60 s.
    pub transient: u32,
}

impl Points {
    /// Points that never decay.
    pub fn persistent(points: u32) -> Self {
        Self {
            persistent: points,
            transient: 0,
        }
    }

    /// Points that decay.
    pub fn transient(points: u32) -> Self {
        Self {
            persistent: 0,
            transient: points,
        }
    }
}

impl From<u32> for Points {
    fn from(points: u32) -> Self {
        Self::transient(points)
    }
}

/// Errors from a [`Handle`](super::Handle).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The manager has stopped.
    Stopped,
    /// No live request has this id (it never existed, or it ended).
    UnknownId(ConnId),
    /// The request is not connected, so there is nothing to disconnect; use
    /// [`Handle::remove`](super::Handle::remove) to cancel it.
    NotEstablished(ConnId, ConnState),
    /// The address is connected or being dialed already, by this request.
    Duplicate(ConnId),
    /// The address is banned, by this ban.
    Banned(Subnet),
    /// The ban list holds as many bans as
    /// [`Policy::max_bans`](crate::policy::Policy::max_bans) allows (this
    /// many); the ban was not made.
    BanListFull(usize),
    /// The class has no target, so there is nothing to go above (feelers
    /// never have one).
    NoTarget(ConnClass),
    /// The class may already hold one connection above its target.
    ExtraPending(ConnClass),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped => f.pad("connection manager stopped"),
            Self::UnknownId(id) => write!(f, "unknown connection id {id}"),
            Self::NotEstablished(id, state) => {
                write!(f, "connection {id} is not established (it is {state})")
            }
            Self::Duplicate(id) => write!(f, "the address is taken by connection {id}"),
            Self::Banned(subnet) => write!(f, "the address is banned ({subnet})"),
            Self::BanListFull(max) => write!(f, "the ban list is full ({max} bans)"),
            Self::NoTarget(class) => write!(f, "the {class} class has no target"),
            Self::ExtraPending(class) => {
                write!(f, "the {class} class already has an extra connection")
            }
        }
    }
}

impl StdError for Error {}
