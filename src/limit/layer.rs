use std::sync::Arc;

use tokio::sync::Semaphore;
use tower::Layer;

use super::OutboundLimit;

/// Applies [`OutboundLimit`] to a service. See the
/// [module docs](crate::limit).
///
/// Every service this layer builds shares one set of permits.
#[derive(Clone, Debug)]
pub struct OutboundLimitLayer {
    semaphore: Arc<Semaphore>,
}

impl OutboundLimitLayer {
    /// At most `max` connections open at once (capped at
    /// [`Semaphore::MAX_PERMITS`]).
    pub fn new(max: usize) -> Self {
        Self::with_semaphore(Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))))
    }

    /// Draws permits from `semaphore`, which the caller may share or inspect.
    pub fn with_semaphore(semaphore: Arc<Semaphore>) -> Self {
        Self { semaphore }
    }
}

impl<S> Layer<S> for OutboundLimitLayer {
    type Service = OutboundLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OutboundLimit::with_semaphore(inner, self.semaphore.clone())
    }
}
