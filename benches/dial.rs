//! The dial stack against the raw tokio work it wraps, in the same run.
//!
//! - `loopback_connect/raw_tokio`: `TcpStream::connect` to a loopback
//!   listener; `loopback_connect/raw_tokio_same_work`: the same with what the
//!   default stack adds by design (a 30 s timeout and `TCP_NODELAY`), written
//!   by hand; `loopback_connect/default_stack`: the connect through
//!   `DialStack::new().build()`; `loopback_connect/tcp_connector`: the leaf
//!   alone.
//! - `socks5_connect/raw_tokio_socks`: `TcpStream::connect` to the proxy plus
//!   `Socks5Stream::connect_with_socket`; `socks5_connect/socks5_stack`: the
//!   same through `DialStack::new().socks5(proxy).build()`. The proxy is
//!   microsocks when installed, else a small proxy on its own thread.
//!
//! Both sides close with SO_LINGER 0, so no TIME_WAIT piles up. The listener
//! and proxy run on their own thread and runtime.
//!
//! Run with: `cargo bench --bench dial`
#![allow(missing_docs)]

use std::{net::SocketAddr, process::Command, time::Duration};

use connmgr::DialStack;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_socks::tcp::Socks5Stream;
use tower::ServiceExt;

fn close(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// A loopback listener on its own thread that accepts and drops, with a
/// blocking accept loop (cheaper than any client) and a 4096 backlog, so it
/// never falls behind the client and overflows its accept queue.
fn start_sink() -> SocketAddr {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&bind.into()).expect("bind");
    socket.listen(4096).expect("listen");
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    addr
}

/// microsocks on a free port, or an in-process proxy on its own thread.
fn start_proxy() -> (SocketAddr, Option<std::process::Child>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    if let Ok(child) = Command::new("microsocks")
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .spawn()
    {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                eprintln!("proxy: microsocks on {addr}");
                return (addr, Some(child));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 10];
                    sock.read_exact(&mut buf[..3]).await?;
                    sock.write_all(&[5, 0]).await?;
                    sock.read_exact(&mut buf).await?;
                    let target = SocketAddr::from((
                        [buf[4], buf[5], buf[6], buf[7]],
                        u16::from_be_bytes([buf[8], buf[9]]),
                    ));
                    let up = TcpStream::connect(target).await?;
                    close(up);
                    sock.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await?;
                    Ok::<_, std::io::Error>(())
                });
            }
        });
    });
    let addr = rx.recv().expect("proxy address");
    eprintln!("proxy: in-process on {addr}");
    (addr, None)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let sink = start_sink();

    let mut group = c.benchmark_group("loopback_connect");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("raw_tokio", |b| {
        b.to_async(&rt).iter(|| async {
            let s = TcpStream::connect(sink).await.expect("connect");
            close(s);
        })
    });
    // The same socket work as the default stack, written by hand: a 30 s
    // timeout around the connect, then TCP_NODELAY.
    group.bench_function("raw_tokio_same_work", |b| {
        b.to_async(&rt).iter(|| async {
            let s = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(sink))
                .await
                .expect("in time")
                .expect("connect");
            s.set_nodelay(true).expect("nodelay");
            close(s);
        })
    });
    let connector = connmgr::connect::TcpConnector::new();
    group.bench_function("tcp_connector", |b| {
        b.to_async(&rt).iter(|| async {
            let s = connector.clone().oneshot(sink).await.expect("connect");
            close(s);
        })
    });
    let stack = DialStack::new().build();
    group.bench_function("default_stack", |b| {
        b.to_async(&rt).iter(|| async {
            let s = stack.clone().oneshot(sink).await.expect("connect");
            close(s);
        })
    });
    group.finish();

    let (proxy, child) = start_proxy();
    let mut group = c.benchmark_group("socks5_connect");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("raw_tokio_socks", |b| {
        b.to_async(&rt).iter(|| async {
            let tcp = TcpStream::connect(proxy).await.expect("proxy");
            let s = Socks5Stream::connect_with_socket(tcp, sink)
                .await
                .expect("socks");
            close(s.into_inner());
        })
    });
    let stack = DialStack::new().socks5(proxy).build();
    group.bench_function("socks5_stack", |b| {
        b.to_async(&rt).iter(|| async {
            let s = stack.clone().oneshot(sink).await.expect("connect");
            close(s);
        })
    });
    group.finish();
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
