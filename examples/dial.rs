//! One dial through the stack, start to finish, on loopback.
//!
//! Starts a local echo "peer" and a minimal local SOCKS5 proxy, then dials
//! the peer three ways: plain TCP, through the proxy, and through the proxy
//! with Tor stream isolation. It then shows the typed errors of a refused
//! port and of a proxy that never answers (ended by the timeout).
//!
//! Run with:
//!
//! ```text
//! cargo run --example dial
//! ```

use std::{net::SocketAddr, time::Duration};

use connmgr::{BoxError, DialStack, socks::Socks5Layer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let peer = echo_peer().await?;
    let proxy = mini_socks5().await?;
    println!("echo peer on {peer}, SOCKS5 proxy on {proxy}");

    let mut stream = DialStack::new().build().oneshot(peer).await?;
    println!(
        "tcp:    connected to {} -> {}",
        peer,
        echo(&mut stream, b"hello").await?
    );

    let mut stream = DialStack::new().socks5(proxy).build().oneshot(peer).await?;
    println!(
        "socks5: connected via {} -> {}",
        stream.peer_addr()?,
        echo(&mut stream, b"hello through the proxy").await?
    );

    let isolated = Socks5Layer::new(proxy).tor_isolation(true);
    let dialer = DialStack::new().socks5_layer(isolated).build();
    for _ in 0..2 {
        let mut stream = dialer.clone().oneshot(peer).await?;
        println!(
            "tor isolation: {}",
            echo(&mut stream, b"own circuit").await?
        );
    }

    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        l.local_addr()?
    };
    let err = DialStack::new()
        .build()
        .oneshot(refused)
        .await
        .expect_err("refused");
    println!(
        "refused port: {err} ({})",
        std::error::Error::source(&*err).map_or(String::new(), |s| s.to_string())
    );

    let silent = TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    let err = DialStack::new()
        .socks5(silent_addr)
        .timeout(Some(Duration::from_millis(300)))
        .build()
        .oneshot(peer)
        .await
        .expect_err("silent proxy");
    let timed_out = err.is::<tower::timeout::error::Elapsed>();
    println!("silent proxy: {err} (timeout: {timed_out})");
    drop(silent);
    Ok(())
}

async fn echo(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<String> {
    stream.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).await?;
    Ok(format!("echoed {:?}", String::from_utf8_lossy(&buf)))
}

async fn echo_peer() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// Just enough SOCKS5 (RFC 1928/1929) for the example: no-auth or any
/// username/password, CONNECT to IPv4 loopback targets.
async fn mini_socks5() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = proxy_one(sock).await;
            });
        }
    });
    Ok(addr)
}

async fn proxy_one(mut sock: TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    sock.read_exact(&mut head).await?;
    let mut methods = vec![0u8; usize::from(head[1])];
    sock.read_exact(&mut methods).await?;
    if methods.contains(&0x02) {
        sock.write_all(&[0x05, 0x02]).await?;
        let mut ver_len = [0u8; 2];
        sock.read_exact(&mut ver_len).await?;
        let mut user = vec![0u8; usize::from(ver_len[1])];
        sock.read_exact(&mut user).await?;
        let mut plen = [0u8; 1];
        sock.read_exact(&mut plen).await?;
        let mut pass = vec![0u8; usize::from(plen[0])];
        sock.read_exact(&mut pass).await?;
        println!("  proxy: credentials {:?}", String::from_utf8_lossy(&user));
        sock.write_all(&[0x01, 0x00]).await?;
    } else {
        sock.write_all(&[0x05, 0x00]).await?;
    }
    let mut req = [0u8; 10];
    sock.read_exact(&mut req).await?;
    let ip = std::net::Ipv4Addr::new(req[4], req[5], req[6], req[7]);
    let target = SocketAddr::from((ip, u16::from_be_bytes([req[8], req[9]])));
    if req[3] != 0x01 || !ip.is_loopback() {
        sock.write_all(&[0x05, 0x02, 0, 1, 0, 0, 0, 0, 0, 0])
            .await?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect(target).await?;
    sock.write_all(&[0x05, 0x00, 0, 1, 127, 0, 0, 1, 0, 0])
        .await?;
    tokio::io::copy_bidirectional(&mut sock, &mut upstream).await?;
    Ok(())
}
