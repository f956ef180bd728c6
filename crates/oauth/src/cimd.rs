//! Fetching client ID metadata documents (draft-ietf-oauth-client-id-metadata-document) safely.
//!
//! The `client_id` of such a client is an `https` URL; the document there names the client and its redirect URIs.
//! The fetch goes through [`airlock_egress::connect_checked_with`] ([`Purpose::Fetch`]: loopback and link-local are
//! never dialled, every resolved address is checked before any packet leaves) and, by default, also refuses private
//! and shared address space (RFC 1918, 100.64/10, fc00::/7): a document URL is named by outside data. No redirects
//! are followed; the body is capped in size and the whole fetch in time.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use airlock_egress::{
    BoxFuture, Dialer, IpPolicy, Purpose, Resolver, SystemResolver, TcpDialer, Timeouts,
    connect_checked_with,
};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use url::Url;

use crate::clients::{self, ClientKind, ClientRecord};
use crate::types::Millis;

/// Which addresses a document fetch may reach.
#[derive(Clone, Debug)]
pub struct CimdPolicy {
    /// Checked for every resolved address with [`Purpose::Fetch`]. Default: validation disabled (public
    /// addresses allowed); Airlock's loopback/link-local/unroutable rules always apply.
    pub ip_policy: IpPolicy,
    /// Also refuse RFC 1918, shared (100.64/10) and unique-local (fc00::/7) addresses. Default true.
    pub refuse_private: bool,
}

impl Default for CimdPolicy {
    fn default() -> Self {
        Self {
            ip_policy: IpPolicy::validation_disabled(),
            refuse_private: true,
        }
    }
}

/// Fetches client ID metadata documents.
#[derive(Clone)]
pub struct CimdFetcher {
    resolver: Arc<dyn Resolver>,
    dialer: Arc<dyn Dialer>,
    tls: Arc<rustls::ClientConfig>,
    policy: CimdPolicy,
    max_bytes: usize,
    timeout: Duration,
}

impl std::fmt::Debug for CimdFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CimdFetcher")
            .field("policy", &self.policy)
            .field("max_bytes", &self.max_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Documents larger than this are refused.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;
/// The whole fetch (resolve, connect, TLS, response) must finish within this.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl CimdFetcher {
    /// The system resolver, plain TCP and the Mozilla root store (webpki-roots).
    pub fn system() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::new(Arc::new(SystemResolver), Arc::new(TcpDialer), roots)
    }

    /// Custom resolver, dialer and trust anchors (tests: a static resolver and a test CA).
    pub fn new(
        resolver: Arc<dyn Resolver>,
        dialer: Arc<dyn Dialer>,
        roots: rustls::RootCertStore,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                // Unreachable with the ring provider's defaults; keep a config that trusts nothing.
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        Self {
            resolver,
            dialer,
            tls: Arc::new(tls),
            policy: CimdPolicy::default(),
            max_bytes: DEFAULT_MAX_BYTES,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_policy(mut self, policy: CimdPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn with_limits(mut self, max_bytes: usize, timeout: Duration) -> Self {
        self.max_bytes = max_bytes;
        self.timeout = timeout;
        self
    }

    /// Fetches and validates the document at `client_id`. Returns the client, the raw document and how long it may
    /// be cached.
    pub(crate) async fn fetch(
        &self,
        client_id: &str,
        now: Millis,
    ) -> Result<(ClientRecord, serde_json::Value, Duration), String> {
        let url = cimd_url(client_id)?;
        let fetch = self.fetch_bytes(&url);
        let (body, max_age) = match tokio::time::timeout(self.timeout, fetch).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(format!(
                    "fetching the client metadata document {client_id} took longer than {:?}",
                    self.timeout
                ));
            }
        };
        let (record, doc) = parse_document(client_id, &body, now)?;
        Ok((record, doc, max_age))
    }

    async fn fetch_bytes(&self, url: &Url) -> Result<(Vec<u8>, Duration), String> {
        let host = url.host_str().ok_or("no host")?.to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let guarded = PrivateGuard {
            inner: self.resolver.as_ref(),
            refuse_private: self.policy.refuse_private,
        };
        let timeouts = Timeouts {
            resolve: self.timeout,
            connect: self.timeout,
            total: self.timeout,
        };
        let (stream, _addr) = connect_checked_with(
            &host,
            port,
            &self.policy.ip_policy,
            Purpose::Fetch,
            &guarded,
            self.dialer.as_ref(),
            timeouts,
        )
        .await
        .map_err(|e| format!("client metadata document {url}: {e}"))?;
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| format!("client metadata host {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "airlock-oauth")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let result = async {
            if resp.status() != http::StatusCode::OK {
                return Err(format!(
                    "GET {url} answered {} (redirects are not followed; the document must be served at the client_id URL)",
                    resp.status()
                ));
            }
            if let Some(len) = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                && len > self.max_bytes
            {
                return Err(format!(
                    "client metadata document {url} is {len} bytes; at most {} are accepted",
                    self.max_bytes
                ));
            }
            let max_age = cache_max_age(resp.headers());
            let body = Limited::new(resp.into_body(), self.max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    format!(
                        "client metadata document {url}: {e} (at most {} bytes are accepted)",
                        self.max_bytes
                    )
                })?
                .to_bytes();
            Ok((body.to_vec(), max_age))
        }
        .await;
        conn_task.abort();
        result
    }
}

/// Checks that `client_id` is a valid CIMD URL: `https`, a host, a path other than `/`, no fragment, no credentials,
/// no dot segments, already in canonical form.
pub(crate) fn cimd_url(client_id: &str) -> Result<Url, String> {
    let url =
        Url::parse(client_id).map_err(|e| format!("client_id {client_id:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!("client_id URL {client_id:?} must use https"));
    }
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "client_id URL {client_id:?} must have a host and no credentials"
        ));
    }
    if url.fragment().is_some() || url.path() == "/" || url.path().is_empty() {
        return Err(format!(
            "client_id URL {client_id:?} must have a path and no fragment"
        ));
    }
    if url.as_str() != client_id {
        return Err(format!(
            "client_id URL {client_id:?} is not in canonical form ({:?})",
            url.as_str()
        ));
    }
    Ok(url)
}

#[derive(Deserialize)]
struct Document {
    client_id: String,
    client_name: Option<String>,
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
    application_type: Option<String>,
}

fn parse_document(
    client_id: &str,
    body: &[u8],
    now: Millis,
) -> Result<(ClientRecord, serde_json::Value), String> {
    let raw: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("client metadata document {client_id} is not JSON: {e}"))?;
    let doc: Document = serde_json::from_value(raw.clone()).map_err(|e| {
        format!("client metadata document {client_id} lacks client_id/redirect_uris: {e}")
    })?;
    if doc.client_id != client_id {
        return Err(format!(
            "client metadata document {client_id} names client_id {:?}; it must equal its own URL",
            doc.client_id
        ));
    }
    if doc.redirect_uris.is_empty() || doc.redirect_uris.len() > clients::MAX_REDIRECT_URIS {
        return Err(format!(
            "client metadata document {client_id} must list 1 to {} redirect_uris",
            clients::MAX_REDIRECT_URIS
        ));
    }
    for uri in &doc.redirect_uris {
        clients::validate_redirect_uri(uri)
            .map_err(|e| format!("client metadata document {client_id}: {e}"))?;
    }
    match doc.token_endpoint_auth_method.as_deref() {
        None | Some("none") => {}
        Some(other) => {
            return Err(format!(
                "client metadata document {client_id} asks for token_endpoint_auth_method {other:?}; only \"none\" is supported"
            ));
        }
    }
    let fallback = Url::parse(client_id)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| client_id.to_owned());
    let record = ClientRecord {
        client_id: client_id.to_owned(),
        kind: ClientKind::Cimd,
        name: clients::clean_name(doc.client_name.as_deref(), &fallback),
        application_type: clients::application_type(
            &doc.redirect_uris,
            doc.application_type.as_deref(),
        ),
        redirect_uris: doc.redirect_uris,
        auth_method: "none".into(),
        secret_hash: None,
        created_ms: now,
    };
    Ok((record, raw))
}

/// `Cache-Control: max-age` clamped to 1 min … 24 h (default 1 h; `no-store`/`no-cache`: 1 min).
fn cache_max_age(headers: &http::HeaderMap) -> Duration {
    let cc = headers
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut secs = 3600u64;
    for part in cc.split(',').map(str::trim) {
        if part.eq_ignore_ascii_case("no-store") || part.eq_ignore_ascii_case("no-cache") {
            secs = 60;
        } else if let Some(v) = part.strip_prefix("max-age=")
            && let Ok(v) = v.trim_matches('"').parse::<u64>()
        {
            secs = v;
        }
    }
    Duration::from_secs(secs.clamp(60, 24 * 3600))
}

/// Wraps a resolver and refuses answers containing private or shared addresses.
struct PrivateGuard<'a> {
    inner: &'a dyn Resolver,
    refuse_private: bool,
}

fn is_private(ip: IpAddr) -> bool {
    match airlock_egress::canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfec0
        }
    }
}

impl Resolver for PrivateGuard<'_> {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            let addrs = self.inner.resolve(host, port).await?;
            if self.refuse_private
                && let Some(bad) = addrs.iter().find(|a| is_private(a.ip()))
            {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} resolves to the private address {}; client metadata documents are only fetched from public addresses",
                        bad.ip()
                    ),
                ));
            }
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cimd_urls() {
        assert!(cimd_url("https://claude.ai/oauth/mcp-oauth-client-metadata").is_ok());
        assert!(cimd_url("https://claude.ai").is_err());
        assert!(cimd_url("https://claude.ai/").is_err());
        assert!(cimd_url("http://claude.ai/x").is_err());
        assert!(cimd_url("https://claude.ai/a/../x").is_err());
        assert!(cimd_url("https://u:p@claude.ai/x").is_err());
        assert!(cimd_url("https://claude.ai/x#f").is_err());
        assert!(cimd_url("https://CLAUDE.ai/x").is_err());
    }

    #[test]
    fn private_addresses() {
        for p in [
            "10.1.1.1",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                is_private(p.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
                "{p}"
            );
        }
        for p in ["203.0.113.5", "8.8.8.8", "2001:db8::1"] {
            assert!(
                !is_private(p.parse().unwrap_or(IpAddr::from([10, 0, 0, 0]))),
                "{p}"
            );
        }
    }

    #[test]
    fn documents() {
        let id = "https://claude.ai/oauth/claude-code-client-metadata";
        let ok = serde_json::json!({"client_id": id, "client_name": "Claude Code",
            "redirect_uris": ["http://localhost/callback", "http://127.0.0.1/callback"],
            "token_endpoint_auth_method": "none"});
        let (rec, _) =
            parse_document(id, ok.to_string().as_bytes(), 5).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rec.name, "Claude Code");
        assert_eq!(rec.application_type, "native");
        let wrong_id = serde_json::json!({"client_id": "https://evil.example/x", "redirect_uris": ["https://a.example/cb"]});
        assert!(parse_document(id, wrong_id.to_string().as_bytes(), 5).is_err());
        let bad_uri =
            serde_json::json!({"client_id": id, "redirect_uris": ["http://evil.example/cb"]});
        assert!(parse_document(id, bad_uri.to_string().as_bytes(), 5).is_err());
        let secret = serde_json::json!({"client_id": id, "redirect_uris": ["https://a.example/cb"],
            "token_endpoint_auth_method": "client_secret_basic"});
        assert!(parse_document(id, secret.to_string().as_bytes(), 5).is_err());
    }

    #[test]
    fn cache_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(cache_max_age(&h), Duration::from_secs(3600));
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, max-age=600"),
        );
        assert_eq!(cache_max_age(&h), Duration::from_secs(600));
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("max-age=5"),
        );
        assert_eq!(cache_max_age(&h), Duration::from_secs(60));
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        assert_eq!(cache_max_age(&h), Duration::from_secs(60));
    }
}
