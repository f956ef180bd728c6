//! Reverse proxy for MCP servers that already speak HTTP on a loopback or private address.
//!
//! Bodies stream in both directions (SSE is never buffered). Only an allowlist of request headers
//! is forwarded: the client's `Authorization`, `Cookie` and hop-by-hop headers never reach the
//! upstream (no token passthrough).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use axum::body::Body;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, Uri, header};
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{GatewayError, ingress::json_error};

pub(crate) type Client = HyperClient<HttpConnector, Body>;

pub(crate) fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new()).build(connector)
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
}

/// Loopback or private-range address (the only upstreams we proxy for now).
pub(crate) fn is_loopback_or_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            v6 == Ipv6Addr::LOCALHOST || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    v4.is_loopback() || v4.is_private()
}

impl HttpUpstream {
    pub(crate) fn new(url: &str) -> Result<Self, GatewayError> {
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
        let allowed = if host_bare.eq_ignore_ascii_case("localhost") {
            true
        } else {
            match host_bare.parse::<IpAddr>() {
                Ok(ip) => is_loopback_or_private(ip),
                Err(_) => {
                    return Err(refuse(
                        "the host must be an IP literal or `localhost` (hostnames are not resolved yet); public servers are reachable directly and need no gateway",
                    ));
                }
            }
        };
        if !allowed {
            return Err(refuse(
                "the address is not in a loopback or private range; public servers are reachable directly and need no gateway",
            ));
        }
        Ok(Self {
            scheme_authority: format!("http://{}", authority.as_str()),
        })
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
                tracing::warn!(upstream = %self.scheme_authority, "upstream request failed: {e}");
                json_error(
                    StatusCode::BAD_GATEWAY,
                    "the upstream MCP server is unreachable",
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
            "http://[fd00::1]:9000/mcp",
        ] {
            assert!(HttpUpstream::new(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn refuses_public_and_hostnames() {
        for url in [
            "http://8.8.8.8/mcp",
            "http://172.32.0.1/mcp",
            "http://example.com/mcp",
            "https://127.0.0.1/mcp",
            "http://[2001:db8::1]/mcp",
            "127.0.0.1:8080",
            "http://user:pw@127.0.0.1/",
        ] {
            assert!(
                matches!(
                    HttpUpstream::new(url),
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
