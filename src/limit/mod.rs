//! Middleware that limits the number of open connections.
//!
//! [`OutboundLimit`] is a concurrency limit whose permit travels *with the
//! connection*: it is taken in `poll_ready`, moved into the response, a
//! [`Permitted`] stream, and given back only when that stream is dropped (or
//! when the dial fails or is cancelled). So it bounds connections that are
//! open, not dials in flight, which is what tower's
//! [`ConcurrencyLimit`](tower::limit::ConcurrencyLimit) bounds.
//!
//! `poll_ready` is pending while every permit is held. Clones share the
//! permits. The connection manager uses one of these, sized to its outbound
//! target, as the thing that decides when to dial the next automatic peer.
//!
//! # Examples
//!
//! ```no_run
//! use connmgr::{connect::TcpConnector, limit::OutboundLimitLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), tower::BoxError> {
//! let mut dialer = ServiceBuilder::new()
//!     .layer(OutboundLimitLayer::new(8))
//!     .service(TcpConnector::new());
//! // Waits here while eight connections are open.
//! let conn = dialer.ready().await?.call("127.0.0.1:8333".parse()?).await?;
//! drop(conn); // the permit returns
//! # Ok(())
//! # }
//! ```

pub mod future;
mod layer;
mod permitted;
mod service;

pub use self::{layer::OutboundLimitLayer, permitted::Permitted, service::OutboundLimit};
