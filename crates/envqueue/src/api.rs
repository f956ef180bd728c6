//! The HTTP surface: Anthropic's paths, headers, JSON shapes and error bodies.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::memory::{MAX_PAGE_BASIC, MAX_PAGE_FULL, MemoryQuery, parse_page_cursor};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio_stream::wrappers::BroadcastStream;

use crate::store::{Caller, DEFAULT_RECLAIM_MS, Error, EventQuery, Store};

/// The beta every call of this API carries in `anthropic-beta`.
pub const MANAGED_AGENTS_BETA: &str = "managed-agents-2026-04-01";
/// The beta of the memory store endpoints (which also accept [`MANAGED_AGENTS_BETA`]).
pub const AGENT_MEMORY_BETA: &str = "agent-memory-2026-07-22";

/// The router serving the work queue and sessions API over `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/v1/environments/{env}/work/poll", get(poll))
        .route("/v1/environments/{env}/work/stats", get(stats))
        .route("/v1/environments/{env}/work", get(list_work))
        .route(
            "/v1/environments/{env}/work/{work}",
            get(retrieve_work).post(update_work),
        )
        .route("/v1/environments/{env}/work/{work}/ack", post(ack))
        .route(
            "/v1/environments/{env}/work/{work}/heartbeat",
            post(heartbeat),
        )
        .route("/v1/environments/{env}/work/{work}/stop", post(stop))
        .route("/v1/sessions", post(create_session))
        .route("/v1/sessions/{sid}", get(get_session))
        .route("/v1/sessions/{sid}/archive", post(archive_session))
        .route(
            "/v1/sessions/{sid}/events",
            get(list_events).post(send_events),
        )
        .route("/v1/sessions/{sid}/events/stream", get(stream_events))
        .route(
            "/v1/memory_stores",
            post(create_memory_store).get(list_memory_stores),
        )
        .route("/v1/memory_stores/{store}", get(get_memory_store))
        .route(
            "/v1/memory_stores/{store}/memories",
            get(list_memories).post(create_memory),
        )
        .route(
            "/v1/memory_stores/{store}/memories/{mem}",
            get(get_memory).post(update_memory).delete(delete_memory),
        )
        .fallback(not_found)
        .with_state(store)
}

/// An error answered as `{"type": "error", "error": {...}}`.
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    extra: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            extra: None,
        }
    }
    fn invalid(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", m)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found_error", m),
            Error::Invalid(m) => ApiError::invalid(m),
            Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict_error", m),
            Error::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "permission_error", m),
            Error::PreconditionFailed(m) => {
                ApiError::new(StatusCode::CONFLICT, "memory_precondition_failed_error", m)
            }
            Error::PathConflict {
                message,
                memory_id,
                path,
            } => {
                let mut err =
                    ApiError::new(StatusCode::CONFLICT, "memory_path_conflict_error", message);
                err.extra = Some(json!({
                    "conflicting_memory_id": memory_id,
                    "conflicting_path": path,
                }));
                err
            }
            Error::LeaseMismatch(state) => {
                let mut err = ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "invalid_request_error",
                    "expected_last_heartbeat does not match the stored heartbeat, so another worker may hold the lease",
                );
                err.extra = Some(json!({
                    "error_code": "heartbeat_precondition_failed",
                    "details": {"error_code": "heartbeat_precondition_failed", "current_state": state},
                }));
                err
            }
            other => {
                tracing::error!(error = %other, "envqueue internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"type": self.kind, "message": self.message});
        if let (Some(Value::Object(extra)), Value::Object(e)) = (self.extra, &mut error) {
            e.extend(extra);
        }
        (self.status, Json(json!({"type": "error", "error": error}))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "Not found")
}

/// Checks the version/beta headers and resolves the credential.
async fn caller(store: &Store, headers: &HeaderMap) -> Result<Caller, ApiError> {
    caller_with(store, headers, &[MANAGED_AGENTS_BETA]).await
}

/// Like [`caller`], accepting any of `betas` in `anthropic-beta` (comma-separated or repeated).
async fn caller_with(
    store: &Store,
    headers: &HeaderMap,
    betas: &[&str],
) -> Result<Caller, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let api_key = header("x-api-key")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let bearer = header("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if api_key.is_none() && bearer.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header or Authorization: Bearer credential is required",
        ));
    }
    let resolved = store.authenticate(api_key, bearer).await?;
    let Some(c) = resolved else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid credential",
        ));
    };
    if header("anthropic-version").is_none() {
        return Err(ApiError::invalid("anthropic-version: header is required"));
    }
    let beta_ok = headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|b| betas.contains(&b.trim()));
    if !beta_ok {
        let want = betas
            .iter()
            .map(|b| format!("`{b}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        return Err(ApiError::invalid(format!(
            "anthropic-beta: this endpoint is in beta; send {want}"
        )));
    }
    Ok(c)
}

fn env_mismatch(env: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found_error",
        format!("environment {env} not found"),
    )
}

/// Callers allowed on per-item work calls: the environment key, or that item's sessions token
/// (and the API key where `api_ok`).
fn item_caller(c: &Caller, env: &str, work: &str, api_ok: bool) -> Result<(), ApiError> {
    if c.env() != env {
        return Err(env_mismatch(env));
    }
    match c {
        Caller::Worker { .. } => Ok(()),
        Caller::Api { .. } if api_ok => Ok(()),
        Caller::Item { work_id, .. } if work_id == work => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "this credential is not accepted for this work item",
        )),
    }
}

fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn query_u64(pairs: &[(String, String)], key: &str) -> Result<Option<u64>, ApiError> {
    match pairs.iter().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) if v.is_empty() => Ok(None),
        Some((_, v)) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("{key}: must be a non-negative integer"))),
    }
}

async fn poll(
    State(store): State<Store>,
    Path(env): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    if c.env() != env {
        return Err(env_mismatch(&env));
    }
    if !matches!(c, Caller::Worker { .. }) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "polling requires the environment key (Authorization: Bearer)",
        ));
    }
    let pairs = query_pairs(&q);
    let block_ms = query_u64(&pairs, "block_ms")?;
    if let Some(b) = block_ms
        && !(1..=999).contains(&b)
    {
        return Err(ApiError::invalid("block_ms: must be between 1 and 999"));
    }
    let reclaim = query_u64(&pairs, "reclaim_older_than_ms")?.unwrap_or(DEFAULT_RECLAIM_MS);
    let worker_id = headers
        .get("anthropic-worker-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(block_ms.unwrap_or(0));
    let notify = store.notifier(&env);
    let mut permit = None;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(item) = store.try_claim(&env, reclaim, worker_id.clone()).await? {
            return Ok(Json(item).into_response());
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Json(Value::Null).into_response());
        }
        if permit.is_none() {
            match store.inner.poll_waiters.clone().try_acquire_owned() {
                Ok(p) => permit = Some(p),
                // Too many long polls held open: answer empty now.
                Err(_) => return Ok(Json(Value::Null).into_response()),
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn ack(
    State(store): State<Store>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    item_caller(&c, &env, &work, false)?;
    Ok(Json(store.ack(&c, &work).await?).into_response())
}

async fn heartbeat(
    State(store): State<Store>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    item_caller(&c, &env, &work, false)?;
    let pairs = query_pairs(&q);
    let expected = pairs
        .iter()
        .find(|(k, _)| k == "expected_last_heartbeat")
        .map(|(_, v)| v.clone());
    let ttl = query_u64(&pairs, "desired_ttl_seconds")?;
    Ok(Json(store.heartbeat(&c, &work, expected, ttl).await?).into_response())
}

async fn stop(
    State(store): State<Store>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    item_caller(&c, &env, &work, true)?;
    let force = if body.is_empty() {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("body: invalid JSON: {e}")))?;
        match v.get("force") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid("force: must be a boolean")),
        }
    };
    Ok(Json(store.stop(&c, &work, force).await?).into_response())
}

async fn retrieve_work(
    State(store): State<Store>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    item_caller(&c, &env, &work, true)?;
    Ok(Json(store.retrieve_work(&env, &work).await?).into_response())
}

async fn update_work(
    State(store): State<Store>,
    Path((env, work)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    item_caller(&c, &env, &work, true)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("body: invalid JSON: {e}")))?;
    let Some(Value::Object(patch)) = v.get("metadata").cloned() else {
        return Err(ApiError::invalid("metadata: an object is required"));
    };
    Ok(Json(store.update_work_metadata(&env, &work, patch).await?).into_response())
}

fn env_caller(c: &Caller, env: &str) -> Result<(), ApiError> {
    if c.env() != env {
        return Err(env_mismatch(env));
    }
    if matches!(c, Caller::Item { .. }) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "a sessions token is scoped to one work item",
        ));
    }
    Ok(())
}

async fn list_work(
    State(store): State<Store>,
    Path(env): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    env_caller(&c, &env)?;
    let pairs = query_pairs(&q);
    let limit = query_u64(&pairs, "limit")?.unwrap_or(20).clamp(1, 1000) as usize;
    let page = match pairs.iter().find(|(k, _)| k == "page") {
        None => None,
        Some((_, p)) if p.is_empty() => None,
        Some((_, p)) => Some(
            p.strip_prefix("off_")
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| ApiError::invalid("page: not a cursor returned by this API"))?,
        ),
    };
    Ok(Json(store.list_work(&env, limit, page).await?).into_response())
}

async fn stats(
    State(store): State<Store>,
    Path(env): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    env_caller(&c, &env)?;
    Ok(Json(store.stats(&env).await?).into_response())
}

async fn create_session(
    State(store): State<Store>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    let Caller::Api { env } = &c else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "creating a session requires the API key (x-api-key)",
        ));
    };
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("body: invalid JSON: {e}")))?;
    Ok(Json(store.create_session(env, v).await?).into_response())
}

async fn get_session(
    State(store): State<Store>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    Ok(Json(store.get_session(&c, &sid).await?).into_response())
}

async fn archive_session(
    State(store): State<Store>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    if !matches!(c, Caller::Api { .. }) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "archiving a session requires the API key (x-api-key)",
        ));
    }
    Ok(Json(store.archive_session(&c, &sid).await?).into_response())
}

async fn send_events(
    State(store): State<Store>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("body: invalid JSON: {e}")))?;
    let Some(Value::Array(events)) = v.get("events").cloned() else {
        return Err(ApiError::invalid("events: an array is required"));
    };
    if events.len() > 100 {
        return Err(ApiError::invalid("events: at most 100 events per request"));
    }
    let stored = store.send_events(&c, &sid, events).await?;
    Ok(Json(json!({ "data": stored })).into_response())
}

async fn list_events(
    State(store): State<Store>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    let pairs = query_pairs(&q);
    let mut query = EventQuery {
        limit: query_u64(&pairs, "limit")?.unwrap_or(100).clamp(1, 1000) as usize,
        ..EventQuery::default()
    };
    for (k, v) in &pairs {
        match k.as_str() {
            "order" => match v.as_str() {
                "asc" => query.order_desc = false,
                "desc" => query.order_desc = true,
                _ => return Err(ApiError::invalid("order: asc or desc")),
            },
            "page" if !v.is_empty() => {
                query.page = Some(
                    v.strip_prefix("seq_")
                        .and_then(|n| n.parse::<i64>().ok())
                        .ok_or_else(|| {
                            ApiError::invalid("page: not a cursor returned by this API")
                        })?,
                );
            }
            "types" | "types[]" => query
                .types
                .extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_string)),
            "created_at[gt]" => query.created.push((">", v.clone())),
            "created_at[gte]" => query.created.push((">=", v.clone())),
            "created_at[lt]" => query.created.push(("<", v.clone())),
            "created_at[lte]" => query.created.push(("<=", v.clone())),
            _ => {}
        }
    }
    Ok(Json(store.list_events(&c, &sid, query).await?).into_response())
}

async fn stream_events(
    State(store): State<Store>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let c = caller(&store, &headers).await?;
    store.check_session(&c, &sid).await?;
    let Ok(permit) = store.inner.stream_permits.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "too many open event streams",
        ));
    };
    let rx = store.subscribe(&sid);
    // A subscriber that falls behind is dropped; it reconnects and reconciles with the list.
    let stream = BroadcastStream::new(rx)
        .take_while(|r| futures::future::ready(r.is_ok()))
        .filter_map(move |r| {
            let _held = &permit;
            futures::future::ready(r.ok().map(|ev| {
                let t = ev
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("message")
                    .to_string();
                Ok::<Event, Infallible>(Event::default().event(t).data(ev.to_string()))
            }))
        });
    let keepalive = KeepAlive::new()
        .interval(store.options().stream_keepalive)
        .event(Event::default().event("ping").data("{\"type\":\"ping\"}"));
    Ok(Sse::new(stream).keep_alive(keepalive).into_response())
}

/// Resolves the caller of a memory endpoint: the API key or a sessions token; the environment
/// key is refused as the API documents.
async fn memory_caller(store: &Store, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let c = caller_with(store, headers, &[AGENT_MEMORY_BETA, MANAGED_AGENTS_BETA]).await?;
    if matches!(c, Caller::Worker { .. }) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            crate::memory::ENV_KEY_REFUSED,
        ));
    }
    Ok(c)
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("body: invalid JSON: {e}")))
}

async fn create_memory_store(
    State(store): State<Store>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let c = memory_caller(&store, &headers).await?;
    let Caller::Api { env } = &c else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "creating a memory store requires the API key (x-api-key)",
        ));
    };
    let v = json_body(&body)?;
    Ok(Json(store.create_memory_store(env, v).await?).into_response())
}

async fn list_memory_stores(
    State(store): State<Store>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let c = memory_caller(&store, &headers).await?;
    let Caller::Api { env } = &c else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "listing memory stores requires the API key (x-api-key)",
        ));
    };
    let pairs = query_pairs(&q);
    let limit = match query_u64(&pairs, "limit")? {
        None => 20,
        Some(l @ 1..=100) => l as usize,
        Some(_) => return Err(ApiError::invalid("limit: must be between 1 and 100")),
    };
    let offset = match pairs.iter().find(|(k, _)| k == "page") {
        None => 0,
        Some((_, p)) if p.is_empty() => 0,
        Some((_, p)) => p
            .strip_prefix("page_")
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid("page: not a cursor returned by this API"))?,
    };
    Ok(Json(store.list_memory_stores(env, limit, offset).await?).into_response())
}

async fn get_memory_store(
    State(store): State<Store>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let c = memory_caller(&store, &headers).await?;
    Ok(Json(store.get_memory_store(&c, &id).await?).into_response())
}

fn view_full(pairs: &[(String, String)], default_full: bool) -> Result<bool, ApiError> {
    match pairs
        .iter()
        .find(|(k, _)| k == "view")
        .map(|(_, v)| v.as_str())
    {
        None | Some("") => Ok(default_full),
        Some("basic") => Ok(false),
        Some("full") => Ok(true),
        Some(_) => Err(ApiError::invalid("view: basic or full")),
    }
}

async fn list_memories(
    State(store): State<Store>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let c = memory_caller(&store, &headers).await?;
    let pairs = query_pairs(&q);
    let full = view_full(&pairs, false)?;
    let limit = match query_u64(&pairs, "limit")? {
        None => 20,
        Some(l) if (1..=MAX_PAGE_BASIC as u64).contains(&l) => l as usize,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "limit: must be between 1 and {MAX_PAGE_BASIC}"
            )));
        }
    };
    // A full page holds at most 20 memories, whatever the limit.
    let limit = if full {
        limit.min(MAX_PAGE_FULL)
    } else {
        limit
    };
    let after = match pairs.iter().find(|(k, _)| k == "page") {
        None => None,
        Some((_, p)) if p.is_empty() => None,
        Some((_, p)) => Some(parse_page_cursor(p)?),
    };
    let prefix = match pairs.iter().find(|(k, _)| k == "path_prefix") {
        None => "/".to_string(),
        Some((_, p)) if p.is_empty() => "/".to_string(),
        Some((_, p)) => {
            if p != "/" {
                crate::memory::validate_memory_path(
                    "path_prefix",
                    p.strip_suffix('/').unwrap_or(p),
                )?;
            }
            if !p.ends_with('/') {
                return Err(ApiError::invalid(
                    "path_prefix: must end with `/` (it matches whole segments, e.g. /notes/)",
                ));
            }
            p.clone()
        }
    };
    let depth = query_u64(&pairs, "depth")?.unwrap_or(0);
    let depth = usize::try_from(depth).unwrap_or(usize::MAX);
    let query = MemoryQuery {
        full,
        limit,
        after,
        prefix,
        depth,
    };
    Ok(Json(store.list_memories(&c, &id, query).await?).into_response())
}

async fn create_memory(
    State(store): State<Store>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let c = memory_caller(&store, &headers).await?;
    let v = json_body(&body)?;
    Ok(Json(store.create_memory(&c, &id, v).await?).into_response())
}

async fn get_memory(
    State(store): State<Store>,
    Path((id, mem)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let c = memory_caller(&store, &headers).await?;
    let full = view_full(&query_pairs(&q), true)?;
    Ok(Json(store.get_memory(&c, &id, &mem, full).await?).into_response())
}

async fn update_memory(
    State(store): State<Store>,
    Path((id, mem)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let c = memory_caller(&store, &headers).await?;
    let v = json_body(&body)?;
    Ok(Json(store.update_memory(&c, &id, &mem, v).await?).into_response())
}

async fn delete_memory(
    State(store): State<Store>,
    Path((id, mem)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let c = memory_caller(&store, &headers).await?;
    let expected = query_pairs(&q)
        .into_iter()
        .find(|(k, v)| k == "expected_content_sha256" && !v.is_empty())
        .map(|(_, v)| v);
    Ok(Json(store.delete_memory(&c, &id, &mem, expected).await?).into_response())
}
