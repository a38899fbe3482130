//! Accept errors back off instead of spinning. Runs alone in its own process
//! (its own test binary) because it lowers the process's open-file limit to
//! make `accept` fail with EMFILE.

mod support;

use std::time::Duration;

use connmgr::manager::ConnManager;
use tokio::net::{TcpListener, TcpSocket};

fn open_fds() -> u64 {
    // The directory handle itself is one of the entries while listing.
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64) - 1
}

fn set_soft_nofile(limit: u64) {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    rlimit::setrlimit(rlimit::Resource::NOFILE, limit.min(hard), hard).expect("setrlimit");
}

/// With no file descriptor left, `accept` fails with EMFILE; the accept loop
/// waits 5 ms, then doubles up to 1 s, instead of spinning, and accepts the
/// waiting clients once descriptors are free again.
#[tokio::test(start_paused = true)]
async fn accept_errors_back_off() {
    support::trace_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let handle = ConnManager::builder()
        .listener(listener)
        .on_accept(move |c| {
            let _ = tx.send(c);
        })
        .start()
        .expect("start");

    // Client sockets are made while descriptors are still available.
    let sockets: Vec<TcpSocket> = (0..2)
        .map(|_| TcpSocket::new_v4().expect("socket"))
        .collect();
    let (original, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    set_soft_nofile(open_fds());
    // Fill any gaps below the limit, so that no descriptor is left.
    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
        assert!(filler.len() < 10_000, "the limit did not take");
    }

    let mut clients = Vec::new();
    for s in sockets {
        clients.push(
            s.connect(addr)
                .await
                .expect("connect (needs no new descriptor)"),
        );
    }
    // Ten seconds of virtual time with accept failing all along.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let errors = handle.counters().accept_errors;
    assert!(errors >= 5, "accept was retried ({errors} errors)");
    // 5 ms doubling to 1 s: 8 steps to reach the cap, then one per second.
    assert!(
        errors <= 8 + 10 + 2,
        "{errors} accept errors in 10 s: the loop spins"
    );
    assert!(accepted.try_recv().is_err());

    drop(filler);
    set_soft_nofile(original);
    let first = accepted
        .recv()
        .await
        .expect("accepted once descriptors are back");
    let second = accepted.recv().await.expect("second client accepted");
    assert_ne!(first.id(), second.id());
    assert_eq!(handle.counters().inbound_accepted, 2);
    handle.stop().await;
}
