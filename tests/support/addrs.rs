//! Addresses and files for the address-manager tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use connmgr::{addrman::Source, policy::Host};

/// `a.b.c.d:8333`: a value the table judges, never dialled.
pub fn v4(a: u8, b: u8, c: u8, d: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), 8333)
}

/// A peer at `a.b.0.1` as the source of addresses.
pub fn peer(a: u8, b: u8) -> Source {
    Source::Peer(Host::ip(IpAddr::V4(Ipv4Addr::new(a, b, 0, 1))))
}

/// A fresh folder of this test's own under the system's temporary one.
pub fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "connmgr-test-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
