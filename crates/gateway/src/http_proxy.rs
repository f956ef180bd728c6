//! Reverse proxy for MCP servers that already speak HTTP on a loopback or private address.
//!
//! Bodies stream in both directions (SSE is never buffered). Only an allowlist of request headers
//! is forwarded: the client's `Authorization`, `Cookie` and hop-by-hop headers never reach the
//! upstream (no token passthrough).

use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use airlock_egress::{BoxStream, EgressError, Purpose};
use axum::body::Body;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, Uri, header};
use hyper_util::{
    client::legacy::{
        Client as HyperClient,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo},
};

use crate::{Egress, GatewayError, ingress::json_error};

pub(crate) type Client = HyperClient<EgressConnector, Body>;

pub(crate) fn client(egress: Egress) -> Client {
    HyperClient::builder(TokioExecutor::new()).build(EgressConnector(Arc::new(egress)))
}

/// Dials upstreams through `airlock-egress`: the name is resolved once, every resolved address is checked against
/// the IP policy, and only checked addresses are dialled — a hostname that resolves to a metadata or public address
/// is refused before any packet is sent.
#[derive(Clone)]
pub(crate) struct EgressConnector(Arc<Egress>);

/// A dialled upstream connection, as hyper's client wants it.
pub(crate) struct EgressConn(TokioIo<BoxStream>);

impl Connection for EgressConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for EgressConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for EgressConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower::Service<Uri> for EgressConnector {
    type Response = EgressConn;
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<EgressConn, EgressError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let egress = self.0.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let (stream, addr) = airlock_egress::connect_checked(
                &host,
                port,
                &egress.policy,
                Purpose::UserExposed,
                egress.resolver.as_ref(),
                egress.dialer.as_ref(),
            )
            .await?;
            tracing::debug!(%host, %addr, "upstream connected");
            Ok(EgressConn(TokioIo::new(stream)))
        })
    }
}

/// Request headers forwarded to the upstream (plus any `mcp-*` header).
const FORWARDED_REQUEST_HEADERS: &[HeaderName] = &[
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::CACHE_CONTROL,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::USER_AGENT,
];

/// Response headers never passed back to the client.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
];

pub(crate) struct HttpUpstream {
    scheme_authority: String,
    path: String,
}

impl HttpUpstream {
    pub(crate) fn new(url: &str, policy: &airlock_egress::IpPolicy) -> Result<Self, GatewayError> {
        let refuse = |reason: &str| GatewayError::UpstreamRefused {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| refuse("not a valid absolute URL (expected http://HOST:PORT/path)"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => {
                return Err(refuse(
                    "only http:// upstreams on loopback/private addresses are supported",
                ));
            }
            None => return Err(refuse("missing scheme (expected http://HOST:PORT/path)")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| refuse("missing host (expected http://HOST:PORT/path)"))?;
        if authority.as_str().contains('@') {
            return Err(refuse("credentials in the URL are not supported"));
        }
        let host = authority.host();
        let host_bare = host.trim_start_matches('[').trim_end_matches(']');
        // IP literals are checked now for a clear error at expose time; names are checked on every dial, against
        // the addresses they resolve to.
        if let Ok(ip) = host_bare.parse::<IpAddr>() {
            policy.check(ip, Purpose::UserExposed).map_err(|e| {
                refuse(&format!(
                    "{e}; public servers are reachable directly and need no gateway"
                ))
            })?;
        }
        Ok(Self {
            scheme_authority: format!("http://{}", authority.as_str()),
            path: uri.path().to_string(),
        })
    }

    /// The URL's path (`/` when it has none): where the upstream's MCP endpoint is.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) async fn handle(
        &self,
        client: &Client,
        req: Request<Body>,
        max_body_bytes: usize,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let uri: Uri = match format!("{}{}", self.scheme_authority, path_and_query).parse() {
            Ok(u) => u,
            Err(_) => return json_error(StatusCode::BAD_REQUEST, "invalid request path"),
        };
        let mut out = Request::builder().method(parts.method).uri(uri);
        if let Some(h) = out.headers_mut() {
            copy_request_headers(&parts.headers, h);
        }
        let body = Body::new(http_body_util::Limited::new(body, max_body_bytes));
        let out = match out.body(body) {
            Ok(r) => r,
            Err(_) => return json_error(StatusCode::BAD_REQUEST, "invalid request"),
        };
        match client.request(out).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Err(e) => {
                // The egress refusal (e.g. `IP validation failed: … is not a private address`) is the useful part.
                let cause = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<EgressError>())
                    .map(|e| e.to_string());
                tracing::warn!(upstream = %self.scheme_authority, cause = ?cause, "upstream request failed: {e}");
                json_error(
                    StatusCode::BAD_GATEWAY,
                    &cause.unwrap_or_else(|| "the upstream MCP server is unreachable".to_string()),
                )
            }
        }
    }
}

pub(crate) fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let keep = FORWARDED_REQUEST_HEADERS.contains(name)
            || name.as_str().starts_with("mcp-")
            || name.as_str() == "last-event-id";
        if keep {
            to.append(name.clone(), value.clone());
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for n in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_and_private() {
        for url in [
            "http://127.0.0.1:8080/mcp",
            "http://localhost:3000/mcp",
            "http://10.1.2.3/mcp",
            "http://192.168.1.4:80/",
            "http://172.16.0.1:1/x",
            "http://[::1]:9000/mcp",
        ] {
            assert!(HttpUpstream::new(url, &Default::default()).is_ok(), "{url}");
        }
    }

    #[test]
    fn refuses_public_literals_and_bad_urls() {
        for url in [
            "http://8.8.8.8/mcp",
            "http://172.32.0.1/mcp",
            "http://169.254.169.254/latest",
            // Like Anthropic's proxy, the default policy is IPv4 RFC 1918 (plus loopback for exposed servers).
            "http://[fd00::1]:9000/mcp",
            "https://127.0.0.1/mcp",
            "http://[2001:db8::1]/mcp",
            "127.0.0.1:8080",
            "http://user:pw@127.0.0.1/",
        ] {
            assert!(
                matches!(
                    HttpUpstream::new(url, &Default::default()),
                    Err(GatewayError::UpstreamRefused { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn header_allowlist() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Bearer x"
                .parse()
                .unwrap_or(http::HeaderValue::from_static("x")),
        );
        h.insert(header::COOKIE, http::HeaderValue::from_static("a=b"));
        h.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        h.insert("mcp-session-id", http::HeaderValue::from_static("s"));
        h.insert(
            "mcp-protocol-version",
            http::HeaderValue::from_static("2025-11-25"),
        );
        h.insert("last-event-id", http::HeaderValue::from_static("1"));
        h.insert(
            header::ACCEPT,
            http::HeaderValue::from_static("text/event-stream"),
        );
        let mut out = HeaderMap::new();
        copy_request_headers(&h, &mut out);
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert!(out.get(header::COOKIE).is_none());
        assert!(out.get(header::CONNECTION).is_none());
        assert_eq!(out.len(), 4);
    }
}
