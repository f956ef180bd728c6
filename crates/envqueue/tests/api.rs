//! The queue's HTTP contract on loopback: auth, headers, poll/ack/heartbeat/stop and lease rules,
//! per-item sessions tokens, events list/send/stream, persistence.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use airlock_envqueue::{EnvironmentCredentials, Store, StoreOptions, router};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};

struct Q {
    base: String,
    creds: EnvironmentCredentials,
    store: Store,
    http: reqwest::Client,
}

async fn serve_store(store: Store) -> Q {
    let creds = store.create_environment("t").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(store.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Q {
        base,
        creds,
        store,
        http: reqwest::Client::new(),
    }
}

async fn serve(opts: StoreOptions) -> Q {
    serve_store(Store::in_memory(opts).unwrap()).await
}

enum Auth<'a> {
    Api(&'a str),
    Bearer(&'a str),
}

impl Q {
    fn req(&self, m: reqwest::Method, path: &str, auth: Auth<'_>) -> reqwest::RequestBuilder {
        let rb = self
            .http
            .request(m, format!("{}{path}", self.base))
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "managed-agents-2026-04-01");
        match auth {
            Auth::Api(k) => rb.header("x-api-key", k),
            Auth::Bearer(t) => rb.bearer_auth(t),
        }
    }
    fn api(&self) -> Auth<'_> {
        Auth::Api(&self.creds.api_key)
    }
    fn key(&self) -> Auth<'_> {
        Auth::Bearer(&self.creds.environment_key)
    }
    fn env(&self) -> &str {
        &self.creds.environment_id
    }
    async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let r = rb.send().await.unwrap();
        let st = r.status().as_u16();
        let b = r.bytes().await.unwrap();
        (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
    async fn session(&self) -> String {
        let (st, v) = self
            .send(
                self.req(reqwest::Method::POST, "/v1/sessions", self.api())
                    .json(&json!({"agent": "a", "environment_id": self.env()})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["id"].as_str().unwrap().to_string()
    }
    async fn poll(&self, query: &[(&str, &str)]) -> (u16, Value) {
        self.send(
            self.req(
                reqwest::Method::GET,
                &format!("/v1/environments/{}/work/poll", self.env()),
                self.key(),
            )
            .header("Anthropic-Worker-ID", "w1")
            .query(query),
        )
        .await
    }
    async fn work(
        &self,
        op: &str,
        wid: &str,
        auth: Auth<'_>,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .req(
                reqwest::Method::POST,
                &format!("/v1/environments/{}/work/{wid}/{op}", self.env()),
                auth,
            )
            .query(query);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        self.send(rb).await
    }
}

fn token_of(item: &Value) -> String {
    let secret = item["secret"].as_str().unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(secret)
        .unwrap();
    let v: Value = serde_json::from_slice(&raw).unwrap();
    v["sessions_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn credentials_and_headers_are_checked_as_the_api_does() {
    let q = serve(StoreOptions::default()).await;
    let path = format!("/v1/environments/{}/work/poll", q.env());
    let (st, v) = q.send(q.http.get(format!("{}{path}", q.base))).await;
    assert_eq!(st, 401);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    let (st, _) = q
        .send(q.req(reqwest::Method::GET, &path, Auth::Bearer("wrong")))
        .await;
    assert_eq!(st, 401);
    let (st, v) = q
        .send(
            q.http
                .get(format!("{}{path}", q.base))
                .bearer_auth(&q.creds.environment_key)
                .header("anthropic-version", "2023-06-01"),
        )
        .await;
    assert_eq!(st, 400, "the beta header is required: {v}");
    let (st, _) = q
        .send(
            q.http
                .get(format!("{}{path}", q.base))
                .bearer_auth(&q.creds.environment_key)
                .header("anthropic-beta", "managed-agents-2026-04-01"),
        )
        .await;
    assert_eq!(st, 400, "anthropic-version is required");
    // The API key does not poll; the environment key does not create sessions.
    let (st, _) = q.send(q.req(reqwest::Method::GET, &path, q.api())).await;
    assert_eq!(st, 403);
    let (st, _) = q
        .send(
            q.req(reqwest::Method::POST, "/v1/sessions", q.key())
                .json(&json!({"agent": "a", "environment_id": q.env()})),
        )
        .await;
    assert_eq!(st, 403);
    // Another environment's key sees nothing of this one.
    let other = q.store.create_environment("other").await.unwrap();
    let (st, _) = q
        .send(q.req(
            reqwest::Method::GET,
            &path,
            Auth::Bearer(&other.environment_key),
        ))
        .await;
    assert_eq!(st, 404);
    // Resources other than none are refused for a self-hosted environment.
    let (st, v) = q
        .send(q.req(reqwest::Method::POST, "/v1/sessions", q.api()).json(
            &json!({"agent": "a", "environment_id": q.env(), "resources": [{"type": "file", "file_id": "f"}]}),
        ))
        .await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test]
async fn poll_validates_block_ms_and_long_polls_until_work_arrives() {
    let q = serve(StoreOptions::default()).await;
    for bad in ["0", "1000", "x"] {
        let (st, _) = q.poll(&[("block_ms", bad)]).await;
        assert_eq!(st, 400, "block_ms={bad}");
    }
    let (st, v) = q.poll(&[]).await;
    assert_eq!(
        (st, v),
        (200, Value::Null),
        "an empty non-blocking poll is JSON null"
    );
    let started = Instant::now();
    let (st, v) = q.poll(&[("block_ms", "300")]).await;
    assert_eq!((st, &v), (200, &Value::Null));
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "the poll was held open"
    );
    // Work created while a poll waits is delivered to it at once.
    let q2 = Q {
        base: q.base.clone(),
        creds: q.creds.clone(),
        store: q.store.clone(),
        http: q.http.clone(),
    };
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let r = q2.poll(&[("block_ms", "999")]).await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let sid = q.session().await;
    let ((st, item), took) = waiter.await.unwrap();
    assert_eq!(st, 200);
    assert_eq!(item["data"], json!({"type": "session", "id": sid}));
    assert_eq!(item["state"], "queued");
    assert_eq!(item["type"], "work");
    assert!(
        took < Duration::from_millis(900),
        "woken by the new item, not the timeout ({took:?})"
    );
}

#[tokio::test]
async fn an_unacked_item_is_redelivered_after_reclaim_older_than_ms() {
    let q = serve(StoreOptions::default()).await;
    q.session().await;
    let (_, first) = q.poll(&[]).await;
    let wid = first["id"].as_str().unwrap().to_string();
    assert!(first["secret"].is_string());
    // Not before the reclaim age.
    let (_, again) = q.poll(&[("reclaim_older_than_ms", "400")]).await;
    assert_eq!(again, Value::Null);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, again) = q.poll(&[("reclaim_older_than_ms", "400")]).await;
    assert_eq!(again["id"], wid.as_str(), "redelivered");
    assert_ne!(
        again["secret"], first["secret"],
        "each delivery carries its own secret"
    );
    // The default reclaim age is 5 s: not redelivered yet.
    let (_, none) = q.poll(&[]).await;
    assert_eq!(none, Value::Null);
    let (st, acked) = q.work("ack", &wid, q.key(), &[], None).await;
    assert_eq!(st, 200);
    assert_eq!(acked["state"], "starting");
    assert!(acked["acknowledged_at"].is_string());
    assert_eq!(acked["secret"], Value::Null, "secret only on poll");
    let (st, v) = q.work("ack", &wid, q.key(), &[], None).await;
    assert_eq!(st, 409, "{v}");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, none) = q.poll(&[("reclaim_older_than_ms", "1")]).await;
    assert_eq!(none, Value::Null, "an acked item is not redelivered");
}

#[tokio::test]
async fn heartbeats_are_conditional_and_a_lapsed_lease_requeues_the_item() {
    let q = serve(StoreOptions {
        lease_ttl_seconds: 1,
        ..StoreOptions::default()
    })
    .await;
    q.session().await;
    let (_, item) = q.poll(&[]).await;
    let wid = item["id"].as_str().unwrap().to_string();
    q.work("ack", &wid, q.key(), &[], None).await;
    let (st, b1) = q
        .work(
            "heartbeat",
            &wid,
            q.key(),
            &[("expected_last_heartbeat", "NO_HEARTBEAT")],
            None,
        )
        .await;
    assert_eq!(st, 200, "{b1}");
    assert_eq!(b1["type"], "work_heartbeat");
    assert_eq!(b1["state"], "active");
    assert_eq!(b1["lease_extended"], true);
    assert_eq!(b1["ttl_seconds"], 1);
    let v1 = b1["last_heartbeat"].as_str().unwrap().to_string();
    // A second claim of the first beat is a mismatch with the server's view attached.
    let (st, err) = q
        .work(
            "heartbeat",
            &wid,
            q.key(),
            &[("expected_last_heartbeat", "NO_HEARTBEAT")],
            None,
        )
        .await;
    assert_eq!(st, 412);
    assert_eq!(
        err["error"]["details"]["current_state"]["last_heartbeat"],
        v1.as_str()
    );
    assert_eq!(err["error"]["details"]["current_state"]["state"], "active");
    assert_eq!(err["error"]["error_code"], "heartbeat_precondition_failed");
    let (st, b2) = q
        .work(
            "heartbeat",
            &wid,
            q.key(),
            &[
                ("expected_last_heartbeat", &v1),
                ("desired_ttl_seconds", "1"),
            ],
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_ne!(
        b2["last_heartbeat"],
        v1.as_str(),
        "every beat moves the token"
    );
    let (st, _) = q
        .work(
            "heartbeat",
            &wid,
            q.key(),
            &[("expected_last_heartbeat", &v1)],
            None,
        )
        .await;
    assert_eq!(st, 412, "a stale echo never matches again");
    // No beat for the TTL: back to the queue, and the old holder is told with 412.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, again) = q.poll(&[]).await;
    assert_eq!(again["id"], wid.as_str());
    assert_eq!(again["state"], "queued");
    let v2 = b2["last_heartbeat"].as_str().unwrap();
    let (st, err) = q
        .work(
            "heartbeat",
            &wid,
            q.key(),
            &[("expected_last_heartbeat", v2)],
            None,
        )
        .await;
    assert_eq!(st, 412);
    assert_eq!(err["error"]["details"]["current_state"]["state"], "queued");
    q.work("ack", &wid, q.key(), &[], None).await;
    let (st, _) = q
        .work(
            "heartbeat",
            &wid,
            q.key(),
            &[("expected_last_heartbeat", "NO_HEARTBEAT")],
            None,
        )
        .await;
    assert_eq!(st, 200, "the new holder claims the lease");
}

#[tokio::test]
async fn stop_is_graceful_then_forced_and_409_once_stopped() {
    let q = serve(StoreOptions::default()).await;
    q.session().await;
    let (_, item) = q.poll(&[]).await;
    let wid = item["id"].as_str().unwrap().to_string();
    q.work("ack", &wid, q.key(), &[], None).await;
    q.work(
        "heartbeat",
        &wid,
        q.key(),
        &[("expected_last_heartbeat", "NO_HEARTBEAT")],
        None,
    )
    .await;
    let (st, v) = q
        .work("stop", &wid, q.api(), &[], Some(json!({"force": false})))
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["state"], "stopping");
    assert!(v["stop_requested_at"].is_string());
    // Not compared once stopping: the worker learns it must stop.
    let (st, hb) = q
        .work(
            "heartbeat",
            &wid,
            q.key(),
            &[("expected_last_heartbeat", "whatever")],
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(hb["lease_extended"], false);
    assert_eq!(hb["state"], "stopping");
    let (st, v) = q
        .work("stop", &wid, q.key(), &[], Some(json!({"force": true})))
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["state"], "stopped");
    assert!(v["stopped_at"].is_string());
    let (st, v) = q
        .work("stop", &wid, q.key(), &[], Some(json!({"force": true})))
        .await;
    assert_eq!(st, 409, "{v}");
    let (st, stats) = q
        .send(q.req(
            reqwest::Method::GET,
            &format!("/v1/environments/{}/work/stats", q.env()),
            q.api(),
        ))
        .await;
    assert_eq!(st, 200);
    assert_eq!(stats["type"], "work_queue_stats");
    assert_eq!(stats["depth"], 0);
    assert_eq!(stats["workers_polling"], 1);
}

#[tokio::test]
async fn a_sessions_token_is_scoped_to_its_item_and_session() {
    let q = serve(StoreOptions::default()).await;
    let sid = q.session().await;
    let other_sid = q.session().await;
    let (_, item) = q.poll(&[]).await;
    assert_eq!(item["data"]["id"], sid.as_str());
    let wid = item["id"].as_str().unwrap().to_string();
    let tok = token_of(&item);
    let (st, _) = q.work("ack", &wid, Auth::Bearer(&tok), &[], None).await;
    assert_eq!(st, 200);
    let (st, _) = q
        .work(
            "heartbeat",
            &wid,
            Auth::Bearer(&tok),
            &[("expected_last_heartbeat", "NO_HEARTBEAT")],
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (st, s) = q
        .send(q.req(
            reqwest::Method::GET,
            &format!("/v1/sessions/{sid}"),
            Auth::Bearer(&tok),
        ))
        .await;
    assert_eq!(st, 200);
    assert_eq!(s["type"], "session");
    assert_eq!(s["environment_id"], q.env());
    assert!(s["agent"]["skills"].as_array().unwrap().is_empty());
    let (st, _) = q
        .send(q.req(
            reqwest::Method::GET,
            &format!("/v1/sessions/{other_sid}"),
            Auth::Bearer(&tok),
        ))
        .await;
    assert_eq!(st, 403);
    let (st, _) = q
        .send(q.req(
            reqwest::Method::GET,
            &format!("/v1/environments/{}/work/poll", q.env()),
            Auth::Bearer(&tok),
        ))
        .await;
    assert_eq!(st, 403, "polling needs the environment key");
    let (_, other_item) = q.poll(&[]).await;
    let other_wid = other_item["id"].as_str().unwrap();
    let (st, _) = q
        .work("ack", other_wid, Auth::Bearer(&tok), &[], None)
        .await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn events_are_validated_listed_in_pages_and_streamed() {
    let q = serve(StoreOptions::default()).await;
    let sid = q.session().await;
    let path = format!("/v1/sessions/{sid}/events");
    // Open the stream first.
    let resp = q
        .req(reqwest::Method::GET, &format!("{path}/stream"), q.key())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = resp.bytes_stream();

    let (st, v) = q
        .send(
            q.req(reqwest::Method::POST, &path, q.api())
                .json(&json!({"events": [
                    {"type": "agent.tool_use", "name": "bash", "input": {"command": "echo 1"}},
                    {"type": "agent.tool_use", "name": "bash", "input": {"command": "echo 2"}},
                    {"type": "agent.tool_use", "name": "bash", "input": {"command": "echo 3"}},
                ]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let ids: Vec<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(v["data"][0]["processed_at"].is_string());

    // The stream carries each event as `event: <type>` + `data: <json>`.
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while text.matches("data: ").count() < 3 {
        assert!(Instant::now() < deadline, "stream delivered: {text}");
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: agent.tool_use\n"), "{text}");
    assert!(text.contains(&ids[2]));

    // Workers may post only results, for tool uses that exist, once.
    let (st, _) = q
        .send(
            q.req(reqwest::Method::POST, &path, q.key())
                .json(&json!({"events": [
            {"type": "agent.tool_use", "name": "bash", "input": {}}]})),
        )
        .await;
    assert_eq!(st, 400);
    let result = |id: &str| json!({"events": [{"type": "user.tool_result", "tool_use_id": id, "content": [{"type": "text", "text": "ok"}]}]});
    let (st, _) = q
        .send(
            q.req(reqwest::Method::POST, &path, q.key())
                .json(&result("sevt_nope")),
        )
        .await;
    assert_eq!(st, 400);
    let (st, v) = q
        .send(
            q.req(reqwest::Method::POST, &path, q.key())
                .json(&result(&ids[0])),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"][0]["is_error"], false);
    let (st, _) = q
        .send(
            q.req(reqwest::Method::POST, &path, q.key())
                .json(&result(&ids[0])),
        )
        .await;
    assert_eq!(st, 400, "a second result for the same call");

    // Cursor pages, oldest first; type filter.
    let mut seen = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let mut query = vec![("limit", "2".to_string())];
        if let Some(p) = &page {
            query.push(("page", p.clone()));
        }
        let (st, v) = q
            .send(q.req(reqwest::Method::GET, &path, q.api()).query(&query))
            .await;
        assert_eq!(st, 200);
        for e in v["data"].as_array().unwrap() {
            seen.push(e["type"].as_str().unwrap().to_string());
        }
        match v["next_page"].as_str() {
            Some(p) => page = Some(p.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "agent.tool_use",
            "agent.tool_use",
            "agent.tool_use",
            "user.tool_result"
        ]
    );
    let (_, v) = q
        .send(
            q.req(reqwest::Method::GET, &path, q.api())
                .query(&[("types[]", "user.tool_result")]),
        )
        .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let (_, v) = q
        .send(
            q.req(reqwest::Method::GET, &path, q.api())
                .query(&[("order", "desc"), ("limit", "1")]),
        )
        .await;
    assert_eq!(v["data"][0]["type"], "user.tool_result");

    // A terminated session takes no more events.
    let (st, s) = q
        .send(q.req(
            reqwest::Method::POST,
            &format!("/v1/sessions/{sid}/archive"),
            q.api(),
        ))
        .await;
    assert_eq!(st, 200);
    assert_eq!(s["status"], "terminated");
    let (st, _) = q
        .send(
            q.req(reqwest::Method::POST, &path, q.api())
                .json(&json!({"events": [{"type": "user.message"}]})),
        )
        .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/queue.sqlite");
    let (creds, sid) = {
        let q = serve_store(Store::open(&db, StoreOptions::default()).unwrap()).await;
        let sid = q.session().await;
        (q.creds.clone(), sid)
    };
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(store)).await;
    });
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/v1/environments/{}/work/poll",
            creds.environment_id
        ))
        .bearer_auth(&creds.environment_key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "managed-agents-2026-04-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let item: Value = r.json().await.unwrap();
    assert_eq!(item["data"]["id"], sid.as_str());
}
