//! hyper-util's legacy client over the dial stack (`HyperConnector`).
//!
//! With no arguments it starts a small HTTP server on 127.0.0.1 and fetches
//! from it through the stack, by IP and by the name `localhost` (resolved by
//! the stack's resolver, the system's): no network, no configuration.
//!
//! With a SOCKS5 proxy and a URL it fetches that URL through the proxy, the
//! host name (an onion service, say) resolved by the proxy:
//!
//! ```text
//! cargo run --example hyper_client --features hyper
//! cargo run --example hyper_client --features hyper -- 127.0.0.1:9050 http://<56 characters>.onion/
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use connmgr::{BoxError, DialStack, hyper::HyperConnector};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (stack, uris) = match args.as_slice() {
        [proxy, uri] => (DialStack::new().socks5(proxy.parse()?), vec![uri.clone()]),
        [] => {
            let server = serve().await?;
            let uris = vec![
                format!("http://{server}/by-ip"),
                format!("http://localhost:{}/by-name", server.port()),
            ];
            (DialStack::new(), uris)
        }
        _ => return Err("usage: hyper_client [SOCKS5-PROXY URL]".into()),
    };
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HyperConnector::new(stack));
    for uri in uris {
        let response = client.get(uri.parse()?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("GET {uri}: {status}, {:?}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// A hyper server on 127.0.0.1 that answers with the request's path.
async fn serve() -> Result<std::net::SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    let text = format!("hello from {}", req.uri().path());
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                });
                let io = hyper_util::rt::TokioIo::new(sock);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
