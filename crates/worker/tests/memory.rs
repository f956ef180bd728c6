//! Memory stores against the reference queue's memory API on loopback: the download at claim, each
//! sync rule (pull, push under a precondition, server wins a conflict, corroborated deletes,
//! read-only stores, a lost marker or emptied folder downloaded again, a foreign marker left
//! alone), teardown, and a whole session whose tool writes reach the store.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_worker::memory::{MemoryResource, MemorySession, memory_resources};
use airlock_worker::{ApiClient, DeletionMode, MEMORY_BETA, MemoryConfig, Worker};
use common::{Orchestrator, Queue, RecordingExecutor, quick_config, serve};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use airlock_envqueue::StoreOptions;

/// The orchestrator's side of the memory API (x-api-key).
struct Memories<'a> {
    orch: &'a Orchestrator,
}

impl Memories<'_> {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.orch.req(m, path).header("anthropic-beta", MEMORY_BETA)
    }
    async fn create_store(&self, name: &str) -> String {
        let (st, v) = self
            .orch
            .json(
                self.req(reqwest::Method::POST, "/v1/memory_stores")
                    .json(&json!({ "name": name })),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["id"].as_str().unwrap().to_string()
    }
    async fn put(&self, store: &str, path: &str, content: &str) -> String {
        if let Some(m) = self.get(store, path).await {
            let (st, v) = self
                .orch
                .json(
                    self.req(
                        reqwest::Method::POST,
                        &format!(
                            "/v1/memory_stores/{store}/memories/{}",
                            m["id"].as_str().unwrap()
                        ),
                    )
                    .json(&json!({ "content": content })),
                )
                .await;
            assert_eq!(st, 200, "{v}");
            return v["id"].as_str().unwrap().to_string();
        }
        let (st, v) = self
            .orch
            .json(
                self.req(
                    reqwest::Method::POST,
                    &format!("/v1/memory_stores/{store}/memories"),
                )
                .json(&json!({ "path": path, "content": content })),
            )
            .await;
        assert!(st == 200 || st == 201, "{st} {v}");
        v["id"].as_str().unwrap().to_string()
    }
    async fn delete(&self, store: &str, path: &str) {
        let m = self.get(store, path).await.unwrap();
        let (st, v) = self
            .orch
            .json(self.req(
                reqwest::Method::DELETE,
                &format!(
                    "/v1/memory_stores/{store}/memories/{}",
                    m["id"].as_str().unwrap()
                ),
            ))
            .await;
        assert_eq!(st, 200, "{v}");
    }
    /// Path → content.
    async fn all(&self, store: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut url = format!("/v1/memory_stores/{store}/memories?view=full&limit=20");
            if let Some(p) = &page {
                url.push_str(&format!("&page={p}"));
            }
            let (st, v) = self.orch.json(self.req(reqwest::Method::GET, &url)).await;
            assert_eq!(st, 200, "{v}");
            for m in v["data"].as_array().unwrap() {
                if m["type"] == "memory" {
                    out.push((
                        m["path"].as_str().unwrap().to_string(),
                        m["content"].as_str().unwrap().to_string(),
                    ));
                }
            }
            match v["next_page"].as_str() {
                Some(p) if !p.is_empty() => page = Some(p.to_string()),
                _ => break,
            }
        }
        out.sort();
        out
    }
    async fn get(&self, store: &str, path: &str) -> Option<Value> {
        let (st, v) = self
            .orch
            .json(self.req(
                reqwest::Method::GET,
                &format!("/v1/memory_stores/{store}/memories?view=basic&limit=100"),
            ))
            .await;
        assert_eq!(st, 200, "{v}");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["path"] == path)
            .cloned()
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

/// Path → content of the local folder (marker excluded).
fn local(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name() != ".anthropic-memory-store" {
                let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

struct Fixture {
    _q: Queue,
    env_key: String,
    orch: Orchestrator,
    api: ApiClient,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let q = serve(StoreOptions::default()).await;
        let orch = Orchestrator::new(&q);
        let api = ApiClient::new(&q.base, Duration::from_secs(20)).unwrap();
        Self {
            env_key: q.creds.environment_key.clone(),
            _q: q,
            orch,
            api,
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn mem(&self) -> Memories<'_> {
        Memories { orch: &self.orch }
    }
    fn mount_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("mnt/memory").join(name)
    }
    fn resource(&self, store: &str, name: &str, read_only: bool) -> MemoryResource {
        MemoryResource {
            store_id: store.to_string(),
            mount_path: self.mount_path(name),
            read_only,
            name: name.to_string(),
        }
    }
    /// A session with these stores attached, claimed the way a worker claims it: the sessions
    /// token of its work item (what the memory API accepts from a worker).
    async fn sessions_token(&self, res: &[MemoryResource]) -> String {
        let resources: Vec<Value> = res
            .iter()
            .map(|r| {
                json!({"type": "memory_store", "memory_store_id": r.store_id, "mount_path": r.mount_path,
                       "access": if r.read_only { "read_only" } else { "read_write" }})
            })
            .collect();
        let (st, v) = self
            .orch
            .json(self.orch.req(reqwest::Method::POST, "/v1/sessions").json(&json!({
                "agent": "agent_test", "environment_id": self.orch.env, "resources": resources,
            })))
            .await;
        assert_eq!(st, 200, "{v}");
        let (st, item) = self
            .orch
            .json(self.worker_req(
                reqwest::Method::GET,
                &format!("/v1/environments/{}/work/poll?beta=true", self.orch.env),
            ))
            .await;
        assert_eq!(st, 200, "{item}");
        let secret = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            item["secret"].as_str().unwrap().trim_end_matches('='),
        )
        .unwrap();
        let secret: Value = serde_json::from_slice(&secret).unwrap();
        secret["sessions_token"].as_str().unwrap().to_string()
    }
    fn worker_req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.orch
            .http
            .request(m, format!("{}{path}", self.orch.base))
            .bearer_auth(&self.env_key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "managed-agents-2026-04-01")
    }
    async fn mount(&self, cfg: MemoryConfig, res: &[MemoryResource]) -> MemorySession {
        let token = self.sessions_token(res).await;
        MemorySession::mount(self.api.clone(), token, cfg, res)
            .await
            .unwrap()
    }
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_is_downloaded_then_edits_flow_both_ways_and_the_store_wins_conflicts() {
    let f = Fixture::new().await;
    let m = f.mem();
    let store = m.create_store("notes").await;
    m.put(&store, "/a.md", "alpha").await;
    m.put(&store, "/deep/b.md", "beta").await;
    m.put(&store, "/c.md", "gamma").await;
    m.put(&store, "/d.md", "delta").await;
    // More than one page of the full view (20 a page).
    for i in 0..25 {
        m.put(&store, &format!("/many/{i:02}.md"), &format!("n{i}"))
            .await;
    }

    let res = [f.resource(&store, "notes", false)];
    let mut s = f.mount(MemoryConfig::default(), &res).await;
    let root = s.roots()[0].path.clone();
    assert_eq!(
        local(&root),
        m.all(&store).await,
        "downloaded as the store has it"
    );
    assert_eq!(
        std::fs::read_to_string(root.join(".anthropic-memory-store")).unwrap(),
        format!("version 1\n{store}")
    );

    // A second session cannot mount over a folder that exists.
    let token = f.sessions_token(&res).await;
    let again = MemorySession::mount(f.api.clone(), token, MemoryConfig::default(), &res)
        .await
        .unwrap_err();
    assert!(again.contains("must not exist"), "{again}");
    assert!(
        root.join("a.md").exists(),
        "the refused mount touched nothing"
    );

    // Local edit and a new file → pushed; server edit → pulled; both edited → the store wins.
    write(&root, "a.md", "alpha, edited here");
    write(&root, "new/e.md", "epsilon");
    m.put(&store, "/deep/b.md", "beta, edited in the store")
        .await;
    write(&root, "c.md", "gamma, edited here");
    m.put(&store, "/c.md", "gamma, edited in the store").await;
    let r = s.sync(false).await;
    assert_eq!(
        (r.pushed, r.pulled, r.conflicts, r.errors),
        (2, 2, 1, 0),
        "{r:?}"
    );
    let server = m.all(&store).await;
    assert!(server.contains(&("/a.md".into(), "alpha, edited here".into())));
    assert!(server.contains(&("/new/e.md".into(), "epsilon".into())));
    assert!(server.contains(&("/c.md".into(), "gamma, edited in the store".into())));
    assert_eq!(local(&root), server, "both sides agree after one sync");

    // Deleted in the store, unchanged here → removed here. Deleted in the store while edited
    // here → the edit survives (created again).
    m.delete(&store, "/d.md").await;
    write(&root, "a.md", "alpha, edited again");
    m.delete(&store, "/a.md").await;
    let r = s.sync(false).await;
    assert_eq!((r.removed_locally, r.pushed, r.errors), (1, 1, 0), "{r:?}");
    assert!(!root.join("d.md").exists());
    let server = m.all(&store).await;
    assert!(server.contains(&("/a.md".into(), "alpha, edited again".into())));
    assert_eq!(local(&root), server);

    // Nothing changed → nothing done.
    assert_eq!(s.sync(false).await, Default::default());

    s.finish(true).await;
    assert!(!root.exists(), "teardown removes the folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_deletes_reach_the_store_only_when_corroborated_and_allowed() {
    let f = Fixture::new().await;
    let m = f.mem();
    let store = m.create_store("del").await;
    for i in 0..5 {
        m.put(&store, &format!("/{i}.md"), "x").await;
    }
    let cfg = MemoryConfig {
        delete_after: Duration::from_millis(600),
        deletes_per_sync: 2,
        ..MemoryConfig::default()
    };
    let mut s = f.mount(cfg, &[f.resource(&store, "del", false)]).await;
    let root = s.roots()[0].path.clone();
    for i in 0..3 {
        std::fs::remove_file(root.join(format!("{i}.md"))).unwrap();
    }
    let r = s.sync(false).await;
    assert_eq!(r.deleted_remotely, 0, "a fresh local delete waits: {r:?}");
    assert_eq!(m.all(&store).await.len(), 5);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = s.sync(false).await;
    assert_eq!(r.deleted_remotely, 2, "at most the per-sync cap: {r:?}");
    let r = s.sync(false).await;
    assert_eq!(r.deleted_remotely, 1, "{r:?}");
    assert_eq!(
        m.all(&store).await,
        pairs(&[("/3.md", "x"), ("/4.md", "x")])
    );
    s.finish(true).await;

    // Log-only: never deleted.
    let cfg = MemoryConfig {
        delete_after: Duration::ZERO,
        deletions: DeletionMode::LogOnly,
        ..MemoryConfig::default()
    };
    let mut s = f.mount(cfg, &[f.resource(&store, "del", false)]).await;
    let root = s.roots()[0].path.clone();
    std::fs::remove_file(root.join("3.md")).unwrap();
    s.sync(false).await;
    let r = s.sync(false).await;
    assert_eq!(r.deleted_remotely, 0);
    assert_eq!(m.all(&store).await.len(), 2);
    s.finish(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_stores_pull_but_never_push_and_damaged_folders_are_downloaded_again() {
    let f = Fixture::new().await;
    let m = f.mem();
    let team = m.create_store("team").await;
    let mine = m.create_store("mine").await;
    m.put(&team, "/rules.md", "be kind").await;
    m.put(&mine, "/one.md", "1").await;
    m.put(&mine, "/two.md", "2").await;
    let cfg = MemoryConfig {
        delete_after: Duration::ZERO,
        ..MemoryConfig::default()
    };
    let mut s = f
        .mount(
            cfg,
            &[
                f.resource(&team, "team", true),
                f.resource(&mine, "mine", false),
            ],
        )
        .await;
    let roots = s.roots();
    assert!(roots[0].read_only && !roots[1].read_only);
    let (team_root, mine_root) = (roots[0].path.clone(), roots[1].path.clone());

    // Read-only: a local edit stays local, a store edit comes in.
    write(&team_root, "rules.md", "be unkind");
    write(&team_root, "extra.md", "local only");
    s.sync(false).await;
    assert_eq!(m.all(&team).await, pairs(&[("/rules.md", "be kind")]));
    m.put(&team, "/new.md", "from the store").await;
    s.sync(false).await;
    assert_eq!(
        std::fs::read_to_string(team_root.join("new.md")).unwrap(),
        "from the store"
    );

    // The folder is emptied: downloaded again, nothing deleted in the store.
    for e in std::fs::read_dir(&mine_root).unwrap().flatten() {
        if e.file_name() != ".anthropic-memory-store" {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let r = s.sync(false).await;
    assert!(r.redownloaded && r.deleted_remotely == 0, "{r:?}");
    assert_eq!(
        local(&mine_root),
        pairs(&[("/one.md", "1"), ("/two.md", "2")])
    );

    // The marker is lost (and a file deleted): downloaded again, not a delete.
    std::fs::remove_file(mine_root.join(".anthropic-memory-store")).unwrap();
    std::fs::remove_file(mine_root.join("one.md")).unwrap();
    let r = s.sync(false).await;
    assert!(r.redownloaded && r.deleted_remotely == 0, "{r:?}");
    assert_eq!(m.all(&mine).await.len(), 2);
    assert!(mine_root.join("one.md").exists());

    // The marker names another store: nothing is pushed or deleted from this folder.
    std::fs::write(
        mine_root.join(".anthropic-memory-store"),
        "version 1\nmemstore_someone_else",
    )
    .unwrap();
    write(&mine_root, "one.md", "changed under a foreign marker");
    std::fs::remove_file(mine_root.join("two.md")).unwrap();
    s.sync(false).await;
    s.sync(false).await;
    assert_eq!(
        m.all(&mine).await,
        pairs(&[("/one.md", "1"), ("/two.md", "2")])
    );
    s.finish(false).await;
    assert!(!team_root.exists() && !mine_root.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mounts_its_stores_and_what_its_tools_write_is_in_the_store_after_teardown() {
    let q = serve(StoreOptions::default()).await;
    let orch = Orchestrator::new(&q);
    let m = Memories { orch: &orch };
    let store = m.create_store("prefs").await;
    m.put(&store, "/style.md", "tabs").await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mnt/memory/prefs");

    let (st, v) = orch
        .json(orch.req(reqwest::Method::POST, "/v1/sessions").json(&json!({
            "agent": "agent_test", "environment_id": orch.env,
            "resources": [{"type": "memory_store", "memory_store_id": store, "mount_path": mount}],
        })))
        .await;
    assert_eq!(st, 200, "{v}");
    let sid = v["id"].as_str().unwrap().to_string();
    let res = memory_resources(&v).unwrap();
    assert_eq!(res.len(), 1, "the session echoes its store: {v}");

    let log = Arc::new(Mutex::new(Vec::new()));
    let exec = RecordingExecutor::new("mem", log.clone());
    let worker = Arc::new(Worker::new(quick_config(&q.base, &q, "mem"), Arc::new(exec)).unwrap());
    let cancel = CancellationToken::new();
    let w = worker.clone();
    let c = cancel.clone();
    let h = tokio::spawn(async move { w.run(c).await.unwrap() });

    let read = orch
        .tool_use(
            &sid,
            "bash",
            json!({"command": format!("cat {}/style.md", mount.display())}),
        )
        .await;
    let wrote = orch
        .tool_use(
            &sid,
            "bash",
            json!({"command": format!("mkdir -p {0}/learned && echo 'use spaces' > {0}/learned/today.md", mount.display())}),
        )
        .await;
    let results = orch.wait_results(&sid, 2, Duration::from_secs(30)).await;
    let text = |id: &str| {
        results.iter().find(|r| r["tool_use_id"] == id).unwrap()["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        text(&read),
        "tabs",
        "the store was there before the first tool ran"
    );
    assert!(results.iter().any(|r| r["tool_use_id"] == wrote.as_str()));
    assert!(
        results.iter().all(|r| r["is_error"] == false),
        "{results:?}"
    );
    orch.post(
        &sid,
        vec![json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}})],
    )
    .await;
    orch.wait_work_state("stopped", Duration::from_secs(30))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mount.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the folder outlived the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        m.all(&store).await,
        pairs(&[("/learned/today.md", "use spaces\n"), ("/style.md", "tabs")]),
        "the final sync pushed the tool's write"
    );
    cancel.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_with_stores_fails_without_a_sessions_token_and_a_taken_mount_path_fails_it() {
    let q = serve(StoreOptions::default()).await;
    let orch = Orchestrator::new(&q);
    let m = Memories { orch: &orch };
    let store = m.create_store("x").await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("taken");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::write(mount.join("mine.txt"), "do not touch").unwrap();
    let (st, v) = orch
        .json(orch.req(reqwest::Method::POST, "/v1/sessions").json(&json!({
            "agent": "agent_test", "environment_id": orch.env,
            "resources": [{"type": "memory_store", "memory_store_id": store, "mount_path": mount}],
        })))
        .await;
    assert_eq!(st, 200, "{v}");
    let sid = v["id"].as_str().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let exec = RecordingExecutor::new("taken", log.clone());
    let worker = Arc::new(Worker::new(quick_config(&q.base, &q, "t"), Arc::new(exec)).unwrap());
    let mut status = worker.status();
    let cancel = CancellationToken::new();
    let (w, c) = (worker.clone(), cancel.clone());
    let h = tokio::spawn(async move { w.run(c).await.unwrap() });
    orch.tool_use(&sid, "bash", json!({"command": "echo never"}))
        .await;
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(e) = status.borrow_and_update().last_error.clone() {
                return e;
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(err.contains("must not exist"), "{err}");
    assert_eq!(
        std::fs::read_to_string(mount.join("mine.txt")).unwrap(),
        "do not touch"
    );
    assert!(
        log.lock().unwrap().is_empty(),
        "no tool ran without its memory"
    );
    cancel.cancel();
    h.await.unwrap();

    // Without a sessions token the item fails before anything is mounted.
    let mount2 = dir.path().join("never");
    let (st, v) = orch
        .json(orch.req(reqwest::Method::POST, "/v1/sessions").json(&json!({
            "agent": "agent_test", "environment_id": orch.env,
            "resources": [{"type": "memory_store", "memory_store_id": store, "mount_path": mount2}],
        })))
        .await;
    assert_eq!(st, 200, "{v}");
    let key = q.creds.environment_key.clone();
    let worker_req = |m: reqwest::Method, path: String| {
        orch.http
            .request(m, format!("{}{path}", orch.base))
            .bearer_auth(&key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "managed-agents-2026-04-01")
    };
    let (st, mut polled) = orch
        .json(worker_req(
            reqwest::Method::GET,
            format!("/v1/environments/{}/work/poll?beta=true", orch.env),
        ))
        .await;
    assert_eq!(st, 200, "{polled}");
    let work_id = polled["id"].as_str().unwrap().to_string();
    let (st, a) = orch
        .json(worker_req(
            reqwest::Method::POST,
            format!("/v1/environments/{}/work/{work_id}/ack?beta=true", orch.env),
        ))
        .await;
    assert_eq!(st, 200, "{a}");
    polled.as_object_mut().unwrap().remove("secret");
    let worker = Worker::new(
        quick_config(&q.base, &q, "n"),
        Arc::new(RecordingExecutor::new("n", log.clone())),
    )
    .unwrap();
    let item = airlock_worker::WorkItem::from_json(&polled).unwrap();
    worker.handle_item(item, CancellationToken::new()).await;
    let e = worker
        .status()
        .borrow()
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(e.contains("no sessions token"), "{e}");
    assert!(!mount2.exists());
}
