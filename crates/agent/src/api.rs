//! The local control API: HTTP + JSON on 127.0.0.1, used by the CLI, the web UI and the tray.
//!
//! Every request must carry the bearer token from the 0600 runtime file, a `Host` naming this listener by loopback
//! address (a DNS-rebinding page resolves its own name to 127.0.0.1 but cannot change `Host`), and either no `Origin`
//! or this listener's own origin (no cross-site calls from web pages). The reference is `docs/control-api.md`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::error::AgentError;
use crate::state::{AgentState, LookupError, ServerView};

#[derive(Clone)]
struct Api {
    state: Arc<AgentState>,
    token: Arc<str>,
    port: u16,
    shutdown: tokio_util::sync::CancellationToken,
    sessions: Arc<crate::web::Sessions>,
}

/// `shutdown` ends the event streams, so open browser tabs and `airlock` clients do not hold the server open.
pub fn router(
    state: Arc<AgentState>,
    token: String,
    port: u16,
    shutdown: tokio_util::sync::CancellationToken,
) -> Router {
    let api = Api {
        state,
        token: token.into(),
        port,
        shutdown,
        sessions: Arc::new(crate::web::Sessions::default()),
    };
    let oauth_routes = match api.state.oauth.get() {
        Some(server) => airlock_oauth::control_router(server.clone()),
        None => Router::new(),
    };
    Router::new()
        .merge(oauth_routes)
        .route("/", get(|| async { crate::web::asset("index.html") }))
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>| async move { crate::web::asset(&path) }),
        )
        .route("/v1/session", post(session))
        .route("/v1/ui/code", post(ui_code))
        .route("/v1/ca", get(ca))
        .route("/v1/status", get(status))
        .route("/v1/servers", get(servers))
        .route("/v1/servers/{reference}", get(server))
        .route("/v1/servers/{reference}/expose", post(expose))
        .route("/v1/servers/{reference}/unexpose", post(unexpose))
        .route("/v1/servers/{reference}/url", get(url))
        .route("/v1/events", get(events))
        .route("/v1/pki/reload", post(pki_reload))
        .route("/v1/pki/rotate", post(pki_rotate))
        .route("/v1/pki/activate", post(pki_activate))
        .route("/v1/tunnel/token", post(tunnel_token))
        .route("/v1/sandbox/login", post(sandbox_login))
        .route("/v1/sandbox", get(sandbox_status).post(sandbox_set))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see docs/control-api.md",
    )
}

/// Requests that need no credential: the UI's static files and the login-code exchange.
fn is_public(method: &axum::http::Method, path: &str) -> bool {
    (method == axum::http::Method::GET && (path == "/" || path.starts_with("/ui/")))
        || (method == axum::http::Method::POST && path == "/v1/session")
}

/// Host, Origin and credential checks, in that order, before any handler runs. The credential is the bearer token
/// (CLI, tray) or a browser session cookie (web UI); a cookie-authenticated write must be JSON, which no cross-site
/// form can send.
async fn guard(State(api): State<Api>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if !host_allowed(headers, api.port) {
        return error(
            StatusCode::FORBIDDEN,
            "Host header must name this loopback listener",
        );
    }
    if !origin_allowed(headers, api.port) {
        return error(StatusCode::FORBIDDEN, "cross-origin requests are refused");
    }
    if is_public(request.method(), request.uri().path()) || token_ok(headers, &api.token) {
        return next.run(request).await;
    }
    if api.sessions.check(headers) {
        let writes = request.method() != axum::http::Method::GET;
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if writes && !json {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send Content-Type: application/json",
            );
        }
        return next.run(request).await;
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (the token is in run/agent.json under AIRLOCK_HOME)",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

pub(crate) fn host_allowed(headers: &HeaderMap, port: u16) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    host == format!("127.0.0.1:{port}") || host == format!("localhost:{port}")
}

pub(crate) fn origin_allowed(headers: &HeaderMap, port: u16) -> bool {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return true;
    };
    if origins.next().is_some() {
        return false;
    }
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.to_ascii_lowercase();
    origin == format!("http://127.0.0.1:{port}") || origin == format!("http://localhost:{port}")
}

fn token_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(presented) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return false;
    };
    bool::from(presented.trim().as_bytes().ct_eq(token.as_bytes()))
}

async fn status(State(api): State<Api>) -> Response {
    let state = &api.state;
    let servers = state.servers();
    let config = state.config();
    let cloudflared_token_stored = matches!(
        state.keystore.get(crate::tunnel::CLOUDFLARED_TOKEN).await,
        Ok(Some(_))
    );
    Json(json!({
        "running": true,
        "ready": state.is_ready(),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "home": state.home.root(),
        "config_path": state.home.config_path(),
        "api_url": format!("http://127.0.0.1:{}", api.port),
        "gateway": { "url": state.gateway_url() },
        "servers": {
            "discovered": servers.len(),
            "exposed": servers.iter().filter(|s| s.exposed).count(),
            "configured_exposed": config.servers.values().filter(|s| s.exposed).count(),
        },
        "diagnostics": state.diagnostics().len(),
        "keystore": state.keystore.backend().to_string(),
        "cloudflared_token_stored": cloudflared_token_stored,
        "anthropic": state.tunnel.get().map(|t| json!({
            "tunnel_domain": t.domain,
            "listen_addr": t.listen_addr,
            "ca_fingerprint": ca_fingerprint(state, &t.domain),
            "cloudflared": t.cloudflared.state().map(|s| serde_json::to_value(&s).unwrap_or_default()),
        })),
        "relay": state.relay.get().map(|r| r.status_json(r.domain().and_then(|d| ca_fingerprint(state, &d)))),
    }))
    .into_response()
}

fn ca_fingerprint(state: &AgentState, domain: &str) -> Option<String> {
    let store = crate::pki_store::PkiStore::new(
        &state.home.root().join("pki"),
        domain,
        &state.keystore,
        crate::pki_store::Validity::default(),
    )
    .ok()?;
    store
        .summaries()
        .into_iter()
        .find(|s| s.role == "active")
        .map(|s| s.fingerprint)
}

async fn pki_reload(State(api): State<Api>) -> Result<Response, ApiError> {
    Ok(Json(reload_all(&api).await?).into_response())
}

/// Hot-reloads the certificates of every running tunnel ingress (`/v1/pki/reload`, and after a rotation step).
async fn reload_all(api: &Api) -> Result<serde_json::Value, ApiError> {
    let fail = |e: AgentError| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut reloaded = false;
    let mut any = false;
    if let Some(tunnel) = api.state.tunnel.get() {
        any = true;
        reloaded |=
            crate::tunnel::reload_certificate(&api.state, &api.state.keystore, &tunnel.domain)
                .await
                .map_err(fail)?;
    }
    if let Some(relay) = api.state.relay.get() {
        any = true;
        reloaded |= crate::relay::reload_certificates(&api.state, relay)
            .await
            .map_err(fail)?;
    }
    if !any {
        return Ok(json!({ "reloaded": false, "reason": "no tunnel ingress runs" }));
    }
    Ok(json!({ "reloaded": reloaded }))
}

/// The tunnel domain whose CA `airlock ca …` and `/v1/ca` manage: the Anthropic tunnel's, else the relay's.
fn ca_domain(api: &Api) -> Result<String, ApiError> {
    match (api.state.tunnel.get(), api.state.relay.get()) {
        (Some(t), _) => Ok(t.domain.clone()),
        (None, Some(r)) => r.domain().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "the relay has not assigned a tunnel domain yet (no connection so far)",
            )
        }),
        (None, None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no tunnel is configured",
        )),
    }
}

fn pki_store<'a>(api: &'a Api, domain: &str) -> Result<crate::pki_store::PkiStore<'a>, ApiError> {
    crate::pki_store::PkiStore::new(
        &api.state.home.root().join("pki"),
        domain,
        &api.state.keystore,
        crate::pki_store::Validity::default(),
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Phase one of a CA rotation (as `airlock ca rotate`): the next CA, to register beside the current one.
async fn pki_rotate(State(api): State<Api>) -> Result<Response, ApiError> {
    let domain = ca_domain(&api)?;
    let store = pki_store(&api, &domain)?;
    let next = store
        .rotate(time::OffsetDateTime::now_utc())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let reload = reload_all(&api).await?;
    Ok(Json(json!({
        "tunnel_domain": domain,
        "pending": { "fingerprint": next.fingerprint_sha256_hex(), "pem": next.pem },
        "cas": store.summaries(),
        "reload": reload,
    }))
    .into_response())
}

/// Phase two (as `airlock ca activate`): the pending CA signs from now on; the listeners get a certificate from it.
async fn pki_activate(State(api): State<Api>) -> Result<Response, ApiError> {
    let domain = ca_domain(&api)?;
    let store = pki_store(&api, &domain)?;
    let (active, _) = store
        .activate(time::OffsetDateTime::now_utc())
        .await
        .map_err(|e| match e {
            AgentError::Invalid(m) => ApiError::new(StatusCode::CONFLICT, m),
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })?;
    let reload = reload_all(&api).await?;
    Ok(Json(json!({
        "tunnel_domain": domain,
        "active": { "fingerprint": active.fingerprint_sha256_hex() },
        "cas": store.summaries(),
        "reload": reload,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelTokenBody {
    token: String,
}

/// Stores cloudflared's tunnel token in the keystore (as `airlock tunnel set-token`). Never echoed.
async fn tunnel_token(
    State(api): State<Api>,
    body: Option<Json<TunnelTokenBody>>,
) -> Result<Response, ApiError> {
    let Some(Json(body)) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "send {\"token\": \"…\"} as JSON",
        ));
    };
    crate::tunnel::store_token(&api.state.keystore, &body.token)
        .await
        .map_err(|e| match e {
            AgentError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })?;
    // With the Anthropic tunnel running, cloudflared (re)starts with the new token now.
    let restarted = match api.state.tunnel.get() {
        Some(t) => {
            t.cloudflared.start(body.token.trim()).await;
            true
        }
        None => false,
    };
    Ok(Json(json!({
        "stored": true,
        "keystore": api.state.keystore.backend().to_string(),
        "tunnel_configured": api.state.tunnel.get().is_some(),
        "cloudflared_restarted": restarted,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxLoginBody {
    #[serde(default)]
    base_url: Option<String>,
    environment_id: String,
    environment_key: String,
}

/// Records the Managed Agents environment (as `airlock sandbox login`): key into the keystore, the rest into
/// config.toml. Answers with the sandbox status, which says whether a key is stored (never the key).
async fn sandbox_login(
    State(api): State<Api>,
    body: Option<Json<SandboxLoginBody>>,
) -> Result<Response, ApiError> {
    let Some(Json(body)) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "send {\"base_url\", \"environment_id\", \"environment_key\"} as JSON",
        ));
    };
    let control = sandbox_control(&api)?;
    let base_url = body
        .base_url
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| airlock_worker::DEFAULT_BASE_URL.to_string());
    crate::sandbox::login(
        &api.state.home.config_path(),
        &api.state.keystore,
        &base_url,
        &body.environment_id,
        &body.environment_key,
    )
    .await
    .map_err(|e| match e {
        AgentError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })?;
    Ok(Json(control.status(&api.state).await).into_response())
}

async fn servers(State(api): State<Api>) -> Response {
    Json(json!({
        "servers": api.state.servers(),
        "diagnostics": api.state.diagnostics(),
    }))
    .into_response()
}

/// An error answer: status + JSON body (`error`, and `candidates` for ambiguous references).
struct ApiError(StatusCode, serde_json::Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, json!({ "error": message.into() }))
    }
}

fn lookup(api: &Api, reference: &str) -> Result<ServerView, ApiError> {
    api.state.lookup(reference).map_err(|e| match e {
        LookupError::NotFound(r) => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no server matches `{r}`; `airlock servers` lists them"),
        ),
        LookupError::Ambiguous(candidates) => ApiError(
            StatusCode::CONFLICT,
            json!({
                "error": format!("`{reference}` matches several servers; use an id"),
                "candidates": candidates,
            }),
        ),
    })
}

async fn server(
    State(api): State<Api>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(lookup(&api, &reference)?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExposeBody {
    hostname: Option<String>,
}

async fn expose(
    State(api): State<Api>,
    Path(reference): Path<String>,
    body: Option<Json<ExposeBody>>,
) -> Result<Response, ApiError> {
    let view = lookup(&api, &reference)?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    match api.state.expose(&view.id, body.hostname.as_deref()).await {
        Ok(view) => Ok(Json(view).into_response()),
        Err(e @ AgentError::Invalid(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

async fn unexpose(
    State(api): State<Api>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let view = lookup(&api, &reference)?;
    api.state
        .unexpose(&view.id)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(lookup(&api, &view.id)?).into_response())
}

async fn url(State(api): State<Api>, Path(reference): Path<String>) -> Result<Response, ApiError> {
    let view = lookup(&api, &reference)?;
    let Some(url) = view.url.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{} is not exposed; run `airlock expose {}` first",
                view.name, view.id
            ),
        ));
    };
    let state = &api.state;
    let relay_ca = state
        .relay
        .get()
        .and_then(|r| r.ca_path())
        .map(|p| p.display().to_string());
    let anthropic_ca = state.tunnel.get().map(|t| {
        state
            .home
            .root()
            .join("pki")
            .join(&t.domain)
            .join("ca.pem")
            .display()
            .to_string()
    });
    let mut urls = vec![json!({ "kind": "loopback", "url": url, "ca_file": null })];
    if let Some(u) = &view.local_url {
        urls.push(json!({ "kind": "embedded", "url": u, "ca_file": relay_ca }));
    }
    if let Some(u) = &view.relay_url {
        urls.push(json!({ "kind": "relay", "url": u, "ca_file": relay_ca }));
    }
    if let Some(u) = &view.tunnel_url {
        urls.push(json!({ "kind": "anthropic", "url": u, "ca_file": anthropic_ca }));
    }
    Ok(Json(json!({
        "id": view.id,
        "name": view.name,
        "hostname": view.hostname,
        "url": url,
        "tunnel_url": view.tunnel_url,
        "relay_url": view.relay_url,
        "local_url": view.local_url,
        "relay_ca_file": relay_ca,
        "urls": urls,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    code: String,
}

/// Trades a one-time login code for a browser session cookie.
async fn session(
    State(api): State<Api>,
    body: Option<Json<SessionBody>>,
) -> Result<Response, ApiError> {
    let Some(Json(body)) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "send {\"code\": \"…\"} as JSON",
        ));
    };
    let Some(session) = api.sessions.redeem(body.code.trim()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this login link was used or has expired; run `airlock ui` again",
        ));
    };
    let mut resp = Json(json!({ "ok": true })).into_response();
    if let Ok(cookie) = header::HeaderValue::from_str(&crate::web::session_cookie_header(&session))
    {
        resp.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(resp)
}

/// A one-time login link for the web UI (bearer token only: `airlock ui`).
async fn ui_code(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !token_ok(&headers, &api.token) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "login links are issued to the CLI only",
        ));
    }
    let code = api.sessions.new_code();
    Ok(
        Json(json!({ "url": format!("http://127.0.0.1:{}/#code={code}", api.port) }))
            .into_response(),
    )
}

/// The CA certificates to keep registered for the tunnel domain.
async fn ca(State(api): State<Api>) -> Result<Response, ApiError> {
    let domain = match (api.state.tunnel.get(), api.state.relay.get()) {
        (Some(t), _) => t.domain.clone(),
        (None, Some(r)) => r.domain().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "the relay has not assigned a tunnel domain yet (no connection so far)",
            )
        })?,
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no tunnel is configured",
            ));
        }
    };
    let store = crate::pki_store::PkiStore::new(
        &api.state.home.root().join("pki"),
        &domain,
        &api.state.keystore,
        crate::pki_store::Validity::default(),
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({ "tunnel_domain": domain, "cas": store.summaries() })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxBody {
    enabled: bool,
}

fn sandbox_control(api: &Api) -> Result<Arc<crate::sandbox::SandboxControl>, ApiError> {
    api.state.sandbox.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sandbox worker is not available in this agent",
        )
    })
}

/// Isolation of this machine, the sandbox configuration and the worker's state.
async fn sandbox_status(State(api): State<Api>) -> Result<Response, ApiError> {
    let control = sandbox_control(&api)?;
    Ok(Json(control.status(&api.state).await).into_response())
}

/// Turns the sandbox worker on or off (and records the choice in config.toml); answers with the new status.
async fn sandbox_set(
    State(api): State<Api>,
    body: Option<Json<SandboxBody>>,
) -> Result<Response, ApiError> {
    let Some(Json(body)) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "send {\"enabled\": true} or {\"enabled\": false} as JSON",
        ));
    };
    let control = sandbox_control(&api)?;
    control
        .set_enabled(&api.state, body.enabled)
        .await
        .map_err(|e| {
            use crate::sandbox::SandboxControlError as E;
            let status = match e {
                E::NotReady(_) | E::NoIsolation(_) => StatusCode::CONFLICT,
                E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            ApiError::new(status, e.to_string())
        })?;
    Ok(Json(control.status(&api.state).await).into_response())
}

async fn events(State(api): State<Api>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = BroadcastStream::new(api.state.subscribe()).filter_map(|item| {
        // A lagging subscriber skips events; `servers_changed` makes it refetch anyway.
        let event = item.ok()?;
        let data = serde_json::to_string(&event).ok()?;
        Some(Ok(SseEvent::default().data(data)))
    });
    let hello = tokio_stream::once(Ok(SseEvent::default().data(r#"{"type":"hello"}"#)));
    let stream =
        futures::StreamExt::take_until(hello.chain(stream), api.shutdown.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn host_must_be_this_loopback_listener() {
        assert!(host_allowed(&headers(&[("host", "127.0.0.1:4000")]), 4000));
        assert!(host_allowed(&headers(&[("host", "LOCALHOST:4000")]), 4000));
        assert!(!host_allowed(&headers(&[("host", "127.0.0.1:4001")]), 4000));
        assert!(!host_allowed(
            &headers(&[("host", "evil.example:4000")]),
            4000
        ));
        assert!(!host_allowed(&headers(&[]), 4000));
    }

    #[test]
    fn origin_absent_or_same_origin() {
        assert!(origin_allowed(&headers(&[]), 4000));
        assert!(origin_allowed(
            &headers(&[("origin", "http://127.0.0.1:4000")]),
            4000
        ));
        assert!(!origin_allowed(
            &headers(&[("origin", "https://evil.example")]),
            4000
        ));
        assert!(!origin_allowed(&headers(&[("origin", "null")]), 4000));
        assert!(!origin_allowed(
            &headers(&[("origin", "http://127.0.0.1:4000"), ("origin", "http://x")]),
            4000
        ));
    }

    #[test]
    fn token_is_checked_exactly() {
        assert!(token_ok(
            &headers(&[("authorization", "Bearer abc")]),
            "abc"
        ));
        assert!(!token_ok(
            &headers(&[("authorization", "Bearer abd")]),
            "abc"
        ));
        assert!(!token_ok(
            &headers(&[("authorization", "Basic abc")]),
            "abc"
        ));
        assert!(!token_ok(&headers(&[]), "abc"));
    }
}
