//! The memory store API on loopback: stores, memories, validation, preconditions, path conflicts,
//! pagination in both views, the 2000-memory cap, sessions-token scoping and session resources.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use airlock_envqueue::{EnvironmentCredentials, Store, StoreOptions, router};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const MEMORY_BETAS: &str = "managed-agents-2026-04-01,agent-memory-2026-07-22";

struct Q {
    base: String,
    creds: EnvironmentCredentials,
    store: Store,
    http: reqwest::Client,
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Api(&'a str),
    Bearer(&'a str),
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

async fn serve() -> Q {
    serve_store(Store::in_memory(StoreOptions::default()).unwrap()).await
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl Q {
    /// A request with the headers a worker sends to the memory endpoints.
    fn req(&self, m: reqwest::Method, path: &str, auth: Auth<'_>) -> reqwest::RequestBuilder {
        self.req_beta(m, path, auth, Some(MEMORY_BETAS))
    }
    fn req_beta(
        &self,
        m: reqwest::Method,
        path: &str,
        auth: Auth<'_>,
        beta: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(m, format!("{}{path}", self.base))
            .query(&[("beta", "true")])
            .header("anthropic-version", "2023-06-01");
        if let Some(b) = beta {
            rb = rb.header("anthropic-beta", b);
        }
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
    async fn new_store(&self, name: &str) -> String {
        let (st, v) = self
            .send(
                self.req(reqwest::Method::POST, "/v1/memory_stores", self.api())
                    .json(&json!({ "name": name })),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["id"].as_str().unwrap().to_string()
    }
    async fn create(&self, auth: Auth<'_>, store: &str, path: &str, content: &str) -> (u16, Value) {
        self.send(
            self.req(
                reqwest::Method::POST,
                &format!("/v1/memory_stores/{store}/memories"),
                auth,
            )
            .json(&json!({ "path": path, "content": content })),
        )
        .await
    }
    async fn get(&self, auth: Auth<'_>, store: &str, mem: &str) -> (u16, Value) {
        self.send(self.req(
            reqwest::Method::GET,
            &format!("/v1/memory_stores/{store}/memories/{mem}"),
            auth,
        ))
        .await
    }
    async fn update(&self, auth: Auth<'_>, store: &str, mem: &str, body: Value) -> (u16, Value) {
        self.send(
            self.req(
                reqwest::Method::POST,
                &format!("/v1/memory_stores/{store}/memories/{mem}"),
                auth,
            )
            .json(&body),
        )
        .await
    }
    async fn delete(
        &self,
        auth: Auth<'_>,
        store: &str,
        mem: &str,
        expected: Option<&str>,
    ) -> (u16, Value) {
        let mut rb = self.req(
            reqwest::Method::DELETE,
            &format!("/v1/memory_stores/{store}/memories/{mem}"),
            auth,
        );
        if let Some(e) = expected {
            rb = rb.query(&[("expected_content_sha256", e)]);
        }
        self.send(rb).await
    }
    async fn list(&self, auth: Auth<'_>, store: &str, query: &[(&str, &str)]) -> (u16, Value) {
        self.send(
            self.req(
                reqwest::Method::GET,
                &format!("/v1/memory_stores/{store}/memories"),
                auth,
            )
            .query(query),
        )
        .await
    }
    /// Follows `next_page` to the end; returns every item and the page sizes.
    async fn list_all(
        &self,
        auth: Auth<'_>,
        store: &str,
        query: &[(&str, &str)],
    ) -> (Vec<Value>, Vec<usize>) {
        let (mut items, mut sizes, mut page) = (Vec::new(), Vec::new(), None::<String>);
        loop {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            if let Some(p) = &page {
                q.push(("page", p));
            }
            let (st, v) = self.list(auth, store, &q).await;
            assert_eq!(st, 200, "{v}");
            let data = v["data"].as_array().unwrap();
            sizes.push(data.len());
            items.extend(data.iter().cloned());
            match v["next_page"].as_str() {
                Some(p) => page = Some(p.to_string()),
                None => break,
            }
            assert!(sizes.len() < 500, "pagination does not end");
        }
        (items, sizes)
    }
    async fn session(&self, resources: Value) -> (u16, Value) {
        self.send(
            self.req(reqwest::Method::POST, "/v1/sessions", self.api())
                .json(&json!({"agent": "a", "environment_id": self.env(), "resources": resources})),
        )
        .await
    }
    /// Polls the next item and returns its sessions token (and the session it is for).
    async fn claim(&self) -> (String, String) {
        let (st, item) = self
            .send(
                self.req(
                    reqwest::Method::GET,
                    &format!("/v1/environments/{}/work/poll", self.env()),
                    self.key(),
                )
                .header("Anthropic-Worker-ID", "w1"),
            )
            .await;
        assert_eq!(st, 200, "{item}");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(item["secret"].as_str().unwrap())
            .unwrap();
        let secret: Value = serde_json::from_slice(&raw).unwrap();
        (
            secret["sessions_token"].as_str().unwrap().to_string(),
            item["data"]["id"].as_str().unwrap().to_string(),
        )
    }
}

fn err_type(v: &Value) -> &str {
    v["error"]["type"].as_str().unwrap_or("")
}
fn err_msg(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn stores_are_created_fetched_and_listed_with_the_api_key() {
    let q = serve().await;
    let (st, v) = q
        .send(
            q.req(reqwest::Method::POST, "/v1/memory_stores", q.api())
                .json(&json!({"name": "User Preferences", "description": "what the user likes"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["type"], "memory_store");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("memstore_"), "{id}");
    assert_eq!(v["name"], "User Preferences");
    assert_eq!(v["description"], "what the user likes");
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["created_at"], v["updated_at"]);

    let (st, got) = q
        .send(q.req(
            reqwest::Method::GET,
            &format!("/v1/memory_stores/{id}"),
            q.api(),
        ))
        .await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(got, v);

    // Validation of the body.
    for (body, needle) in [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(256)}), "name"),
        (json!({"name": "a\u{7}b"}), "control"),
        (
            json!({"name": "n", "description": "d".repeat(1025)}),
            "description",
        ),
        (json!({"name": "n", "metadata": {"k": 1}}), "metadata"),
    ] {
        let (st, e) = q
            .send(
                q.req(reqwest::Method::POST, "/v1/memory_stores", q.api())
                    .json(&body),
            )
            .await;
        assert_eq!(st, 400, "{body} → {e}");
        assert_eq!(err_type(&e), "invalid_request_error");
        assert!(err_msg(&e).contains(needle), "{e}");
    }

    // Pages of the list, newest first.
    let b = q.new_store("b").await;
    let c = q.new_store("c").await;
    let mut seen = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let mut rb = q
            .req(reqwest::Method::GET, "/v1/memory_stores", q.api())
            .query(&[("limit", "2")]);
        if let Some(p) = &page {
            rb = rb.query(&[("page", p)]);
        }
        let (st, v) = q.send(rb).await;
        assert_eq!(st, 200, "{v}");
        let data = v["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|s| s["id"].as_str().unwrap().to_string()));
        match v["next_page"].as_str() {
            Some(p) => page = Some(p.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, vec![c.clone(), b.clone(), id.clone()]);

    // Another environment's API key sees none of them.
    let other = q.store.create_environment("other").await.unwrap();
    let (st, _) = q
        .send(q.req(
            reqwest::Method::GET,
            &format!("/v1/memory_stores/{id}"),
            Auth::Api(&other.api_key),
        ))
        .await;
    assert_eq!(st, 404);
    let (st, v) = q
        .send(q.req(
            reqwest::Method::GET,
            "/v1/memory_stores",
            Auth::Api(&other.api_key),
        ))
        .await;
    assert_eq!(st, 200);
    assert!(v["data"].as_array().unwrap().is_empty());
    let (st, _) = q
        .send(q.req(
            reqwest::Method::GET,
            "/v1/memory_stores/memstore_nope",
            q.api(),
        ))
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn headers_and_credentials_of_the_memory_endpoints() {
    let q = serve().await;
    let store = q.new_store("notes").await;
    let path = format!("/v1/memory_stores/{store}/memories");
    // Either beta is accepted, alone or with others; neither → 400.
    for beta in [
        "agent-memory-2026-07-22",
        "managed-agents-2026-04-01",
        "managed-agents-2026-04-01, agent-memory-2026-07-22",
    ] {
        let (st, v) = q
            .send(q.req_beta(reqwest::Method::GET, &path, q.api(), Some(beta)))
            .await;
        assert_eq!(st, 200, "{beta}: {v}");
    }
    for beta in [None, Some("skills-2025-10-02")] {
        let (st, v) = q
            .send(q.req_beta(reqwest::Method::GET, &path, q.api(), beta))
            .await;
        assert_eq!(st, 400, "{beta:?}: {v}");
        assert!(err_msg(&v).contains("agent-memory-2026-07-22"), "{v}");
    }
    // The environment key is refused with the documented reason, on every memory endpoint.
    let (st, v) = q.send(q.req(reqwest::Method::GET, &path, q.key())).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(err_type(&v), "permission_error");
    assert!(
        err_msg(&v).contains("the memory endpoints reject the environment key"),
        "{v}"
    );
    let (st, _) = q.create(q.key(), &store, "/a.md", "x").await;
    assert_eq!(st, 403);
    let (st, _) = q
        .send(q.req(
            reqwest::Method::GET,
            &format!("/v1/memory_stores/{store}"),
            q.key(),
        ))
        .await;
    assert_eq!(st, 403);
    let (st, _) = q
        .send(
            q.req(reqwest::Method::POST, "/v1/memory_stores", q.key())
                .json(&json!({"name": "x"})),
        )
        .await;
    assert_eq!(st, 403);
    // No credential, a wrong one.
    let (st, _) = q
        .send(
            q.http
                .get(format!("{}{path}", q.base))
                .header("anthropic-version", "2023-06-01")
                .header("anthropic-beta", MEMORY_BETAS),
        )
        .await;
    assert_eq!(st, 401);
    let (st, _) = q
        .send(q.req(reqwest::Method::GET, &path, Auth::Api("alk_api_wrong")))
        .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn memories_are_created_read_updated_and_deleted() {
    let q = serve().await;
    let store = q.new_store("notes").await;
    let content = "# Conventions\nstaging first.\nÜmlaut ✓\n";
    let (st, m) = q
        .create(q.api(), &store, "/notes/conventions.md", content)
        .await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["type"], "memory");
    let mid = m["id"].as_str().unwrap().to_string();
    assert!(mid.starts_with("mem_"));
    assert_eq!(m["memory_store_id"], store.as_str());
    assert!(
        m["memory_version_id"]
            .as_str()
            .unwrap()
            .starts_with("memver_")
    );
    assert_eq!(m["path"], "/notes/conventions.md");
    assert_eq!(m["content"], content);
    assert_eq!(m["content_sha256"], sha(content));
    assert_eq!(m["content_size_bytes"], content.len());
    assert_ne!(content.len(), content.chars().count(), "sizes count bytes");
    let v1 = m["memory_version_id"].as_str().unwrap().to_string();

    let (st, got) = q.get(q.api(), &store, &mid).await;
    assert_eq!(st, 200);
    assert_eq!(got, m);
    let (st, basic) = q
        .send(
            q.req(
                reqwest::Method::GET,
                &format!("/v1/memory_stores/{store}/memories/{mid}"),
                q.api(),
            )
            .query(&[("view", "basic")]),
        )
        .await;
    assert_eq!(st, 200);
    assert!(basic["content"].is_null());
    assert_eq!(basic["content_sha256"], sha(content));

    // The same path again, a path under it, and its parent are all taken.
    for (path, conflicting) in [
        ("/notes/conventions.md", "/notes/conventions.md"),
        ("/notes/conventions.md/more", "/notes/conventions.md"),
        ("/notes", "/notes/conventions.md"),
    ] {
        let (st, e) = q.create(q.api(), &store, path, "x").await;
        assert_eq!(st, 409, "{path}: {e}");
        assert_eq!(err_type(&e), "memory_path_conflict_error", "{e}");
        assert_eq!(e["error"]["conflicting_memory_id"], mid.as_str());
        assert_eq!(e["error"]["conflicting_path"], conflicting);
    }
    // A sibling whose name shares the prefix is not a conflict.
    let (st, sib) = q
        .create(q.api(), &store, "/notes/conventions.md2", "")
        .await;
    assert_eq!(st, 200, "{sib}");
    assert_eq!(sib["content_sha256"], sha(""));
    assert_eq!(sib["content_size_bytes"], 0);
    let sib_id = sib["id"].as_str().unwrap().to_string();

    // Update the content: a new version; the old hash as precondition.
    let (st, u) = q
        .update(
            q.api(),
            &store,
            &mid,
            json!({"content": "v2", "precondition": {"type": "content_sha256", "content_sha256": sha(content)}}),
        )
        .await;
    assert_eq!(st, 200, "{u}");
    assert_eq!(u["content"], "v2");
    assert_eq!(u["content_sha256"], sha("v2"));
    assert_eq!(u["content_size_bytes"], 2);
    assert_eq!(u["id"], mid.as_str());
    assert_eq!(u["created_at"], m["created_at"]);
    let v2 = u["memory_version_id"].as_str().unwrap().to_string();
    assert_ne!(v2, v1);

    // A stale precondition → 409 memory_precondition_failed_error, nothing changes...
    let stale = json!({"type": "content_sha256", "content_sha256": sha(content)});
    let (st, e) = q
        .update(
            q.api(),
            &store,
            &mid,
            json!({"content": "v3", "precondition": stale}),
        )
        .await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(err_type(&e), "memory_precondition_failed_error");
    assert!(err_msg(&e).contains(&sha("v2")), "{e}");
    let (_, now) = q.get(q.api(), &store, &mid).await;
    assert_eq!(now["content"], "v2");
    // ...unless the memory already is what the update asks for: 200, no new version.
    let (st, same) = q
        .update(
            q.api(),
            &store,
            &mid,
            json!({"content": "v2", "precondition": stale}),
        )
        .await;
    assert_eq!(st, 200, "{same}");
    assert_eq!(same["memory_version_id"], v2.as_str());
    let (st, same) = q
        .update(
            q.api(),
            &store,
            &mid,
            json!({"content": "v2", "path": "/notes/conventions.md", "precondition": stale}),
        )
        .await;
    assert_eq!(st, 200, "{same}");
    assert_eq!(same["memory_version_id"], v2.as_str());
    // A no-op without precondition writes no version either.
    let (st, same) = q
        .update(q.api(), &store, &mid, json!({"content": "v2"}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(same["memory_version_id"], v2.as_str());
    assert_eq!(same["updated_at"], u["updated_at"]);

    // Rename: onto a taken path → 409; to a free one keeps id and content.
    let (st, e) = q
        .update(
            q.api(),
            &store,
            &mid,
            json!({"path": "/notes/conventions.md2"}),
        )
        .await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(err_type(&e), "memory_path_conflict_error");
    assert_eq!(e["error"]["conflicting_memory_id"], sib_id.as_str());
    let (st, r) = q
        .update(
            q.api(),
            &store,
            &mid,
            json!({"path": "/archive/conventions.md"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["path"], "/archive/conventions.md");
    assert_eq!(r["content"], "v2");
    assert_ne!(r["memory_version_id"], v2.as_str());
    // The old place is free again.
    let (st, _) = q
        .create(q.api(), &store, "/notes/conventions.md", "new")
        .await;
    assert_eq!(st, 200);

    // Update validation.
    for (body, needle) in [
        (json!({}), "at least one of content or path"),
        (json!({"content": 5}), "content"),
        (json!({"path": "relative.md"}), "path"),
        (
            json!({"content": "x", "precondition": {"type": "etag", "content_sha256": sha("")}}),
            "precondition.type",
        ),
        (
            json!({"content": "x", "precondition": {"type": "content_sha256", "content_sha256": "ABC"}}),
            "precondition.content_sha256",
        ),
        (
            json!({"content": "x", "precondition": {"type": "content_sha256", "content_sha256": sha("").to_uppercase()}}),
            "lowercase",
        ),
    ] {
        let (st, e) = q.update(q.api(), &store, &mid, body.clone()).await;
        assert_eq!(st, 400, "{body} → {e}");
        assert_eq!(err_type(&e), "invalid_request_error");
        assert!(err_msg(&e).contains(needle), "{body} → {e}");
    }
    let (st, _) = q
        .update(q.api(), &store, "mem_nope", json!({"content": "x"}))
        .await;
    assert_eq!(st, 404);

    // Delete: a wrong expected hash → 409 and nothing is deleted; the right one deletes.
    let (st, e) = q.delete(q.api(), &store, &mid, Some(&sha("v1"))).await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(err_type(&e), "memory_precondition_failed_error");
    let (st, _) = q.get(q.api(), &store, &mid).await;
    assert_eq!(st, 200);
    let (st, e) = q.delete(q.api(), &store, &mid, Some("nothex")).await;
    assert_eq!(st, 400, "{e}");
    let (st, d) = q.delete(q.api(), &store, &mid, Some(&sha("v2"))).await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d, json!({"type": "memory_deleted", "id": mid}));
    let (st, _) = q.get(q.api(), &store, &mid).await;
    assert_eq!(st, 404);
    let (st, _) = q.delete(q.api(), &store, &mid, None).await;
    assert_eq!(st, 404);
    // Unconditional delete.
    let (st, _) = q.delete(q.api(), &store, &sib_id, None).await;
    assert_eq!(st, 200);
    // A memory is only found through its own store.
    let other = q.new_store("other").await;
    let (st, _) = q.get(q.api(), &other, &mid).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn memory_paths_and_contents_are_validated() {
    let q = serve().await;
    let store = q.new_store("notes").await;
    let long = format!("/{}", "p".repeat(1024));
    for (path, needle) in [
        ("notes/a.md", "must start with '/'"),
        ("/", "below the store root"),
        ("/a//b", "empty segments"),
        ("/a/", "empty segments"),
        ("/a/./b", "`.` or `..`"),
        ("/a/../b", "`.` or `..`"),
        ("/..", "`.` or `..`"),
        ("/a\u{0}b", "NUL"),
        ("/a\tb", "control"),
        (long.as_str(), "1024 bytes"),
    ] {
        let (st, e) = q.create(q.api(), &store, path, "x").await;
        assert_eq!(st, 400, "{path:?}: {e}");
        assert_eq!(err_type(&e), "invalid_request_error");
        assert!(err_msg(&e).starts_with("path: "), "{e}");
        assert!(err_msg(&e).contains(needle), "{path:?}: {e}");
    }
    // Exactly 1024 bytes (multi-byte characters count in bytes) is fine.
    let ok = format!("/{}", "é".repeat(511)) + "x";
    assert_eq!(ok.len(), 1024);
    let (st, v) = q.create(q.api(), &store, &ok, "x").await;
    assert_eq!(st, 200, "{v}");
    let over = format!("/{}", "é".repeat(512));
    assert_eq!(over.len(), 1025);
    let (st, _) = q.create(q.api(), &store, &over, "x").await;
    assert_eq!(st, 400);

    let big = "x".repeat(102_400);
    let (st, v) = q.create(q.api(), &store, "/big.txt", &big).await;
    assert_eq!(st, 200, "{}", err_msg(&v));
    assert_eq!(v["content_size_bytes"], 102_400);
    let (st, e) = q
        .create(q.api(), &store, "/bigger.txt", &format!("{big}y"))
        .await;
    assert_eq!(st, 400);
    assert!(err_msg(&e).contains("102400 bytes"), "{e}");
    let mid = v["id"].as_str().unwrap();
    let (st, e) = q
        .update(q.api(), &store, mid, json!({"content": format!("{big}é")}))
        .await;
    assert_eq!(st, 400, "{e}");

    for (body, needle) in [
        (json!({"content": "x"}), "path: field required"),
        (json!({"path": "/a"}), "content: field required"),
        (json!({"path": 3, "content": "x"}), "path: must be a string"),
    ] {
        let (st, e) = q
            .send(
                q.req(
                    reqwest::Method::POST,
                    &format!("/v1/memory_stores/{store}/memories"),
                    q.api(),
                )
                .json(&body),
            )
            .await;
        assert_eq!(st, 400, "{e}");
        assert!(err_msg(&e).contains(needle), "{e}");
    }
    let (st, _) = q.create(q.api(), "memstore_nope", "/a", "x").await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn lists_page_through_a_store_in_both_views() {
    let q = serve().await;
    let store = q.new_store("notes").await;
    let mut paths: Vec<String> = Vec::new();
    for i in 0..45 {
        let p = match i % 3 {
            0 => format!("/notes/n{i:02}.md"),
            1 => format!("/deep/a/b/d{i:02}.md"),
            _ => format!("/top{i:02}.md"),
        };
        let (st, v) = q.create(q.api(), &store, &p, &format!("content {i}")).await;
        assert_eq!(st, 200, "{v}");
        paths.push(p);
    }
    paths.sort();

    // basic: no content, up to 100 a page; default 20.
    let (items, sizes) = q
        .list_all(q.api(), &store, &[("view", "basic"), ("limit", "100")])
        .await;
    assert_eq!(sizes, vec![45]);
    assert!(
        items
            .iter()
            .all(|m| m["content"].is_null() && m["type"] == "memory")
    );
    let (items, sizes) = q.list_all(q.api(), &store, &[]).await;
    assert_eq!(sizes, vec![20, 20, 5], "basic by default, 20 a page");
    let got: Vec<&str> = items.iter().map(|m| m["path"].as_str().unwrap()).collect();
    assert_eq!(got, paths, "ordered by path, none twice or lost");
    let (items, sizes) = q.list_all(q.api(), &store, &[("limit", "7")]).await;
    assert_eq!(sizes, vec![7, 7, 7, 7, 7, 7, 3]);
    let got: Vec<&str> = items.iter().map(|m| m["path"].as_str().unwrap()).collect();
    assert_eq!(got, paths);

    // full: content, at most 20 a page whatever the limit.
    let (items, sizes) = q
        .list_all(q.api(), &store, &[("view", "full"), ("limit", "100")])
        .await;
    assert_eq!(sizes, vec![20, 20, 5]);
    for m in &items {
        let c = m["content"].as_str().unwrap();
        assert_eq!(m["content_sha256"], sha(c));
        assert!(c.starts_with("content "));
    }
    let got: Vec<&str> = items.iter().map(|m| m["path"].as_str().unwrap()).collect();
    assert_eq!(got, paths);
    let (_, sizes) = q
        .list_all(q.api(), &store, &[("view", "full"), ("limit", "8")])
        .await;
    assert_eq!(sizes, vec![8, 8, 8, 8, 8, 5]);

    // A page that changes between calls: a memory created behind the cursor is not repeated,
    // one created ahead of it appears.
    let (_, first) = q.list(q.api(), &store, &[("limit", "10")]).await;
    let cursor = first["next_page"].as_str().unwrap().to_string();
    let (st, _) = q.create(q.api(), &store, "/aaa.md", "early").await;
    assert_eq!(st, 200);
    let (st, _) = q.create(q.api(), &store, "/zzz.md", "late").await;
    assert_eq!(st, 200);
    let mut rest = Vec::new();
    let mut page = Some(cursor);
    while let Some(p) = page {
        let (st, v) = q
            .list(q.api(), &store, &[("limit", "10"), ("page", &p)])
            .await;
        assert_eq!(st, 200);
        rest.extend(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["path"].as_str().unwrap().to_string()),
        );
        page = v["next_page"].as_str().map(str::to_string);
    }
    assert!(!rest.contains(&"/aaa.md".to_string()));
    assert_eq!(rest.last().map(String::as_str), Some("/zzz.md"));
    assert_eq!(rest.len(), 45 - 10 + 1);

    // path_prefix matches whole segments; depth=1 rolls deeper memories up into prefixes.
    let (st, _) = q.create(q.api(), &store, "/notes-archive/x.md", "x").await;
    assert_eq!(st, 200);
    let (items, _) = q
        .list_all(
            q.api(),
            &store,
            &[("path_prefix", "/notes/"), ("limit", "100")],
        )
        .await;
    assert_eq!(items.len(), 15);
    assert!(
        items
            .iter()
            .all(|m| m["path"].as_str().unwrap().starts_with("/notes/"))
    );
    let (items, _) = q
        .list_all(q.api(), &store, &[("depth", "1"), ("limit", "3")])
        .await;
    let tops: Vec<(String, String)> = items
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap().to_string(),
                m["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let prefixes: Vec<&str> = tops
        .iter()
        .filter(|t| t.0 == "memory_prefix")
        .map(|t| t.1.as_str())
        .collect();
    assert_eq!(prefixes, vec!["/deep/", "/notes-archive/", "/notes/"]);
    assert_eq!(
        tops.iter().filter(|t| t.0 == "memory").count(),
        15 + 2,
        "/topNN.md, /aaa.md, /zzz.md"
    );
    let (items, _) = q
        .list_all(
            q.api(),
            &store,
            &[("path_prefix", "/deep/"), ("depth", "2")],
        )
        .await;
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0],
        json!({"type": "memory_prefix", "path": "/deep/a/b/"})
    );

    // Query validation.
    for (query, needle) in [
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "101")], "limit"),
        (vec![("limit", "x")], "limit"),
        (vec![("view", "everything")], "view"),
        (vec![("page", "seq_5")], "page"),
        (vec![("path_prefix", "/notes")], "path_prefix"),
        (vec![("path_prefix", "notes/")], "path_prefix"),
        (vec![("path_prefix", "/a/../")], "path_prefix"),
    ] {
        let (st, e) = q.list(q.api(), &store, &query).await;
        assert_eq!(st, 400, "{query:?}: {e}");
        assert!(err_msg(&e).contains(needle), "{query:?}: {e}");
    }
}

#[tokio::test]
async fn sessions_tokens_reach_only_the_stores_of_their_session() {
    let q = serve().await;
    let rw = q.new_store("Project Notes").await;
    let ro = q.new_store("Team Wiki").await;
    let unattached = q.new_store("private").await;
    for s in [&rw, &ro, &unattached] {
        let (st, _) = q.create(q.api(), s, "/seed.md", "seed").await;
        assert_eq!(st, 200);
    }
    let (st, sess) = q
        .session(json!([
            {"type": "memory_store", "memory_store_id": rw},
            {"type": "memory_store", "memory_store_id": ro, "access": "read_only",
             "mount_path": "/mnt/memory/wiki", "instructions": "read before answering"},
        ]))
        .await;
    assert_eq!(st, 200, "{sess}");
    let sid = sess["id"].as_str().unwrap().to_string();
    let expected = json!([
        {"type": "memory_store", "memory_store_id": rw, "access": "read_write",
         "mount_path": "/mnt/memory/project-notes", "name": "Project Notes"},
        {"type": "memory_store", "memory_store_id": ro, "access": "read_only",
         "mount_path": "/mnt/memory/wiki", "name": "Team Wiki"},
    ]);
    let check = |s: &Value| {
        let res = s["resources"].as_array().unwrap();
        assert_eq!(res.len(), 2, "{s}");
        for (got, want) in res.iter().zip(expected.as_array().unwrap()) {
            for (k, v) in want.as_object().unwrap() {
                assert_eq!(&got[k], v, "{k} of {got}");
            }
            assert!(got["id"].as_str().unwrap().starts_with("sesrsc_"));
        }
        assert_eq!(res[1]["instructions"], "read before answering");
        assert!(res[0]["instructions"].is_null());
    };
    check(&sess);

    let (tok, claimed) = q.claim().await;
    assert_eq!(claimed, sid);
    let me = Auth::Bearer(&tok);
    // The session as the worker fetches it echoes the resources.
    let (st, s) = q
        .send(q.req(reqwest::Method::GET, &format!("/v1/sessions/{sid}"), me))
        .await;
    assert_eq!(st, 200, "{s}");
    check(&s);

    // read_write store: everything.
    let (st, items) = q.list(me, &rw, &[("view", "full")]).await;
    assert_eq!(st, 200, "{items}");
    assert_eq!(items["data"][0]["content"], "seed");
    let (st, m) = q.create(me, &rw, "/from-worker.md", "hello").await;
    assert_eq!(st, 200, "{m}");
    let mid = m["id"].as_str().unwrap().to_string();
    let (st, _) = q
        .update(
            me,
            &rw,
            &mid,
            json!({"content": "hello 2", "precondition": {"type": "content_sha256", "content_sha256": sha("hello")}}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = q.delete(me, &rw, &mid, Some(&sha("hello 2"))).await;
    assert_eq!(st, 200);
    let (st, _) = q
        .send(q.req(reqwest::Method::GET, &format!("/v1/memory_stores/{rw}"), me))
        .await;
    assert_eq!(st, 200);

    // read_only store: read, but no create, update or delete.
    let (st, items) = q.list(me, &ro, &[]).await;
    assert_eq!(st, 200);
    let seed = items["data"][0]["id"].as_str().unwrap().to_string();
    let (st, got) = q.get(me, &ro, &seed).await;
    assert_eq!(st, 200);
    assert_eq!(got["content"], "seed");
    let (st, e) = q.create(me, &ro, "/new.md", "x").await;
    assert_eq!(st, 403, "{e}");
    assert_eq!(err_type(&e), "permission_error");
    assert!(err_msg(&e).contains("read_only"), "{e}");
    let (st, _) = q
        .update(me, &ro, &seed, json!({"content": "changed"}))
        .await;
    assert_eq!(st, 403);
    let (st, _) = q.delete(me, &ro, &seed, None).await;
    assert_eq!(st, 403);
    let (_, still) = q.get(q.api(), &ro, &seed).await;
    assert_eq!(still["content"], "seed");

    // A store the session does not have: refused for every call.
    let (st, e) = q.list(me, &unattached, &[]).await;
    assert_eq!(st, 403, "{e}");
    assert!(err_msg(&e).contains("not attached"), "{e}");
    let (st, _) = q.create(me, &unattached, "/x.md", "x").await;
    assert_eq!(st, 403);
    let (st, _) = q
        .send(q.req(
            reqwest::Method::GET,
            &format!("/v1/memory_stores/{unattached}"),
            me,
        ))
        .await;
    assert_eq!(st, 403);
    // Store management needs the API key.
    let (st, _) = q
        .send(
            q.req(reqwest::Method::POST, "/v1/memory_stores", me)
                .json(&json!({"name": "x"})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = q
        .send(q.req(reqwest::Method::GET, "/v1/memory_stores", me))
        .await;
    assert_eq!(st, 403);

    // The token of a session without resources reaches no store.
    let (st, _) = q.session(json!([])).await;
    assert_eq!(st, 200);
    let (tok2, _) = q.claim().await;
    let (st, _) = q.list(Auth::Bearer(&tok2), &rw, &[]).await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn session_resources_are_validated() {
    let q = serve().await;
    let mut stores = Vec::new();
    for i in 0..9 {
        stores.push(q.new_store(&format!("store {i}")).await);
    }
    let res = |ids: &[String]| -> Value {
        ids.iter()
            .map(|id| json!({"type": "memory_store", "memory_store_id": id}))
            .collect()
    };
    // Eight is the most.
    let (st, s) = q.session(res(&stores[..8])).await;
    assert_eq!(st, 200, "{s}");
    let mounts: Vec<&str> = s["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mount_path"].as_str().unwrap())
        .collect();
    assert_eq!(mounts[0], "/mnt/memory/store-0");
    assert_eq!(mounts[7], "/mnt/memory/store-7");
    let (st, e) = q.session(res(&stores)).await;
    assert_eq!(st, 400, "{e}");
    assert!(err_msg(&e).contains("at most 8"), "{e}");

    let other_env = q.store.create_environment("other").await.unwrap();
    let foreign = {
        let (st, v) = q
            .send(
                q.req(
                    reqwest::Method::POST,
                    "/v1/memory_stores",
                    Auth::Api(&other_env.api_key),
                )
                .json(&json!({"name": "theirs"})),
            )
            .await;
        assert_eq!(st, 200);
        v["id"].as_str().unwrap().to_string()
    };
    let a = &stores[0];
    let b = &stores[1];
    for (resources, needle) in [
        (
            json!([{"type": "memory_store", "memory_store_id": a}, {"type": "memory_store", "memory_store_id": a}]),
            "attached twice",
        ),
        (
            json!([{"type": "memory_store", "memory_store_id": "memstore_missing"}]),
            "not found",
        ),
        (
            json!([{"type": "memory_store", "memory_store_id": foreign}]),
            "not found",
        ),
        (json!([{"type": "memory_store"}]), "memory_store_id"),
        (
            json!([{"type": "memory_store", "memory_store_id": a, "access": "write"}]),
            "access",
        ),
        (
            json!([{"type": "memory_store", "memory_store_id": a, "mount_path": "mnt/x"}]),
            "clean absolute path",
        ),
        (
            json!([{"type": "memory_store", "memory_store_id": a, "mount_path": "/mnt/../etc"}]),
            "clean absolute path",
        ),
        (
            json!([{"type": "memory_store", "memory_store_id": a, "mount_path": "/mnt/x/"}]),
            "clean absolute path",
        ),
        (
            json!([{"type": "memory_store", "memory_store_id": a, "mount_path": "/"}]),
            "clean absolute path",
        ),
        (
            json!([{"type": "memory_store", "memory_store_id": a, "mount_path": "/m/x"},
                {"type": "memory_store", "memory_store_id": b, "mount_path": "/m/x/y"}]),
            "overlaps",
        ),
        (
            json!([{"type": "memory_store", "memory_store_id": a, "instructions": "i".repeat(4097)}]),
            "instructions",
        ),
        (json!("all"), "resources: must be an array"),
        (
            json!([{"type": "file", "file_id": "file_1"}]),
            "`resources` are not supported with self-hosted environments",
        ),
        (
            json!([{"type": "github_repository", "url": "https://example.invalid/r"}]),
            "`resources` are not supported with self-hosted environments",
        ),
    ] {
        let (st, e) = q.session(resources.clone()).await;
        assert_eq!(st, 400, "{resources} → {e}");
        assert_eq!(err_type(&e), "invalid_request_error");
        assert!(err_msg(&e).contains(needle), "{resources} → {e}");
    }
    // A refused session queued no work.
    let (st, stats) = q
        .send(q.req_beta(
            reqwest::Method::GET,
            &format!("/v1/environments/{}/work/stats", q.env()),
            q.api(),
            Some("managed-agents-2026-04-01"),
        ))
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        stats["depth"], 1,
        "only the accepted session is queued: {stats}"
    );

    // Two stores whose names give one directory get distinct default mount paths.
    let n1 = q.new_store("Notes!").await;
    let n2 = q.new_store("notes").await;
    let (st, s) = q.session(res(&[n1.clone(), n2.clone()])).await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["resources"][0]["mount_path"], "/mnt/memory/notes");
    assert_eq!(
        s["resources"][1]["mount_path"],
        format!("/mnt/memory/notes-{n2}")
    );
    // A session without resources shows an empty array.
    let (st, s) = q.session(Value::Null).await;
    assert_eq!(st, 200);
    assert_eq!(s["resources"], json!([]));
}

#[tokio::test]
async fn a_store_holds_at_most_2000_memories() {
    let q = serve().await;
    let store = q.new_store("full").await;
    let started = Instant::now();
    let codes: Vec<u16> = futures::stream::iter(0..2000)
        .map(|i| {
            let (q, store) = (&q, &store);
            async move { q.create(q.api(), store, &format!("/m/{i:04}"), "x").await.0 }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        codes.iter().all(|c| *c == 200),
        "{:?}",
        codes.iter().find(|c| **c != 200)
    );
    eprintln!("2000 memories created in {:?}", started.elapsed());
    let (st, e) = q.create(q.api(), &store, "/one-more", "x").await;
    assert_eq!(st, 400, "{e}");
    assert!(err_msg(&e).contains("2000"), "{e}");
    // Another store is not affected; deleting one makes room again.
    let other = q.new_store("other").await;
    let (st, _) = q.create(q.api(), &other, "/one-more", "x").await;
    assert_eq!(st, 200);
    let (_, first) = q.list(q.api(), &store, &[("limit", "1")]).await;
    let mid = first["data"][0]["id"].as_str().unwrap().to_string();
    let (st, _) = q.delete(q.api(), &store, &mid, None).await;
    assert_eq!(st, 200);
    let (st, _) = q.create(q.api(), &store, "/one-more", "x").await;
    assert_eq!(st, 200);
    let (items, sizes) = q.list_all(q.api(), &store, &[("limit", "100")]).await;
    assert_eq!(items.len(), 2000);
    assert_eq!(sizes.len(), 20);
}

#[tokio::test]
async fn memories_and_resources_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite");
    let (creds, store_id, mid, sid) = {
        let q = serve_store(Store::open(&db, StoreOptions::default()).unwrap()).await;
        let s = q.new_store("kept").await;
        let (_, m) = q.create(q.api(), &s, "/k.md", "kept").await;
        let (st, sess) = q
            .session(json!([{"type": "memory_store", "memory_store_id": s, "access": "read_only"}]))
            .await;
        assert_eq!(st, 200);
        (
            q.creds.clone(),
            s,
            m["id"].as_str().unwrap().to_string(),
            sess["id"].as_str().unwrap().to_string(),
        )
    };
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(store.clone())).await;
    });
    let q2 = Q {
        base,
        creds,
        store: Store::in_memory(StoreOptions::default()).unwrap(),
        http: reqwest::Client::new(),
    };
    let (st, m) = q2.get(q2.api(), &store_id, &mid).await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["content"], "kept");
    let (st, s) = q2
        .send(q2.req(
            reqwest::Method::GET,
            &format!("/v1/sessions/{sid}"),
            q2.api(),
        ))
        .await;
    assert_eq!(st, 200);
    assert_eq!(s["resources"][0]["access"], "read_only");
    assert_eq!(s["resources"][0]["mount_path"], "/mnt/memory/kept");
}
