//! The worker against the reference queue on loopback: lease rules, exactly-once execution across
//! workers and reconnects, confirmation gating, idle exit and teardown.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_envqueue::StoreOptions;
use airlock_worker::{LeaseEnd, Worker, WorkerState};
use common::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn spawn_worker(w: Arc<Worker>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let h = tokio::spawn(async move {
        w.run(c2).await.unwrap();
    });
    (cancel, h)
}

fn text(r: &Value) -> String {
    r["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn result_for<'a>(results: &'a [Value], id: &str) -> Option<&'a Value> {
    results
        .iter()
        .find(|r| r["tool_use_id"] == id || r["custom_tool_use_id"] == id)
}

fn execs_with(log: &Arc<Mutex<Vec<Exec>>>, needle: &str) -> Vec<Exec> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|e| e.input.to_string().contains(needle))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_to_completion_with_gating_and_idle_exit() {
    let q = serve(StoreOptions::default()).await;
    let orch = Orchestrator::new(&q);
    let log = Arc::new(Mutex::new(Vec::new()));
    let exec = RecordingExecutor::new("a", log.clone());
    let worker =
        Arc::new(Worker::new(quick_config(&q.base, &q, "a"), Arc::new(exec.clone())).unwrap());
    let mut status = worker.status();
    let (cancel, h) = spawn_worker(worker.clone());

    let sid = orch.create_session().await;
    let ids = orch
        .post(
            &sid,
            vec![
                json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo hello"}}),
                json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo oops >&2; false"}}),
                json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo gated"}, "evaluated_permission": "ask"}),
                json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo never-denied"}, "evaluated_permission": "deny"}),
                json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo never-rejected"}, "evaluated_permission": "ask"}),
                json!({"type": "agent.custom_tool_use", "name": "lookup", "input": {"q": "x"}}),
            ],
        )
        .await;
    let results = orch.wait_results(&sid, 2, Duration::from_secs(20)).await;
    assert_eq!(text(result_for(&results, &ids[0]).unwrap()), "hello");
    assert_eq!(result_for(&results, &ids[0]).unwrap()["is_error"], false);
    assert_eq!(text(result_for(&results, &ids[1]).unwrap()), "oops");
    assert_eq!(result_for(&results, &ids[1]).unwrap()["is_error"], true);
    // The ask-gated call waits for its confirmation.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        execs_with(&log, "gated").is_empty(),
        "an ask call ran before its confirmation"
    );
    orch.post(
        &sid,
        vec![
            json!({"type": "user.tool_confirmation", "tool_use_id": ids[2], "result": "allow"}),
            json!({"type": "user.tool_confirmation", "tool_use_id": ids[4], "result": "deny"}),
        ],
    )
    .await;
    let results = orch.wait_results(&sid, 3, Duration::from_secs(20)).await;
    assert_eq!(text(result_for(&results, &ids[2]).unwrap()), "gated");
    // The idle exit: the turn ends, nothing happens for max_idle, the item is force-stopped.
    orch.post(
        &sid,
        vec![json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}})],
    )
    .await;
    let stopped = orch
        .wait_work_state("stopped", Duration::from_secs(20))
        .await;
    assert_eq!(stopped["data"]["id"], sid.as_str());
    assert!(
        stopped["started_at"].is_string(),
        "the first heartbeat made it active: {stopped}"
    );

    let results = orch.results(&sid).await;
    assert_eq!(
        results.len(),
        3,
        "denied, rejected and unowned calls get no result: {results:?}"
    );
    assert!(result_for(&results, &ids[5]).is_none());
    assert!(execs_with(&log, "never").is_empty(), "a denied call ran");
    assert_eq!(log.lock().unwrap().len(), 3);
    assert_eq!(
        *exec.closed.lock().unwrap(),
        1,
        "teardown closes the session's tools"
    );

    status
        .wait_for(|s| s.current.is_none() && s.items_served == 1)
        .await
        .unwrap();
    let s = status.borrow().clone();
    assert_eq!(s.state, WorkerState::Polling);
    let recent: Vec<(&str, bool, bool, Option<&str>)> = s
        .recent
        .iter()
        .map(|r| {
            (
                r.tool_use_id.as_str(),
                r.is_error,
                r.posted,
                r.confirmation.as_deref(),
            )
        })
        .collect();
    assert!(
        recent.contains(&(ids[0].as_str(), false, true, None)),
        "{recent:?}"
    );
    assert!(
        recent.contains(&(ids[1].as_str(), true, true, None)),
        "{recent:?}"
    );
    assert!(
        recent.contains(&(ids[2].as_str(), false, true, Some("allow"))),
        "{recent:?}"
    );
    assert!(
        recent.contains(&(ids[3].as_str(), false, false, Some("deny"))),
        "{recent:?}"
    );
    assert!(
        recent.contains(&(ids[4].as_str(), false, false, Some("deny"))),
        "{recent:?}"
    );
    assert!(
        recent.contains(&(ids[5].as_str(), false, false, None)),
        "{recent:?}"
    );
    cancel.cancel();
    h.await.unwrap();
    assert_eq!(worker.status().borrow().state, WorkerState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_412_stops_the_item_and_runs_no_more_of_its_tools() {
    // A 2 s TTL: the worker beats every second.
    let q = serve(StoreOptions {
        lease_ttl_seconds: 2,
        ..StoreOptions::default()
    })
    .await;
    let orch = Orchestrator::new(&q);
    let log = Arc::new(Mutex::new(Vec::new()));
    let worker = Arc::new(
        Worker::new(
            quick_config(&q.base, &q, "a"),
            Arc::new(RecordingExecutor::new("a", log.clone())),
        )
        .unwrap(),
    );
    let mut status = worker.status();
    let (cancel, h) = spawn_worker(worker.clone());
    let sid = orch.create_session().await;
    let first = orch
        .tool_use(&sid, "bash", json!({"command": "echo one"}))
        .await;
    let r = orch.wait_results(&sid, 1, Duration::from_secs(20)).await;
    assert_eq!(r[0]["tool_use_id"], first.as_str());
    let item = orch
        .wait_work_state("active", Duration::from_secs(10))
        .await;
    let wid = item["id"].as_str().unwrap().to_string();

    // Another holder takes the lease: it echoes the current heartbeat first (with a long TTL).
    let hb = |expected: String| {
        orch.http
            .post(format!(
                "{}/v1/environments/{}/work/{wid}/heartbeat",
                q.base, q.creds.environment_id
            ))
            .bearer_auth(&q.creds.environment_key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "managed-agents-2026-04-01")
            .query(&[
                ("expected_last_heartbeat", expected),
                ("desired_ttl_seconds", "600".into()),
            ])
    };
    let mut taken = false;
    for _ in 0..50 {
        let cur = orch
            .work_items()
            .await
            .into_iter()
            .find(|w| w["id"] == wid.as_str())
            .unwrap();
        let (st, _) = orch
            .json(hb(cur["latest_heartbeat_at"].as_str().unwrap().to_string()))
            .await;
        if st == 200 {
            taken = true;
            break;
        }
        assert_eq!(st, 412);
    }
    assert!(taken, "could not take the lease over");
    // The worker's next beat gets 412 and it lets go of the item.
    status.wait_for(|s| s.current.is_none()).await.unwrap();
    let second = orch
        .tool_use(&sid, "bash", json!({"command": "echo two"}))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        execs_with(&log, "two").is_empty(),
        "ran a tool of an item whose lease was lost"
    );
    assert!(result_for(&orch.results(&sid).await, &second).is_none());
    let item = orch
        .work_items()
        .await
        .into_iter()
        .find(|w| w["id"] == wid.as_str())
        .unwrap();
    assert_eq!(
        item["state"], "active",
        "a lost lease must not be stopped by the loser: {item}"
    );
    // The direct API gives the reason.
    cancel.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_item_reports_lease_lost() {
    let q = serve(StoreOptions {
        lease_ttl_seconds: 2,
        ..StoreOptions::default()
    })
    .await;
    let orch = Orchestrator::new(&q);
    let sid = orch.create_session().await;
    // Claim and ack by hand, then hand the item to the worker.
    let key = &q.creds.environment_key;
    let raw = |m: reqwest::Method, p: String| {
        orch.http
            .request(m, format!("{}{p}", q.base))
            .bearer_auth(key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "managed-agents-2026-04-01")
    };
    let (_, item) = orch
        .json(raw(
            reqwest::Method::GET,
            format!("/v1/environments/{}/work/poll", q.creds.environment_id),
        ))
        .await;
    let wid = item["id"].as_str().unwrap().to_string();
    let (st, _) = orch
        .json(raw(
            reqwest::Method::POST,
            format!("/v1/environments/{}/work/{wid}/ack", q.creds.environment_id),
        ))
        .await;
    assert_eq!(st, 200);
    // Someone else already claimed the first beat.
    let (st, _) = orch
        .json(
            raw(
                reqwest::Method::POST,
                format!(
                    "/v1/environments/{}/work/{wid}/heartbeat",
                    q.creds.environment_id
                ),
            )
            .query(&[("expected_last_heartbeat", "NO_HEARTBEAT")]),
        )
        .await;
    assert_eq!(st, 200);
    let log = Arc::new(Mutex::new(Vec::new()));
    let worker = Worker::new(
        quick_config(&q.base, &q, "a"),
        Arc::new(RecordingExecutor::new("a", log.clone())),
    )
    .unwrap();
    orch.tool_use(&sid, "bash", json!({"command": "echo late"}))
        .await;
    let end = tokio::time::timeout(
        Duration::from_secs(20),
        worker.handle_item(
            airlock_worker::WorkItem::from_json(&item).unwrap(),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(end, LeaseEnd::LeaseLost);
    assert!(execs_with(&log, "late").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_execute_the_same_tool_use() {
    let q = serve(StoreOptions::default()).await;
    let orch = Orchestrator::new(&q);
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for tag in ["a", "b"] {
        let mut cfg = quick_config(&q.base, &q, tag);
        cfg.max_idle = Some(Duration::from_millis(300));
        let w =
            Arc::new(Worker::new(cfg, Arc::new(RecordingExecutor::new(tag, log.clone()))).unwrap());
        handles.push(spawn_worker(w));
    }
    let mut expected = Vec::new();
    for round in 0..3 {
        let mut sessions = Vec::new();
        for s in 0..3 {
            sessions.push((orch.create_session().await, s));
        }
        for (sid, s) in &sessions {
            for t in 0..3 {
                let marker = format!("m-{round}-{s}-{t}");
                orch.tool_use(sid, "bash", json!({"command": format!("echo {marker}")}))
                    .await;
                expected.push((sid.clone(), marker));
            }
        }
        for (sid, _) in &sessions {
            orch.wait_results(sid, 3, Duration::from_secs(30)).await;
            orch.post(sid, vec![json!({"type": "session.status_idle"})])
                .await;
        }
    }
    for (sid, marker) in &expected {
        let runs = execs_with(&log, &format!("{marker}\""));
        assert_eq!(runs.len(), 1, "{marker} ran {} times: {runs:?}", runs.len());
        let results = orch.results(sid).await;
        assert!(
            results.iter().any(|r| text(r) == *marker),
            "no result for {marker}"
        );
    }
    let workers: std::collections::HashSet<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.worker.clone())
        .collect();
    println!("workers that executed tools: {workers:?}");
    for (c, h) in handles {
        c.cancel();
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_reconcile_without_running_a_tool_twice() {
    let q = serve(StoreOptions::default()).await;
    let proxy = CutProxy::start(&q.base).await;
    let orch = Orchestrator::new(&q);
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = quick_config(&proxy.base(), &q, "a");
    cfg.max_idle = None;
    let worker =
        Arc::new(Worker::new(cfg, Arc::new(RecordingExecutor::new("a", log.clone()))).unwrap());
    let (cancel, h) = spawn_worker(worker.clone());
    let sid = orch.create_session().await;
    let mut n = 0;
    for round in 0..4 {
        for t in 0..2 {
            orch.tool_use(
                &sid,
                "bash",
                json!({"command": format!("echo r{round}t{t}")}),
            )
            .await;
            n += 1;
        }
        if round % 2 == 0 {
            orch.wait_results(&sid, n, Duration::from_secs(30)).await;
        }
        // Every connection drops (stream, heartbeat, in-flight posts); events posted meanwhile are
        // found by the reconcile after the reconnect.
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let results = orch.wait_results(&sid, n, Duration::from_secs(30)).await;
    assert_eq!(results.len(), n);
    let conns = proxy.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        conns >= 5,
        "the worker reconnected after each cut ({conns} connections)"
    );
    for round in 0..4 {
        for t in 0..2 {
            let m = format!("r{round}t{t}");
            assert_eq!(
                execs_with(&log, &format!("{m}\"")).len(),
                1,
                "{m} ran twice (or never)"
            );
        }
    }
    cancel.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_item_for_the_same_session_only_runs_unanswered_calls() {
    let q = serve(StoreOptions::default()).await;
    let orch = Orchestrator::new(&q);
    let log = Arc::new(Mutex::new(Vec::new()));
    let wa = Arc::new(
        Worker::new(
            quick_config(&q.base, &q, "a"),
            Arc::new(RecordingExecutor::new("a", log.clone())),
        )
        .unwrap(),
    );
    let (ca, ha) = spawn_worker(wa);
    let sid = orch.create_session().await;
    orch.tool_use(&sid, "bash", json!({"command": "echo first"}))
        .await;
    orch.tool_use(&sid, "bash", json!({"command": "echo second"}))
        .await;
    orch.wait_results(&sid, 2, Duration::from_secs(20)).await;
    orch.post(&sid, vec![json!({"type": "session.status_idle"})])
        .await;
    orch.wait_work_state("stopped", Duration::from_secs(20))
        .await;
    ca.cancel();
    ha.await.unwrap();
    // A dormant session gets a new message: a new work item, served by a fresh worker.
    orch.tool_use(&sid, "bash", json!({"command": "echo third"}))
        .await;
    let items = orch.work_items().await;
    assert_eq!(items.len(), 2, "{items:?}");
    let wb = Arc::new(
        Worker::new(
            quick_config(&q.base, &q, "b"),
            Arc::new(RecordingExecutor::new("b", log.clone())),
        )
        .unwrap(),
    );
    let (cb, hb) = spawn_worker(wb);
    orch.wait_results(&sid, 3, Duration::from_secs(20)).await;
    cb.cancel();
    hb.await.unwrap();
    let l = log.lock().unwrap().clone();
    let by: Vec<(String, String)> = l
        .iter()
        .map(|e| {
            (
                e.worker.clone(),
                e.input["command"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        by,
        vec![
            ("a".to_string(), "echo first".to_string()),
            ("a".to_string(), "echo second".to_string()),
            ("b".to_string(), "echo third".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_cancels_the_call_in_flight_and_stops_the_item() {
    let q = serve(StoreOptions {
        lease_ttl_seconds: 2,
        ..StoreOptions::default()
    })
    .await;
    let orch = Orchestrator::new(&q);
    let log = Arc::new(Mutex::new(Vec::new()));
    let worker = Arc::new(
        Worker::new(
            quick_config(&q.base, &q, "a"),
            Arc::new(RecordingExecutor::new("a", log.clone())),
        )
        .unwrap(),
    );
    let mut status = worker.status();
    let handle = worker.clone().spawn();
    let sid = orch.create_session().await;
    let id = orch.tool_use(&sid, "sleep", json!({"ms": 60000})).await;
    status.wait_for(|s| !s.in_flight.is_empty()).await.unwrap();
    assert_eq!(status.borrow().in_flight[0].tool_use_id, id);
    let item = orch
        .wait_work_state("active", Duration::from_secs(10))
        .await;
    let started = std::time::Instant::now();
    let (st, v) = orch
        .json(
            orch.req(
                reqwest::Method::POST,
                &format!(
                    "/v1/environments/{}/work/{}/stop",
                    q.creds.environment_id,
                    item["id"].as_str().unwrap()
                ),
            )
            .json(&json!({"force": false})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["state"], "stopping");
    orch.wait_work_state("stopped", Duration::from_secs(20))
        .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    let r = orch.wait_results(&sid, 1, Duration::from_secs(10)).await;
    assert_eq!(r[0]["is_error"], true);
    assert_eq!(text(&r[0]), "cancelled");
    assert!(!handle.is_finished());
    handle.stop().await.unwrap();
    assert_eq!(worker.status().borrow().state, WorkerState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_environment_key_stops_the_worker_with_a_clear_error() {
    let q = serve(StoreOptions::default()).await;
    let mut cfg = quick_config(&q.base, &q, "a");
    cfg.environment_key = airlock_worker::Secret::new("not-the-key");
    let worker = Worker::new(cfg, Arc::new(RecordingExecutor::new("a", Arc::default()))).unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        worker.run(CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&err, airlock_worker::WorkerError::PollRejected(e) if e.status() == Some(401)),
        "{err}"
    );
    assert!(
        err.to_string().contains("check the environment id and key"),
        "{err}"
    );
    assert!(!err.to_string().contains("not-the-key"));
    let st = worker.status().borrow().clone();
    assert_eq!(st.state, WorkerState::Failed);
    assert!(st.last_error.is_some());
}
