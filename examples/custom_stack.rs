//! Stacking your own layers into the dial stack and handing it to the
//! manager.
//!
//! The stack, outermost first:
//!
//! ```text
//! DialCounter (a small layer written here: counts dials and failures)
//!  └ Buffer + RateLimit (tower: at most 20 dials per second; RateLimit is not
//!    Clone, so Buffer makes the stack cloneable for the manager)
//!     └ Timeout (tower: 2 s per attempt)
//!        └ TcpConnector (connmgr)
//! ```
//!
//! Run with:
//!
//! ```text
//! cargo run --example custom_stack
//! ```

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use connmgr::{BoxError, connect::TcpConnector, manager::ConnManager};
use futures_util::future::{BoxFuture, FutureExt};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceBuilder};

/// Counts dials and failures into shared counters.
#[derive(Clone, Debug, Default)]
struct DialCounterLayer {
    dials: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

#[derive(Clone, Debug)]
struct DialCounter<S> {
    inner: S,
    counters: DialCounterLayer,
}

impl<S> Layer<S> for DialCounterLayer {
    type Service = DialCounter<S>;
    fn layer(&self, inner: S) -> DialCounter<S> {
        DialCounter {
            inner,
            counters: self.clone(),
        }
    }
}

impl<S, R> Service<R> for DialCounter<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.counters.dials.fetch_add(1, Ordering::Relaxed);
        let failures = self.counters.failures.clone();
        self.inner
            .call(req)
            .map(move |result| {
                if result.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                result
            })
            .boxed()
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let peer = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let refused: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        l.local_addr()?
    };

    let counters = DialCounterLayer::default();
    let stack = ServiceBuilder::new()
        .layer(counters.clone())
        .buffer(64)
        .rate_limit(20, Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .service(TcpConnector::new());

    let mut n = 0u64;
    let handle = ConnManager::with_dialer(stack)
        .target_outbound(8)
        .address_source(move || {
            n += 1;
            // Every fourth address refuses.
            let addr = if n % 4 == 0 { refused } else { peer };
            async move { Some(addr) }
        })
        .on_connection(|conn| {
            tokio::spawn(async move {
                // Hold the connection for the example's lifetime.
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(conn);
            });
        })
        .start()?;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snapshot = handle.snapshot().await?;
    handle.stop().await;
    println!(
        "established {} automatic connections; the stack saw {} dials and {} failures (at most 20 dials/s)",
        snapshot.established(connmgr::manager::ConnKind::Automatic),
        counters.dials.load(Ordering::Relaxed),
        counters.failures.load(Ordering::Relaxed),
    );
    Ok(())
}
