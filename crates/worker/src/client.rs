//! HTTP client of the work queue and sessions API: headers, `?beta=true`, error classification, SSE.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;

/// `anthropic-version` sent on every call.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `anthropic-beta` sent on every call.
pub const MANAGED_AGENTS_BETA: &str = "managed-agents-2026-04-01";
/// `anthropic-beta` of the skill download calls (added to the managed-agents one).
pub const SKILLS_BETA: &str = "managed-agents-2026-04-01,skills-2025-10-02";
/// `anthropic-beta` of the memory store calls (added to the managed-agents one).
pub const MEMORY_BETA: &str = "managed-agents-2026-04-01,agent-memory-2026-07-22";
/// Pages followed at most by a list (an event history of 1000-event pages, a memory store of
/// at most 2000 memories in pages of 20).
const MAX_PAGES: usize = 1000;

/// A failed API call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error status. `message` is the error body's message (never a credential).
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        body: Value,
    },
    /// Connection, timeout or protocol failure.
    #[error("transport: {0}")]
    Transport(String),
    /// The answer was not the JSON expected.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A 4xx that retrying will not fix (408, 409 and 429 are retried, as the SDKs do).
    pub fn is_fatal(&self) -> bool {
        matches!(self.status(), Some(s) if (400..500).contains(&s) && !matches!(s, 408 | 409 | 429))
    }
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
type Body = http_body_util::Full<bytes::Bytes>;

/// Thin client: one base URL, one HTTP connection pool; the credential is passed per call.
#[derive(Clone)]
pub struct ApiClient {
    http: hyper_util::client::legacy::Client<Connector, Body>,
    base: String,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish()
    }
}

/// One server-sent event of the session stream.
#[derive(Debug)]
pub enum StreamItem {
    Event(Value),
}

type Query<'a> = &'a [(&'a str, String)];

impl ApiClient {
    /// `base_url`: `https://…` (system roots, else Mozilla's) or `http://…` (loopback tests).
    pub fn new(base_url: &str, request_timeout: Duration) -> Result<Self, ApiError> {
        let base = base_url.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| ApiError::Transport(format!("base URL {base}: {e}")))?;
        if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
            return Err(ApiError::Transport(format!(
                "base URL {base}: must be https://host[:port] (or http:// for a local queue)"
            )));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(provider)
                .map_err(|e| ApiError::Transport(format!("TLS setup: {e}")))?,
        };
        let connector = builder.https_or_http().enable_all_versions().build();
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector);
        Ok(Self {
            http,
            base,
            timeout: request_timeout,
        })
    }

    fn url(&self, path: &str, query: Query<'_>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("beta", "true");
        for (k, v) in query {
            q.append_pair(k, v);
        }
        format!("{}{path}?{}", self.base, q.finish())
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        token: &str,
        query: Query<'_>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, ApiError> {
        let mut rb = http::Request::builder()
            .method(method)
            .uri(self.url(path, query))
            .header("authorization", format!("Bearer {token}"))
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header("anthropic-beta", MANAGED_AGENTS_BETA)
            .header(
                "user-agent",
                concat!("airlock-worker/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(h) = rb.headers_mut() {
            for (k, v) in headers {
                let name = http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| ApiError::Transport(format!("header {k}: {e}")))?;
                let value = http::HeaderValue::from_str(v)
                    .map_err(|e| ApiError::Transport(format!("header {k}: {e}")))?;
                h.insert(name, value);
            }
        }
        let payload = match body {
            Some(v) => {
                rb = rb.header("content-type", "application/json");
                bytes::Bytes::from(v.to_string())
            }
            None => bytes::Bytes::new(),
        };
        let req = rb
            .body(http_body_util::Full::new(payload))
            .map_err(|e| ApiError::Transport(format!("request: {e}")))?;
        self.http
            .request(req)
            .await
            .map_err(|e| ApiError::Transport(format!("{e}")))
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        token: &str,
        query: Query<'_>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, ApiError> {
        use http_body_util::BodyExt as _;
        let fut = async {
            let resp = self.send(method, path, token, query, headers, body).await?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ApiError::Transport(format!("reading the response: {e}")))?
                .to_bytes();
            if !(200..300).contains(&status) {
                return Err(status_error(status, &bytes));
            }
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::Decode(format!("invalid JSON (HTTP {status}): {e}")))
        };
        let limit = timeout.unwrap_or(self.timeout);
        tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
            Err(ApiError::Transport(format!(
                "request timed out after {limit:?}"
            )))
        })
    }

    /// `GET /v1/environments/{env}/work/poll`: one work item or `None`.
    pub async fn poll(
        &self,
        env: &str,
        key: &str,
        worker_id: &str,
        block_ms: Option<u64>,
        reclaim_older_than_ms: Option<u64>,
    ) -> Result<Option<Value>, ApiError> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(b) = block_ms {
            q.push(("block_ms", b.to_string()));
        }
        if let Some(r) = reclaim_older_than_ms {
            q.push(("reclaim_older_than_ms", r.to_string()));
        }
        let v = self
            .call(
                http::Method::GET,
                &format!("/v1/environments/{env}/work/poll"),
                key,
                &q,
                &[("anthropic-worker-id", worker_id)],
                None,
                None,
            )
            .await?;
        Ok(if v.is_null() { None } else { Some(v) })
    }

    pub async fn ack(&self, env: &str, work_id: &str, token: &str) -> Result<Value, ApiError> {
        let path = format!("/v1/environments/{env}/work/{work_id}/ack");
        self.call(http::Method::POST, &path, token, &[], &[], None, None)
            .await
    }

    pub async fn heartbeat(
        &self,
        env: &str,
        work_id: &str,
        token: &str,
        expected_last_heartbeat: &str,
        timeout: Duration,
    ) -> Result<Value, ApiError> {
        let path = format!("/v1/environments/{env}/work/{work_id}/heartbeat");
        let q = [(
            "expected_last_heartbeat",
            expected_last_heartbeat.to_string(),
        )];
        self.call(
            http::Method::POST,
            &path,
            token,
            &q,
            &[],
            None,
            Some(timeout),
        )
        .await
    }

    pub async fn stop(
        &self,
        env: &str,
        work_id: &str,
        token: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let path = format!("/v1/environments/{env}/work/{work_id}/stop");
        let body = serde_json::json!({ "force": force });
        self.call(
            http::Method::POST,
            &path,
            token,
            &[],
            &[],
            Some(&body),
            None,
        )
        .await
    }

    pub async fn get_session(&self, session_id: &str, token: &str) -> Result<Value, ApiError> {
        let path = format!("/v1/sessions/{session_id}");
        self.call(http::Method::GET, &path, token, &[], &[], None, None)
            .await
    }

    /// The whole event history, oldest first (follows `next_page`).
    pub async fn list_events(&self, session_id: &str, token: &str) -> Result<Vec<Value>, ApiError> {
        let path = format!("/v1/sessions/{session_id}/events");
        self.list_pages(&path, token, &[("limit", "1000".into())], &[], "events")
            .await
    }

    /// Every item of a paged list (`{"data": [...], "next_page": …}`), following `next_page` for at
    /// most [`MAX_PAGES`] pages.
    async fn list_pages(
        &self,
        path: &str,
        token: &str,
        query: Query<'_>,
        headers: &[(&str, &str)],
        what: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut q: Vec<(&str, String)> = query.to_vec();
            if let Some(p) = &page {
                q.push(("page", p.clone()));
            }
            let v = self
                .call(http::Method::GET, path, token, &q, headers, None, None)
                .await?;
            let Some(data) = v.get("data").and_then(Value::as_array) else {
                return Err(ApiError::Decode(format!("{what} list without `data`")));
            };
            out.extend(data.iter().cloned());
            match v.get("next_page").and_then(Value::as_str) {
                Some(p) if !p.is_empty() && !data.is_empty() => page = Some(p.to_string()),
                _ => return Ok(out),
            }
        }
        Err(ApiError::Decode(format!(
            "{what} list: more than {MAX_PAGES} pages"
        )))
    }

    pub async fn send_events(
        &self,
        session_id: &str,
        token: &str,
        events: &[Value],
    ) -> Result<Value, ApiError> {
        let path = format!("/v1/sessions/{session_id}/events");
        let body = serde_json::json!({ "events": events });
        self.call(
            http::Method::POST,
            &path,
            token,
            &[],
            &[],
            Some(&body),
            None,
        )
        .await
    }

    /// `GET /v1/skills/{id}/versions/{version}` (`version` may be an alias such as `latest`).
    pub async fn skill_version(
        &self,
        skill_id: &str,
        version: &str,
        token: &str,
    ) -> Result<Value, ApiError> {
        let path = format!("/v1/skills/{skill_id}/versions/{version}");
        let beta = [("anthropic-beta", SKILLS_BETA)];
        self.call(http::Method::GET, &path, token, &[], &beta, None, None)
            .await
    }

    /// `GET /v1/skills/{id}/versions/{version_id}/content`: the archive, at most `limit` bytes.
    pub async fn skill_content(
        &self,
        skill_id: &str,
        version_id: &str,
        token: &str,
        limit: usize,
    ) -> Result<Vec<u8>, ApiError> {
        use http_body_util::BodyExt as _;
        let path = format!("/v1/skills/{skill_id}/versions/{version_id}/content");
        let headers = [
            ("anthropic-beta", SKILLS_BETA),
            ("accept", "application/binary"),
        ];
        let fut = async {
            let resp = self
                .send(http::Method::GET, &path, token, &[], &headers, None)
                .await?;
            let status = resp.status().as_u16();
            let limited = http_body_util::Limited::new(resp.into_body(), limit);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| {
                    ApiError::Transport(format!("skill archive (limit {limit} bytes): {e}"))
                })?
                .to_bytes();
            if !(200..300).contains(&status) {
                return Err(status_error(status, &bytes));
            }
            Ok(bytes.to_vec())
        };
        tokio::time::timeout(self.timeout * 5, fut)
            .await
            .unwrap_or_else(|_| Err(ApiError::Transport("skill download timed out".into())))
    }

    /// Every memory of a store (`view=full` carries content, 20 a page; `basic` omits it, 100 a
    /// page), following `next_page`.
    pub async fn list_memories(
        &self,
        store_id: &str,
        token: &str,
        full: bool,
    ) -> Result<Vec<Value>, ApiError> {
        let path = format!("/v1/memory_stores/{store_id}/memories");
        let beta = [("anthropic-beta", MEMORY_BETA)];
        let (view, limit) = if full {
            ("full", "20")
        } else {
            ("basic", "100")
        };
        let q = [("view", view.to_string()), ("limit", limit.to_string())];
        let all = self.list_pages(&path, token, &q, &beta, "memories").await?;
        // Rollups of a prefix are not memories.
        Ok(all
            .into_iter()
            .filter(|m| m.get("type").and_then(Value::as_str) == Some("memory"))
            .collect())
    }

    /// One call of the memory API: `/v1/memory_stores/{store}/memories{tail}` with the memory beta.
    async fn memory_call(
        &self,
        method: http::Method,
        store_id: &str,
        tail: &str,
        token: &str,
        query: Query<'_>,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let path = format!("/v1/memory_stores/{store_id}/memories{tail}");
        let beta = [("anthropic-beta", MEMORY_BETA)];
        self.call(method, &path, token, query, &beta, body, None)
            .await
    }

    /// `GET /v1/memory_stores/{store}/memories/{id}` (with content).
    pub async fn get_memory(
        &self,
        store_id: &str,
        memory_id: &str,
        token: &str,
    ) -> Result<Value, ApiError> {
        let tail = format!("/{memory_id}");
        self.memory_call(http::Method::GET, store_id, &tail, token, &[], None)
            .await
    }

    /// `POST /v1/memory_stores/{store}/memories` `{path, content}`.
    pub async fn create_memory(
        &self,
        store_id: &str,
        token: &str,
        memory_path: &str,
        content: &str,
    ) -> Result<Value, ApiError> {
        let body = serde_json::json!({ "path": memory_path, "content": content });
        self.memory_call(http::Method::POST, store_id, "", token, &[], Some(&body))
            .await
    }

    /// `POST /v1/memory_stores/{store}/memories/{id}` with a `content_sha256` precondition: the
    /// server refuses (409) when the memory changed since `expected_sha256`.
    pub async fn update_memory(
        &self,
        store_id: &str,
        memory_id: &str,
        token: &str,
        content: &str,
        expected_sha256: &str,
    ) -> Result<Value, ApiError> {
        let tail = format!("/{memory_id}");
        let body = serde_json::json!({
            "content": content,
            "precondition": {"type": "content_sha256", "content_sha256": expected_sha256},
        });
        self.memory_call(http::Method::POST, store_id, &tail, token, &[], Some(&body))
            .await
    }

    /// `DELETE /v1/memory_stores/{store}/memories/{id}?expected_content_sha256=…`.
    pub async fn delete_memory(
        &self,
        store_id: &str,
        memory_id: &str,
        token: &str,
        expected_sha256: &str,
    ) -> Result<Value, ApiError> {
        let tail = format!("/{memory_id}");
        let q = [("expected_content_sha256", expected_sha256.to_string())];
        self.memory_call(http::Method::DELETE, store_id, &tail, token, &q, None)
            .await
    }

    /// Opens `GET /v1/sessions/{id}/events/stream` and returns a stream of parsed events.
    pub async fn stream_events(
        &self,
        session_id: &str,
        token: &str,
    ) -> Result<futures::stream::BoxStream<'static, Result<StreamItem, ApiError>>, ApiError> {
        use http_body_util::BodyExt as _;
        let path = format!("/v1/sessions/{session_id}/events/stream");
        let resp = tokio::time::timeout(
            self.timeout,
            self.send(
                http::Method::GET,
                &path,
                token,
                &[],
                &[("accept", "text/event-stream")],
                None,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(ApiError::Transport("event stream: no response".into())))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(status_error(status, &bytes));
        }
        let mut decoder = SseDecoder::default();
        let body = http_body_util::BodyStream::new(resp.into_body());
        let s = body
            .filter_map(|frame| {
                futures::future::ready(match frame {
                    Ok(f) => f.into_data().ok().map(Ok),
                    Err(e) => Some(Err(e)),
                })
            })
            .map(move |chunk| match chunk {
                Ok(b) => decoder.feed(&b),
                Err(e) => vec![Err(ApiError::Transport(e.to_string()))],
            })
            .flat_map(futures::stream::iter);
        Ok(s.boxed())
    }
}

fn status_error(status: u16, bytes: &[u8]) -> ApiError {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
    ApiError::Status {
        status,
        message,
        body,
    }
}

/// Incremental text/event-stream decoder (the WHATWG rules the SDKs follow).
#[derive(Default)]
struct SseDecoder {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

/// Upper bound of one SSE line; a longer line ends the stream as an error.
const MAX_SSE_LINE: usize = 16 * 1024 * 1024;

impl SseDecoder {
    fn feed(&mut self, chunk: &[u8]) -> Vec<Result<StreamItem, ApiError>> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(item) = self.line(&line) {
                out.push(item);
            }
        }
        if self.buf.len() > MAX_SSE_LINE {
            self.buf.clear();
            out.push(Err(ApiError::Decode("event stream line too long".into())));
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<Result<StreamItem, ApiError>> {
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data).join("\n");
            if data.is_empty() || event.as_deref() == Some("ping") {
                return None;
            }
            let parsed: Result<Value, _> = serde_json::from_str(&data);
            if event.as_deref() == Some("error") {
                let message = parsed
                    .as_ref()
                    .ok()
                    .and_then(|v| v.pointer("/error/message").and_then(Value::as_str))
                    .unwrap_or("error event")
                    .to_string();
                return Some(Err(ApiError::Status {
                    status: 500,
                    message,
                    body: parsed.unwrap_or(Value::Null),
                }));
            }
            return Some(
                parsed
                    .map(StreamItem::Event)
                    .map_err(|e| ApiError::Decode(format!("event data is not JSON: {e}"))),
            );
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_decoder_splits_events_and_skips_pings() {
        let mut d = SseDecoder::default();
        let mut got = d.feed(b"event: ping\ndata: {}\n\nevent: agent.tool_use\r\ndata: {\"type\":");
        assert!(got.is_empty());
        got = d.feed(b"\"agent.tool_use\",\"id\":\"x\"}\r\n\r\n: comment\n\ndata: [1]\n\n");
        assert_eq!(got.len(), 2);
        match &got[0] {
            Ok(StreamItem::Event(v)) => assert_eq!(v["id"], "x"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn fatal_classification_matches_the_sdks() {
        let e = |s| ApiError::Status {
            status: s,
            message: String::new(),
            body: Value::Null,
        };
        assert!(e(401).is_fatal());
        assert!(e(412).is_fatal());
        assert!(!e(409).is_fatal());
        assert!(!e(429).is_fatal());
        assert!(!e(408).is_fatal());
        assert!(!e(503).is_fatal());
        assert!(!ApiError::Transport("x".into()).is_fatal());
    }
}
