//! hyper-util's legacy client over the dial stack (`HyperConnector`,
//! feature `hyper`): a local hyper server reached through a real SOCKS5
//! proxy (microsocks), names handed to the proxy, names resolved when
//! there is no proxy, and typed errors for what the connector does not
//! dial. The same client through a Tor onion service is in `tests/tor.rs`.

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use connmgr::{
    DialStack,
    hyper::{HyperConnector, UriError, UriErrorKind},
};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    client::legacy::{Client, connect::Connect},
    rt::{TokioExecutor, TokioIo},
};
use support::socks5::{Behaviour, FakeSocks5, RealSocks5};

const BODY: &str = "hello-hyper";

/// A hyper HTTP/1 server on loopback that answers [`BODY`] and records
/// each request's target as it was written on the wire.
async fn hyper_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind hyper server");
    let addr = listener.local_addr().expect("server addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    log.lock().expect("seen").push(req.uri().to_string());
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(BODY)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn client<C: Connect + Clone + Send + Sync + 'static>(connector: C) -> Client<C, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(connector)
}

/// GETs `uri` and returns the body, within 30 s.
async fn fetch<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, Empty<Bytes>>,
    uri: &str,
) -> Result<String, hyper_util::client::legacy::Error> {
    let uri = uri.parse().expect("uri");
    let response = tokio::time::timeout(Duration::from_secs(30), client.get(uri))
        .await
        .expect("a response in time")?;
    assert!(response.status().is_success(), "{response:?}");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    Ok(String::from_utf8(body.to_vec()).expect("utf-8 body"))
}

/// hyper's client fetches from a local hyper server through the dial stack
/// and a real SOCKS5 proxy; the request line is in origin form (the
/// connection is not an HTTP proxy's), and connections are pooled.
#[tokio::test]
async fn hyper_client_through_stack() {
    let (server, seen) = hyper_server().await;
    let proxy = RealSocks5::start(None).await;
    let connector = HyperConnector::new(DialStack::new().socks5(proxy.addr));
    let client = client(connector);
    let uri = format!("http://{server}/hello?x=1");
    assert_eq!(fetch(&client, &uri).await.expect("GET"), BODY);
    assert_eq!(fetch(&client, &uri).await.expect("GET again"), BODY);
    assert_eq!(*seen.lock().expect("seen"), ["/hello?x=1", "/hello?x=1"]);
}

/// With a proxy, a host name goes to the proxy as a name (no DNS query
/// here), as Tor wants it.
#[tokio::test]
async fn hyper_client_names_go_to_the_proxy() {
    let (server, _) = hyper_server().await;
    let proxy = FakeSocks5::start(Behaviour::Hosts(vec![("web.test".into(), server)]), None).await;
    let client = client(HyperConnector::new(DialStack::new().socks5(proxy.addr)));
    assert_eq!(
        fetch(&client, "http://web.test:8080/").await.expect("GET"),
        BODY
    );
    assert_eq!(proxy.connected_names(), ["web.test"]);
}

/// Without a proxy, a host name is resolved by the stack's resolver (the
/// system's) and its addresses dialled in turn: `localhost` reaches a
/// server on 127.0.0.1 whatever order the resolver gives `::1` and
/// `127.0.0.1` in.
#[tokio::test]
async fn hyper_client_resolves_names_without_proxy() {
    let (server, _) = hyper_server().await;
    let client = client(HyperConnector::new(DialStack::new()));
    let uri = format!("http://localhost:{}/", server.port());
    assert_eq!(fetch(&client, &uri).await.expect("GET"), BODY);
}

/// What the connector does not dial fails with a typed `UriError` inside
/// hyper's connect error: `https` (no TLS here) and a malformed onion name.
#[tokio::test]
async fn hyper_client_refuses_with_typed_errors() {
    let proxy = FakeSocks5::start(Behaviour::Proxy, None).await;
    let client = client(HyperConnector::new(DialStack::new().socks5(proxy.addr)));
    let onion = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscrydaaaa.onion";
    for (uri, kind) in [
        ("https://127.0.0.1/", UriErrorKind::UnsupportedScheme),
        (&format!("http://{onion}/")[..], UriErrorKind::InvalidHost),
    ] {
        let err = fetch(&client, uri).await.expect_err("refused");
        assert!(err.is_connect(), "{err:?}");
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut found = None;
        for _ in 0..8 {
            let Some(e) = source else { break };
            if let Some(u) = e.downcast_ref::<UriError>() {
                found = Some(u.kind());
                break;
            }
            source = e.source();
        }
        assert_eq!(found, Some(kind), "{uri}: {err:?}");
    }
}
