//! A tiny loopback HTTP/1.1 proxy that adds `Authorization: Bearer <token>` to every
//! request and changes nothing else (method, path, `Host`, `Origin`, body and the streamed
//! response all pass through). Used to point credential-less tools such as the MCP
//! conformance suite at the authenticated gateway.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::thread;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A running auth-injecting proxy; stops when dropped.
#[derive(Debug)]
pub struct AuthProxy {
    /// Where the proxy listens (127.0.0.1:random).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl AuthProxy {
    /// Starts a proxy on 127.0.0.1 (random port) forwarding to `upstream`.
    pub fn start(upstream: SocketAddr, token: &str) -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream, token)
            .unwrap_or_else(|e| panic!("auth proxy failed to start: {e}"))
    }

    /// Starts a proxy listening on `bind` forwarding to `upstream`; `Err` when it cannot
    /// listen there.
    pub fn start_on(bind: SocketAddr, upstream: SocketAddr, token: &str) -> Result<Self, String> {
        let auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| format!("token is not a valid header value: {e}"))?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(format!("tokio runtime: {e}")));
                    return;
                }
            };
            rt.block_on(serve(bind, upstream, auth, addr_tx, shutdown_rx));
        });
        let addr = match addr_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err("auth proxy thread died before listening".to_string()),
        };
        Ok(Self {
            addr,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for AuthProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    bind: SocketAddr,
    upstream: SocketAddr,
    auth: HeaderValue,
    addr_tx: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => {
            let _ = addr_tx.send(Err(format!("bind {bind}: {e}")));
            return;
        }
    };
    match listener.local_addr() {
        Ok(a) => {
            let _ = addr_tx.send(Ok(a));
        }
        Err(e) => {
            let _ = addr_tx.send(Err(format!("local_addr: {e}")));
            return;
        }
    }
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let client = client.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| forward(req, upstream, auth.clone(), client.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn forward(
    mut req: Request<Incoming>,
    upstream: SocketAddr,
    auth: HeaderValue,
    client: Client<HttpConnector, Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let uri: Uri = match format!("http://{upstream}{pq}").parse() {
        Ok(u) => u,
        Err(e) => return Ok(error_response(format!("bad uri: {e}"))),
    };
    *req.uri_mut() = uri;
    req.headers_mut().insert(AUTHORIZATION, auth);
    match client.request(req).await {
        Ok(resp) => Ok(resp.map(|b| b.boxed())),
        Err(e) => Ok(error_response(format!("auth proxy: upstream error: {e}"))),
    }
}

fn error_response(msg: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}
