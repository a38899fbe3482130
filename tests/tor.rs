//! Against a real, private Tor network on loopback (`support::tor`):
//! onion services through the dial stack and the manager, stream
//! isolation seen on the ControlPort, and Tor's RESOLVE.

mod support;

use std::time::Duration;

use connmgr::{DialStack, Target};
use support::tor;
use tower::ServiceExt;

/// The limit of every wait on the network.
const LIMIT: Duration = Duration::from_secs(120);

/// The dial stack reaches an echo server behind a v3 onion service,
/// through the client tor's SocksPort.
#[tokio::test]
async fn tor_onion_dial_through_real_tor() {
    let Some(net) = tor::net("tor_onion_dial_through_real_tor").await else {
        return;
    };
    let stack = DialStack::new().socks5(net.socks).build();
    let target = Target::onion(&net.web, tor::PEER_PORT).expect("the web service's name");
    let mut conn = tokio::time::timeout(LIMIT, stack.oneshot(target))
        .await
        .expect("the onion dial in time")
        .expect("the onion dial");
    tokio::time::timeout(LIMIT, support::assert_echo(&mut conn, b"hello through tor"))
        .await
        .expect("the echo in time");
}
