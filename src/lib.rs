//! A connection manager for peer-to-peer nodes, built as a tower middleware
//! stack for dialing.
//!
//! # Overview
//!
//! connmgr keeps a node connected the way btcd's `connmgr` does: it keeps a
//! target number of outbound connections filled from an address source,
//! keeps permanent peers connected (retrying with backoff), accepts inbound
//! connections under a limit, and hands every connection to the application.
//! It is built the tokio/tower way, in two halves:
//!
//! ```text
//!  application ──Handle (connect / disconnect / remove / snapshot / stop)──┐
//!       ^                                                                 v
//!       │ callbacks     manager task: the state map (one owner, no locks),
//!       │ (own task,    retry timers; fill task for automatic outbound;
//!       │  bounded)     accept loop per listener
//!       │                                                                 │
//!       └─ Connection <── dial task, one per attempt:                     │
//!                         connect timeout ( [OutboundLimit] ( your stack ) )
//!
//!  your stack, e.g. DialStack:  Timeout ─> Socks5 ─> TcpConnector
//!                               (any tower layer of yours can go in between)
//! ```
//!
//! The manager wraps the stack you give it: automatic dials go through an
//! [`OutboundLimit`](limit::OutboundLimit) sized to the outbound target,
//! explicit ones do not, and every attempt runs under the manager's connect
//! timeout on a task of its own.
//!
//! - The **dial stack** is a `tower::Service<SocketAddr>` made of ordinary
//!   layers, each usable on its own: [`connect::TcpConnector`] (the leaf),
//!   [`socks::Socks5Layer`] (SOCKS5 through tokio-socks, with Tor stream
//!   isolation), tower's `TimeoutLayer`, [`retry::RetryPolicy`] over a
//!   [`backoff::Backoff`], and [`limit::OutboundLimitLayer`], a concurrency
//!   limit whose permit lives as long as the connection. [`DialStack`]
//!   assembles the usual stack in one line.
//! - The **manager** ([`manager`]) drives any such service: one task owns the
//!   state map, a [`Handle`](manager::Handle) sends it commands, and each
//!   connection reaches the application as a [`Connection`](manager::Connection)
//!   whose drop is the disconnect. Faults in user code and load from peers
//!   never stop it: every queue is bounded, panics are caught, stop is
//!   bounded.
//! - The **peer policy** ([`policy`]) gives the node Bitcoin Core's
//!   defences, on by default: a network and a group for every address
//!   (local and Tor peers included), no duplicate hosts, netgroup diversity
//!   decided before the dial stack is called, inbound limits, Core's
//!   eviction with its protections, bans of IP ranges and onion hosts that
//!   scale, and bounded discouragement of misbehaving peers.
//! - **Connection classes** ([`manager::ConnClass`]): Bitcoin Core's
//!   outbound layout, full-relay and block-relay peers each kept at a
//!   target of their own, feelers that test addresses of the address
//!   manager ([`addrman`]), anchors that survive a restart, and the
//!   primitives of Core's extra outbound peer.
//! - **Seeding** ([`resolve`], [`seed`]): resolvers are `tower::Service`s
//!   (the system's, Tor's RESOLVE, hickory with the `hickory` feature), and
//!   DNS seeds fill an address book the manager draws from.
//!
//! # Example
//!
//! ```no_run
//! use connmgr::{DialStack, manager::ConnManager};
//!
//! # #[tokio::main] async fn main() -> Result<(), connmgr::BoxError> {
//! // Dial through a local SOCKS5 proxy (Tor, say), 30 s per attempt.
//! let dialer = DialStack::new().socks5("127.0.0.1:9050".parse()?).build();
//! let handle = ConnManager::with_dialer(dialer)
//!     .target_outbound(8)
//!     .address_source(|| async { Some("127.0.0.1:8333".parse().ok()?) })
//!     .on_connection(|conn| {
//!         println!("connected to {} (id {})", conn.addr(), conn.id());
//!         tokio::spawn(async move {
//!             // speak the peer protocol on `conn`; dropping it disconnects
//!             drop(conn);
//!         });
//!     })
//!     .on_disconnection(|ended| println!("{} disconnected", ended.info.addr))
//!     .start()?;
//!
//! let permanent = handle.connect_permanent("127.0.0.1:18444".parse()?).await?;
//! let snapshot = handle.snapshot().await?;
//! println!("{} entries, {:?}", snapshot.entries.len(), snapshot.counters);
//! handle.remove(permanent).await?;
//! handle.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `metrics`: the manager's counters and gauges through the `metrics`
//!   facade.
//! - `serde`: serialize bans.
//! - `hickory`: a DNS resolver on hickory-resolver with name servers of your
//!   choice.
//! - `hyper`: `hyper::HyperConnector`, the dial
//!   stack as a connector for hyper-util's legacy client (and tonic).
//!
//! # Time
//!
//! Every timer is a tokio timer, so `tokio::time::pause()` makes backoff,
//! timeouts and the failure throttle deterministic in tests.
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.85.

#![forbid(unsafe_code)]

pub mod addrman;
pub mod backoff;
pub mod connect;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod hyper;
pub mod limit;
pub mod manager;
pub mod policy;
pub mod resolve;
pub mod retry;
pub mod route;
pub mod seed;
pub mod socks;
mod source;
pub mod stack;
mod target;

pub use stack::{DialStack, Dialer};
pub use target::{NeedsProxy, Target};
pub use tower::BoxError;
