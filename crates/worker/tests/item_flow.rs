//! One item against a scripted fake of the API: the per-item sessions token is the bearer of every
//! per-item call, skills are resolved, downloaded (with the skills beta) and handed to the executor,
//! a failing skill does not fail the item, and teardown force-stops it.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_worker::{
    LeaseEnd, SessionContext, SessionTools, ToolExecutor, ToolOutput, WorkItem, Worker,
    WorkerConfig,
};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine as _;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Seen {
    /// (method path, authorization, anthropic-beta, accept, query)
    calls: Arc<Mutex<Vec<(String, String, String, String, String)>>>,
}

async fn fake(
    State(seen): State<Seen>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
) -> axum::response::Response {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let path = uri.path().to_string();
    seen.calls.lock().unwrap().push((
        format!("{method} {path}"),
        h("authorization"),
        h("anthropic-beta"),
        h("accept"),
        uri.query().unwrap_or("").to_string(),
    ));
    let json = |v: Value| axum::Json(v).into_response();
    match (method.as_str(), path.as_str()) {
        ("POST", p) if p.ends_with("/heartbeat") => json(json!({
            "type": "work_heartbeat", "last_heartbeat": "2026-01-01T00:00:00.000001Z",
            "lease_extended": true, "state": "active", "ttl_seconds": 90})),
        ("POST", p) if p.ends_with("/stop") => json(json!({"type": "work", "state": "stopped"})),
        ("GET", "/v1/sessions/sesn_1") => json(json!({
        "type": "session", "id": "sesn_1", "status": "idle",
        "agent": {"type": "agent", "id": "a", "skills": [
            {"type": "custom", "skill_id": "skill_a", "version": "latest"},
            {"type": "custom", "skill_id": "skill_gone", "version": "3"},
        ]}})),
        ("GET", "/v1/skills/skill_a/versions/latest") => json(
            json!({"type": "skill_version", "id": "ver_7", "skill_id": "skill_a", "name": "../pdf-tools"}),
        ),
        ("GET", "/v1/skills/skill_a/versions/ver_7/content") => {
            (StatusCode::OK, b"ARCHIVE-BYTES".to_vec()).into_response()
        }
        ("GET", "/v1/sessions/sesn_1/events") => json(json!({"data": [
            {"type": "session.status_idle", "id": "sevt_1", "stop_reason": {"type": "end_turn"}}], "next_page": null})),
        ("GET", "/v1/sessions/sesn_1/events/stream") => {
            let body = axum::body::Body::from_stream(futures::stream::pending::<
                Result<Vec<u8>, std::io::Error>,
            >());
            ([("content-type", "text/event-stream")], body).into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({"type": "error", "error": {"type": "not_found_error", "message": "no"}}),
            ),
        )
            .into_response(),
    }
}

#[derive(Clone, Default)]
struct SkillSink {
    installed: Arc<Mutex<Vec<(String, Vec<u8>)>>>,
}

impl ToolExecutor for SkillSink {
    fn open_session(
        &self,
        _ctx: SessionContext,
    ) -> BoxFuture<'_, Result<Box<dyn SessionTools>, String>> {
        let s = self.clone();
        Box::pin(async move { Ok(Box::new(s) as Box<dyn SessionTools>) })
    }
}

impl SessionTools for SkillSink {
    fn owns(&self, _name: &str) -> bool {
        true
    }
    fn run_tool<'a>(
        &'a mut self,
        _n: &'a str,
        _i: &'a Value,
        _c: CancellationToken,
    ) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async { ToolOutput::text("unused") })
    }
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn install_skill<'a>(
        &'a mut self,
        name: &'a str,
        archive: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.installed
                .lock()
                .unwrap()
                .push((name.to_string(), archive));
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_uses_its_sessions_token_installs_skills_and_is_force_stopped() {
    let seen = Seen::default();
    let app = Router::new().fallback(fake).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let mut cfg = WorkerConfig::new("env_1", airlock_worker::Secret::new("env-key"));
    cfg.base_url = base;
    cfg.max_idle = Some(Duration::from_millis(200));
    let sink = SkillSink::default();
    let worker = Worker::new(cfg, Arc::new(sink.clone())).unwrap();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"sessions_token":"item-token"}"#);
    let item = WorkItem::from_json(&json!({
        "type": "work", "id": "work_1", "environment_id": "env_1",
        "data": {"type": "session", "id": "sesn_1"}, "state": "starting", "secret": secret,
    }))
    .unwrap();
    let end = tokio::time::timeout(
        Duration::from_secs(20),
        worker.handle_item(item, CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(end, LeaseEnd::RunnerDone, "the idle session ends the run");

    let installed = sink.installed.lock().unwrap().clone();
    assert_eq!(
        installed,
        vec![("pdf-tools".to_string(), b"ARCHIVE-BYTES".to_vec())]
    );

    let calls = seen.calls.lock().unwrap().clone();
    let names: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} not called: {names:?}"))
    };
    assert!(
        pos("POST /v1/environments/env_1/work/work_1/heartbeat") < pos("GET /v1/sessions/sesn_1"),
        "the lease heartbeat starts before any download: {names:?}"
    );
    assert!(pos("GET /v1/sessions/sesn_1") < pos("GET /v1/skills/skill_a/versions/latest"));
    assert!(
        pos("GET /v1/sessions/sesn_1/events/stream") < pos("GET /v1/sessions/sesn_1/events"),
        "stream first, then history"
    );
    assert_eq!(
        names.last().copied(),
        Some("POST /v1/environments/env_1/work/work_1/stop"),
        "{names:?}"
    );
    for (name, auth, beta, accept, query) in &calls {
        assert_eq!(
            auth, "Bearer item-token",
            "{name} must use the item's sessions token"
        );
        assert!(
            beta.split(',').any(|b| b == "managed-agents-2026-04-01"),
            "{name}: {beta}"
        );
        assert!(
            query.split('&').any(|q| q == "beta=true"),
            "{name}: {query}"
        );
        if name.starts_with("GET /v1/skills/") {
            assert!(
                beta.split(',').any(|b| b == "skills-2025-10-02"),
                "{name}: {beta}"
            );
        }
        if name.ends_with("/content") {
            assert_eq!(accept, "application/binary");
        }
        if name.ends_with("/heartbeat") {
            assert_eq!(query, "beta=true&expected_last_heartbeat=NO_HEARTBEAT");
        }
    }
}
