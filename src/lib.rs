//! placeholder
pub mod backoff;
pub mod connect;
pub mod limit;
pub mod retry;
pub mod socks;
pub mod stack;
pub use stack::{DialStack, Dialer};
pub use tower::BoxError;
