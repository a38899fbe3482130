//! The application's side of the manager.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};

use super::{
    ConnClass, ConnId, ConnKind, ConnState, Counters, Error, Points, Report, Snapshot,
    counters::Shared, message::Command,
};
use crate::policy::{Ban, Subnet};

/// Talks to a running manager. Cheap to clone; every clone talks to the same
/// manager.
///
/// Every method returns [`Error::Stopped`] once the manager has stopped, and
/// none of them waits for a dial. When the last handle is dropped, the
/// manager stops as with [`stop`](Self::stop). Code that the manager itself
/// runs (callbacks, the address source) should hold a [`WeakHandle`]
/// instead, or the manager keeps itself alive.
pub struct Handle<A = SocketAddr> {
    tx: mpsc::Sender<Command<A>>,
    shared: Arc<Shared>,
}

impl<A> Clone for Handle<A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<A> fmt::Debug for Handle<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("stopped", &self.tx.is_closed())
            .finish_non_exhaustive()
    }
}

impl<A> Handle<A> {
    pub(crate) fn new(tx: mpsc::Sender<Command<A>>, shared: Arc<Shared>) -> Self {
        Self { tx, shared }
    }

    /// A handle that does not keep the manager running. See [`WeakHandle`].
    pub fn downgrade(&self) -> WeakHandle<A> {
        WeakHandle {
            tx: self.tx.downgrade(),
            shared: self.shared.clone(),
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command<A>,
    ) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Asks for a one-shot connection to `addr`, in addition to the
    /// automatic ones, and returns its id at once. The dial runs in the
    /// background and its outcome reaches `on_connection` or
    /// `on_dial_failure`. The request ends at its first failure or
    /// disconnect.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`] when `addr` is connected or being dialed
    /// already, [`Error::Banned`] when it is banned.
    pub async fn connect(&self, addr: A) -> Result<ConnId, Error> {
        self.request(addr, ConnKind::OneShot).await
    }

    /// Asks for a permanent connection to `addr`: like
    /// [`connect`](Self::connect), but retried on failure and reconnected on
    /// disconnect, with exponential backoff, until [`remove`](Self::remove)d.
    ///
    /// The request is never lost to a duplicate: when an automatic or
    /// one-shot request holds the address, that request becomes permanent
    /// and its id is returned (it leaves the outbound target, whose slot
    /// is refilled; a [`Connection`](super::Connection) already handed out
    /// keeps the kind it had); when the host is connected inbound, the
    /// request waits its backoff and dials once the host is free.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`] when a permanent request holds the address,
    /// [`Error::Banned`] when it is banned.
    pub async fn connect_permanent(&self, addr: A) -> Result<ConnId, Error> {
        self.request(addr, ConnKind::Permanent).await
    }

    async fn request(&self, addr: A, kind: ConnKind) -> Result<ConnId, Error> {
        self.ask(|reply| Command::Connect { addr, kind, reply })
            .await?
    }

    /// Closes an established connection from the manager's side. A permanent
    /// request is reconnected after its backoff; any other request ends (an
    /// automatic one is replaced).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`] when no live request has this id,
    /// [`Error::NotEstablished`] when it is not connected (use
    /// [`remove`](Self::remove) to cancel a pending request).
    pub async fn disconnect(&self, id: ConnId) -> Result<(), Error> {
        self.ask(|reply| Command::Disconnect { id, reply }).await?
    }

    /// Ends a request at whatever stage it is: closes an established
    /// connection (never retried, even if permanent), drops a dial in flight
    /// (a connection that still arrives is closed and never reported), or
    /// cancels a pending retry.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`] when no live request has this id.
    pub async fn remove(&self, id: ConnId) -> Result<(), Error> {
        self.ask(|reply| Command::Remove { id, reply }).await?
    }

    /// The state of a request. Recently ended requests report
    /// [`Canceled`](ConnState::Canceled) or
    /// [`Disconnected`](ConnState::Disconnected).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`] for an id never handed out, or one that ended
    /// long ago.
    pub async fn state(&self, id: ConnId) -> Result<ConnState, Error> {
        self.ask(|reply| Command::State { id, reply }).await?
    }

    /// Every live entry of the state map and the counters.
    pub async fn snapshot(&self) -> Result<Snapshot<A>, Error> {
        self.ask(|reply| Command::Snapshot { reply }).await
    }

    /// Bans `subnet` (an address is its own `/32` or `/128`: `ip.into()`;
    /// an onion service is `Subnet::from(host)`) for `duration`: its
    /// connections are closed, its pending dials dropped, and until the ban
    /// ends no dial goes to it (an automatic candidate is skipped, an
    /// explicit request is [`Error::Banned`]) and its inbound sockets are
    /// closed before `on_accept`. Peers with
    /// [`NOBAN`](crate::policy::Permissions::NOBAN) are never banned.
    ///
    /// # Errors
    ///
    /// [`Error::BanListFull`] when the list holds
    /// [`Policy::max_bans`](crate::policy::Policy::max_bans) bans in force.
    pub async fn ban(
        &self,
        subnet: Subnet,
        duration: Duration,
        reason: impl Into<String>,
    ) -> Result<(), Error> {
        let reason = reason.into();
        self.ask(|reply| Command::Ban {
            subnet,
            duration,
            reason,
            reply,
        })
        .await?
    }

    /// Lifts the ban of exactly `subnet`; `false` when there was none.
    pub async fn unban(&self, subnet: Subnet) -> Result<bool, Error> {
        self.ask(|reply| Command::Unban { subnet, reply }).await
    }

    /// The bans in force, to export and later restore with
    /// [`Builder::bans`](super::Builder::bans).
    pub async fn bans(&self) -> Result<Vec<Ban>, Error> {
        self.ask(|reply| Command::Bans { reply }).await
    }

    /// Adds ban-score points to a connection for misbehaving (btcd's
    /// `addBanScore`): a bare number is transient points, which halve every
    /// minute; [`Points::persistent`] stay. Returns the score, decayed. At
    /// the policy's threshold (100 by default) the peer is punished by its
    /// network and permissions, as the [policy docs](crate::policy#misbehaviour)
    /// say: a routable or onion host is discouraged for the policy's ban
    /// duration (24 hours by default) and disconnected, a local or
    /// Tor-inbound peer is only disconnected, and a permanent or
    /// [`NOBAN`](crate::policy::Permissions::NOBAN) peer keeps its
    /// connection and only its score is reported.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`] when no live entry has this id.
    pub async fn misbehaving(
        &self,
        id: ConnId,
        points: impl Into<Points>,
        reason: impl Into<String>,
    ) -> Result<u32, Error> {
        let (points, reason) = (points.into(), reason.into());
        self.ask(|reply| Command::Misbehaving {
            id,
            points,
            reason,
            reply,
        })
        .await?
    }

    /// Tells the manager what a peer did that eviction values: its ping, a
    /// new block, a new transaction (Core protects the peers that do these
    /// best; see [eviction](crate::policy#eviction)).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`] when no live entry has this id.
    pub async fn report(&self, id: ConnId, report: Report) -> Result<(), Error> {
        self.ask(|reply| Command::Report { id, report, reply })
            .await?
    }

    /// Lets automatic connections of `class` go one above their target
    /// until one of them ends: Core's extra outbound peer, for a tip that
    /// looks stale. The fill task dials one more (retrying until it
    /// connects); when any connection of the class then ends, or is made
    /// permanent, the class is back at its target and nothing replaces it.
    /// Choose which one to drop with
    /// [`drop_candidate`](Self::drop_candidate) and close it with
    /// [`disconnect`](Self::disconnect).
    ///
    /// # Errors
    ///
    /// [`Error::NoTarget`] for a class without a target (feelers, or a
    /// target of 0); [`Error::ExtraPending`] when the class may already go
    /// one above.
    pub async fn extra_outbound(&self, class: ConnClass) -> Result<(), Error> {
        self.ask(|reply| Command::ExtraOutbound { class, reply })
            .await?
    }

    /// The established automatic connection of `class` that is the best
    /// one to drop, as Core picks after an extra outbound peer: the one
    /// whose last new block came longest ago (never counts as longest; see
    /// [`report`](Self::report) with [`Report::Block`]), and among equals
    /// the youngest. `None` when the class has no connection. The manager
    /// closes nothing: the application decides.
    ///
    /// # Errors
    ///
    /// Only [`Error::Stopped`].
    pub async fn drop_candidate(&self, class: ConnClass) -> Result<Option<ConnId>, Error> {
        self.ask(|reply| Command::DropCandidate { class, reply })
            .await?
    }

    /// The counters, read without asking the manager task. Works after stop.
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// Whether the manager has stopped: every task of it has ended.
    pub fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Stops the manager: closes the listeners, cancels dials and retry
    /// timers, closes connections that arrive late, gives the callbacks the
    /// grace period ([`Builder::stop_grace`](super::Builder::stop_grace), 5 s
    /// by default) to run what is queued, and returns when every task of the
    /// manager has ended. After the grace period, queued events are dropped
    /// (their connections closed) and a callback still running is abandoned.
    /// No callback starts after it returns.
    ///
    /// Established connections stay open with their owners (see
    /// [`stop_and_close`](Self::stop_and_close)). Calling it again, or on a
    /// stopped manager, returns at once.
    pub async fn stop(&self) {
        self.stop_inner(false).await;
    }

    /// Like [`stop`](Self::stop), and also closes every established
    /// outbound connection, reporting each to `on_disconnection` with
    /// [`DisconnectReason::Stop`](super::DisconnectReason::Stop).
    pub async fn stop_and_close(&self) {
        self.stop_inner(true).await;
    }

    async fn stop_inner(&self, close: bool) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Stop { close, reply }).await.is_ok() {
            let _ = rx.await;
        }
        // The manager drops its receiver as the very last thing it does.
        self.tx.closed().await;
    }
}

/// A handle that does not keep the manager running, as tokio's
/// [`WeakSender`](mpsc::WeakSender) does not keep a channel open.
///
/// Give one to code the manager runs itself: a callback or an address
/// source that holds a [`Handle`] keeps the manager alive after the
/// application dropped its own handles.
///
/// ```no_run
/// # use connmgr::manager::ConnManager;
/// # fn f() -> Result<(), connmgr::manager::ConfigError> {
/// # let handle = ConnManager::builder().start()?;
/// let weak = handle.downgrade();
/// // ... .on_disconnection(move |ended| {
/// if let Some(handle) = weak.upgrade() {
///     // the manager still runs
/// #   drop(handle);
/// }
/// // })
/// # Ok(()) }
/// ```
pub struct WeakHandle<A = SocketAddr> {
    tx: mpsc::WeakSender<Command<A>>,
    shared: Arc<Shared>,
}

impl<A> WeakHandle<A> {
    /// A [`Handle`], unless every handle is gone or the manager stopped.
    pub fn upgrade(&self) -> Option<Handle<A>> {
        let tx = self.tx.upgrade()?;
        Some(Handle {
            tx,
            shared: self.shared.clone(),
        })
    }

    /// The counters, as [`Handle::counters`].
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }
}

impl<A> Clone for WeakHandle<A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<A> fmt::Debug for WeakHandle<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakHandle").finish_non_exhaustive()
    }
}
