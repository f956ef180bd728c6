//! Control-API routes for approvals, clients, revocation, minted tokens, the audit log and OAuth events.
//!
//! [`control_router`] returns plain JSON routes with no authentication of their own: the agent merges them into its
//! control API, behind its token/Host/Origin guard.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /v1/approvals` | | `[Approval]` (pending, oldest first) |
//! | `POST /v1/approvals/{id}/approve` | `{"tools": ["a","b"]?, "code": "XXXX-XXXX"?}` (optional) | `{"ok": true}` |
//! | `POST /v1/approvals/{id}/deny` | | `{"ok": true}` |
//! | `GET /v1/clients` | | `[ClientInfo]` with grants, live tokens, last use |
//! | `POST /v1/revoke` | `{"id": "gr_…" \| "tk_…" \| client id}` | `Revoked` |
//! | `POST /v1/tokens` | `{"server_id", "scope"?, "ttl_secs"?, "tools"?, "label"?}` | `MintedToken` (plaintext once) |
//! | `GET /v1/audit?server=&client=&kind=&since=&limit=` | | `[AuditEntry]`, newest first |
//! | `GET /v1/oauth/events` | | SSE of [`Event`] |
//!
//! Errors are `{"error": "<what to do>"}` with 400/404/409/422/500. An approval with `"remote": true` (opened on a
//! relay hostname) is approved only with the `code` its page shows: missing or wrong → `422` (the fifth wrong code
//! denies the request); denying needs no code.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{AuditKind, AuditQuery};
use crate::server::AuthServer;
use crate::types::{Decision, Error, Scopes};

/// Default lifetime of a minted token.
pub const DEFAULT_MINT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The routes above, for any outer router state.
pub fn control_router<S: Clone + Send + Sync + 'static>(server: AuthServer) -> Router<S> {
    Router::new()
        .route("/v1/approvals", get(approvals))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        .route("/v1/clients", get(clients))
        .route("/v1/revoke", post(revoke))
        .route("/v1/tokens", post(mint))
        .route("/v1/audit", get(audit))
        .route("/v1/oauth/events", get(events))
        .with_state(server)
}

fn error(e: Error) -> Response {
    let status = match &e {
        Error::UnknownApproval(_) | Error::UnknownId(_) | Error::UnknownServer(_) => {
            StatusCode::NOT_FOUND
        }
        Error::AlreadyDecided(_) => StatusCode::CONFLICT,
        Error::CodeRequired(_) | Error::WrongCode { .. } | Error::TooManyWrongCodes(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Error::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

fn bad(msg: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": msg.into() })),
    )
        .into_response()
}

async fn approvals(State(s): State<AuthServer>) -> Response {
    Json(s.approvals()).into_response()
}

#[derive(Deserialize, Default)]
struct ApproveBody {
    tools: Option<Vec<String>>,
    code: Option<String>,
}

async fn approve(
    State(s): State<AuthServer>,
    Path(id): Path<String>,
    body: Option<Json<ApproveBody>>,
) -> Response {
    let (tools, code) = body.map_or((None, None), |Json(b)| (b.tools, b.code));
    let tools = tools.filter(|t| !t.is_empty());
    match s.decide(&id, Decision::Approve { tools, code }).await {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(e) => error(e),
    }
}

async fn deny(State(s): State<AuthServer>, Path(id): Path<String>) -> Response {
    match s.decide(&id, Decision::Deny).await {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(e) => error(e),
    }
}

async fn clients(State(s): State<AuthServer>) -> Response {
    match s.clients().await {
        Ok(c) => Json(c).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
struct RevokeBody {
    id: String,
}

async fn revoke(State(s): State<AuthServer>, body: Option<Json<RevokeBody>>) -> Response {
    let Some(Json(b)) = body else {
        return bad("send {\"id\": \"<grant, token or client id>\"}");
    };
    match s.revoke(b.id.trim()).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
struct MintBody {
    server_id: String,
    scope: Option<String>,
    ttl_secs: Option<u64>,
    tools: Option<Vec<String>>,
    label: Option<String>,
}

async fn mint(State(s): State<AuthServer>, body: Option<Json<MintBody>>) -> Response {
    let Some(Json(b)) = body else {
        return bad(
            "send {\"server_id\": \"<id>\", \"scope\": \"mcp:read mcp:call\", \"ttl_secs\": 86400}",
        );
    };
    let scopes = match b.scope.as_deref() {
        None => Scopes::ALL,
        Some(sc) => match Scopes::parse_strict(sc) {
            Ok(sc) => sc,
            Err(e) => return bad(e),
        },
    };
    let ttl = b.ttl_secs.map_or(DEFAULT_MINT_TTL, Duration::from_secs);
    let label = b.label.unwrap_or_else(|| "minted token".into());
    match s
        .mint_token(
            &b.server_id,
            scopes,
            b.tools.filter(|t| !t.is_empty()),
            ttl,
            &label,
        )
        .await
    {
        Ok(m) => Json(m).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
struct AuditParams {
    server: Option<String>,
    client: Option<String>,
    kind: Option<String>,
    since: Option<i64>,
    limit: Option<u32>,
}

async fn audit(State(s): State<AuthServer>, Query(p): Query<AuditParams>) -> Response {
    let kind = match p.kind.as_deref() {
        None | Some("") => None,
        Some(k) => match AuditKind::parse(k) {
            Some(k) => Some(k),
            None => {
                return bad(format!(
                    "unknown kind {k:?}: one of approval_requested, grant_approved, grant_denied, approval_expired, \
                     token_issued, token_refreshed, token_minted, revoked, client_registered, token_refused, mcp_call"
                ));
            }
        },
    };
    let q = AuditQuery {
        server_id: p.server.filter(|s| !s.is_empty()),
        client_id: p.client.filter(|s| !s.is_empty()),
        kind,
        since_ms: p.since,
        limit: p.limit,
    };
    match s.audit_log(q).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(e),
    }
}

async fn events(
    State(s): State<AuthServer>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let data = serde_json::to_string(&ev).unwrap_or_default();
                    return Some((Ok(SseEvent::default().data(data)), rx));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
