//! The session tool runner: event stream + history reconciliation, confirmation gating, idle exit,
//! sequential dispatch and result posting.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::client::StreamItem;
use crate::memory::MemorySession;
use crate::{
    Lease, SEND_BACKOFF_CAP, STREAM_BACKOFF_CAP, STREAM_BACKOFF_START, SessionTools, ToolCallInfo,
    ToolCallRecord, ToolOutput, Worker, jitter, now_ms,
};

/// Events that leave the idle countdown as it is.
const IDLE_NEUTRAL: &[&str] = &["user.tool_confirmation", "session.thread_status_terminated"];
/// Dispatch queue bound (as the Python runner).
const DISPATCH_QUEUE: usize = 100;
/// Silence on the event stream after which it is reopened (the server pings more often).
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a cancelled tool call may take to return before the runner stops waiting for it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn is_tool_use(t: &str) -> bool {
    t == "agent.tool_use" || t == "agent.custom_tool_use"
}

/// Whether `ev` is an idle that ends the turn (any stop reason but `requires_action`).
fn ends_turn(ev: &Value) -> bool {
    s(ev, "type") == "session.status_idle"
        && ev.pointer("/stop_reason/type").and_then(Value::as_str) != Some("requires_action")
}

#[derive(Default)]
struct IdleClock {
    armed_at: Option<Instant>,
    holds: u32,
    deferred: bool,
}

impl IdleClock {
    fn arm(&mut self) {
        if self.holds > 0 {
            self.deferred = true;
        } else {
            self.armed_at = Some(Instant::now());
        }
    }
    fn disarm(&mut self) {
        self.deferred = false;
        self.armed_at = None;
    }
    fn hold(&mut self) {
        self.holds += 1;
        if self.armed_at.take().is_some() {
            self.deferred = true;
        }
    }
    fn release(&mut self) {
        self.holds = self.holds.saturating_sub(1);
        if self.holds == 0 && self.deferred {
            self.deferred = false;
            self.arm();
        }
    }
    fn note(&mut self, ev: &Value) {
        if IDLE_NEUTRAL.contains(&s(ev, "type")) {
            return;
        }
        if ends_turn(ev) {
            self.arm()
        } else {
            self.disarm()
        }
    }
}

#[derive(Default)]
struct State {
    seen: HashSet<String>,
    answered: HashSet<String>,
    confirmations: HashMap<String, String>,
    awaiting: HashMap<String, Value>,
    terminated_threads: HashSet<String>,
    idle: IdleClock,
}

/// What routing decided, applied after the lock is released.
#[derive(Default)]
struct Actions {
    enqueue: Vec<(Value, Option<&'static str>)>,
    denied: Vec<Value>,
}

impl State {
    fn in_terminated_thread(&self, ev: &Value) -> bool {
        ev.get("session_thread_id")
            .and_then(Value::as_str)
            .is_some_and(|t| self.terminated_threads.contains(t))
    }

    fn route(&mut self, ev: Value, acts: &mut Actions) {
        if self.in_terminated_thread(&ev) {
            return;
        }
        let id = s(&ev, "id").to_string();
        let permission = ev
            .get("evaluated_permission")
            .and_then(Value::as_str)
            .map(str::to_string);
        if permission.as_deref() == Some("deny") {
            self.resolve_denied(ev, acts);
            return;
        }
        match self.confirmations.get(&id).cloned() {
            None => {
                if matches!(permission.as_deref(), None | Some("allow")) {
                    acts.enqueue.push((ev, None));
                } else if let std::collections::hash_map::Entry::Vacant(slot) =
                    self.awaiting.entry(id.clone())
                {
                    // `ask`, or a value this worker does not know: wait for the user's verdict.
                    tracing::info!(tool = s(&ev, "name"), tool_use_id = %id, "holding call until user.tool_confirmation");
                    slot.insert(ev);
                    self.idle.hold();
                }
            }
            Some(verdict) => self.apply_verdict(ev, &verdict, acts),
        }
    }

    fn apply_verdict(&mut self, ev: Value, verdict: &str, acts: &mut Actions) {
        let was_held = self.awaiting.remove(s(&ev, "id")).is_some();
        if verdict == "allow" {
            if !was_held {
                self.idle.hold();
            }
            acts.enqueue.push((ev, Some("allow")));
        } else {
            // `deny`, or an unknown verdict: fail closed.
            if was_held {
                self.idle.release();
            }
            self.resolve_denied(ev, acts);
        }
    }

    fn resolve_denied(&mut self, ev: Value, acts: &mut Actions) {
        self.answered.insert(s(&ev, "id").to_string());
        tracing::info!(
            tool = s(&ev, "name"),
            tool_use_id = s(&ev, "id"),
            "tool call denied; not executing"
        );
        acts.denied.push(ev);
    }

    fn note_confirmation(&mut self, ev: &Value, acts: &mut Actions) {
        let id = s(ev, "tool_use_id").to_string();
        let verdict = s(ev, "result").to_string();
        self.confirmations.insert(id.clone(), verdict.clone());
        if let Some(held) = self.awaiting.get(&id).cloned() {
            self.apply_verdict(held, &verdict, acts);
        }
    }

    fn release_terminated_holds(&mut self) {
        let ids: Vec<String> = self
            .awaiting
            .iter()
            .filter(|(_, ev)| self.in_terminated_thread(ev))
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.awaiting.remove(&id);
            self.idle.release();
        }
    }
}

struct Ctx<'a> {
    worker: &'a Worker,
    session_id: &'a str,
    cred: &'a str,
    lease: &'a Lease,
    state: Mutex<State>,
    idle_wake: Notify,
    /// Ends the runner (terminated, idle, lease end, cancel).
    stop: CancellationToken,
    /// Cancels the tool call in flight (lease end, worker cancel).
    tool_cancel: CancellationToken,
}

impl Ctx<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    async fn apply(&self, acts: Actions, tx: &mpsc::Sender<(Value, Option<&'static str>)>) {
        self.idle_wake.notify_one();
        for ev in acts.denied {
            self.record(&ev, false, false, Some("deny"), 0);
        }
        for item in acts.enqueue {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                r = tx.send(item) => if r.is_err() { return },
            }
        }
    }

    fn record(
        &self,
        ev: &Value,
        is_error: bool,
        posted: bool,
        confirmation: Option<&str>,
        duration_ms: u64,
    ) {
        let rec = ToolCallRecord {
            tool_use_id: s(ev, "id").to_string(),
            session_id: self.session_id.to_string(),
            name: s(ev, "name").to_string(),
            is_error,
            posted,
            confirmation: confirmation.map(str::to_string),
            duration_ms,
            finished_ms: now_ms(),
        };
        self.worker.update(|st| {
            st.in_flight.retain(|c| c.tool_use_id != rec.tool_use_id);
            st.recent.push_back(rec);
            while st.recent.len() > crate::RECENT_CALLS {
                st.recent.pop_front();
            }
        });
    }
}

/// Runs the session's tool loop until it ends. `Err` carries a fatal stream failure.
pub(crate) async fn run_session(
    worker: &Worker,
    session_id: &str,
    cred: &str,
    tools: &mut Box<dyn SessionTools>,
    memory: Option<&mut MemorySession>,
    lease: &Lease,
    cancel: &CancellationToken,
) -> Result<(), String> {
    tracing::info!(session_id, "session tool runner starting");
    let ctx = Ctx {
        worker,
        session_id,
        cred,
        lease,
        state: Mutex::new(State::default()),
        idle_wake: Notify::new(),
        stop: CancellationToken::new(),
        tool_cancel: CancellationToken::new(),
    };
    let (tx, rx) = mpsc::channel(DISPATCH_QUEUE);
    let stopper = async {
        tokio::select! {
            _ = lease.ended().cancelled() => ctx.tool_cancel.cancel(),
            _ = cancel.cancelled() => ctx.tool_cancel.cancel(),
            _ = ctx.stop.cancelled() => {}
        }
        ctx.stop.cancel();
    };
    let (stream_res, _, _, _) = tokio::join!(
        stream_loop(&ctx, tx),
        dispatch_loop(&ctx, rx, tools, memory),
        idle_watchdog(&ctx),
        stopper
    );
    stream_res
}

async fn idle_watchdog(ctx: &Ctx<'_>) {
    let Some(max_idle) = ctx.worker.cfg.max_idle.filter(|d| !d.is_zero()) else {
        ctx.stop.cancelled().await;
        return;
    };
    loop {
        let wake = ctx.idle_wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let armed = ctx.lock().idle.armed_at;
        let wait = match armed {
            None => None,
            Some(at) => {
                let elapsed = at.elapsed();
                if elapsed >= max_idle {
                    tracing::info!(
                        session_id = ctx.session_id,
                        "session idle for {max_idle:?} after its turn ended; stopping"
                    );
                    ctx.stop.cancel();
                    return;
                }
                Some(max_idle - elapsed)
            }
        };
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            _ = &mut wake => {}
            _ = async { match wait { Some(w) => tokio::time::sleep(w).await, None => std::future::pending().await } } => {}
        }
    }
}

async fn stream_loop(
    ctx: &Ctx<'_>,
    tx: mpsc::Sender<(Value, Option<&'static str>)>,
) -> Result<(), String> {
    let api = &ctx.worker.api;
    let mut delay = STREAM_BACKOFF_START;
    while !ctx.stop.is_cancelled() {
        // Attach first, then reconcile: an event emitted between the list and the attach is not lost.
        let opened = tokio::select! {
            _ = ctx.stop.cancelled() => return Ok(()),
            r = api.stream_events(ctx.session_id, ctx.cred) => r,
        };
        let err = match opened {
            Err(e) => e,
            Ok(mut stream) => {
                if let Err(e) = reconcile(ctx, &tx).await {
                    tracing::warn!(error = %e, "reconcile list failed; nothing dispatched from history");
                }
                loop {
                    let next = tokio::select! {
                        _ = ctx.stop.cancelled() => return Ok(()),
                        n = tokio::time::timeout(STREAM_READ_TIMEOUT, stream.next()) => n,
                    };
                    let Ok(next) = next else {
                        // A half-open connection delivers nothing; reconnect (and reconcile) instead.
                        break crate::ApiError::Transport(format!(
                            "no data on the event stream for {STREAM_READ_TIMEOUT:?}"
                        ));
                    };
                    let ev = match next {
                        None => break crate::ApiError::Transport("event stream ended".into()),
                        Some(Err(e)) => break e,
                        Some(Ok(StreamItem::Event(ev))) => ev,
                    };
                    delay = STREAM_BACKOFF_START;
                    if handle_live_event(ctx, ev, &tx).await {
                        tracing::info!(session_id = ctx.session_id, "session terminated");
                        ctx.stop.cancel();
                        return Ok(());
                    }
                }
            }
        };
        if ctx.stop.is_cancelled() {
            return Ok(());
        }
        if err.is_fatal() {
            tracing::error!(error = %err, "event stream failed permanently");
            ctx.stop.cancel();
            return Err(format!("event stream: {err}"));
        }
        tracing::warn!(error = %err, "event stream disconnected; reconnecting in {delay:?}");
        tokio::select! {
            _ = ctx.stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(STREAM_BACKOFF_CAP);
    }
    Ok(())
}

/// Handles one live event; returns true when the session ended.
async fn handle_live_event(
    ctx: &Ctx<'_>,
    ev: Value,
    tx: &mpsc::Sender<(Value, Option<&'static str>)>,
) -> bool {
    let t = s(&ev, "type").to_string();
    let mut acts = Actions::default();
    {
        let mut st = ctx.lock();
        st.idle.note(&ev);
        match t.as_str() {
            x if is_tool_use(x) => {
                let id = s(&ev, "id").to_string();
                if st.seen.insert(id) {
                    st.route(ev, &mut acts);
                }
            }
            "session.thread_status_terminated" => {
                let thread = s(&ev, "session_thread_id").to_string();
                st.terminated_threads.insert(thread);
                st.release_terminated_holds();
            }
            "user.tool_result" => {
                st.answered.insert(s(&ev, "tool_use_id").to_string());
            }
            "user.custom_tool_result" => {
                st.answered.insert(s(&ev, "custom_tool_use_id").to_string());
            }
            "user.tool_confirmation" => st.note_confirmation(&ev, &mut acts),
            "session.status_terminated" | "session.deleted" => return true,
            _ => {}
        }
    }
    ctx.apply(acts, tx).await;
    false
}

/// Two-pass reconcile with the full history.
async fn reconcile(
    ctx: &Ctx<'_>,
    tx: &mpsc::Sender<(Value, Option<&'static str>)>,
) -> Result<(), crate::ApiError> {
    let history = ctx.worker.api.list_events(ctx.session_id, ctx.cred).await?;
    let mut acts = Actions::default();
    {
        let mut st = ctx.lock();
        let mut pending = Vec::new();
        let mut last_ended_turn = false;
        for ev in history {
            let t = s(&ev, "type").to_string();
            match t.as_str() {
                x if is_tool_use(x) => {
                    st.seen.insert(s(&ev, "id").to_string());
                    pending.push(ev.clone());
                }
                "user.tool_result" => {
                    st.answered.insert(s(&ev, "tool_use_id").to_string());
                }
                "user.custom_tool_result" => {
                    st.answered.insert(s(&ev, "custom_tool_use_id").to_string());
                }
                "user.tool_confirmation" => {
                    let id = s(&ev, "tool_use_id").to_string();
                    if !st.answered.contains(&id) {
                        st.confirmations.insert(id, s(&ev, "result").to_string());
                    }
                }
                "session.thread_status_terminated" => {
                    st.terminated_threads
                        .insert(s(&ev, "session_thread_id").to_string());
                }
                _ => {}
            }
            if !IDLE_NEUTRAL.contains(&t.as_str()) {
                last_ended_turn = ends_turn(&ev);
            }
        }
        st.release_terminated_holds();
        let unanswered: Vec<Value> = pending
            .into_iter()
            .filter(|ev| !st.answered.contains(s(ev, "id")))
            .collect();
        st.idle.disarm();
        for ev in unanswered.iter().cloned() {
            st.route(ev, &mut acts);
        }
        let held: Vec<Value> = st
            .awaiting
            .values()
            .filter(|ev| st.confirmations.contains_key(s(ev, "id")))
            .cloned()
            .collect();
        for ev in held {
            let verdict = st
                .confirmations
                .get(s(&ev, "id"))
                .cloned()
                .unwrap_or_default();
            st.apply_verdict(ev, &verdict, &mut acts);
        }
        let owns_enqueued: HashSet<String> = acts
            .enqueue
            .iter()
            .map(|(e, _)| s(e, "id").to_string())
            .collect();
        let outstanding = unanswered.iter().any(|ev| {
            let id = s(ev, "id");
            !(st.answered.contains(id)
                || st.in_terminated_thread(ev)
                || st.awaiting.contains_key(id)
                || (st.confirmations.contains_key(id) && owns_enqueued.contains(id)))
        });
        if last_ended_turn && !outstanding {
            st.idle.arm();
        }
    }
    ctx.apply(acts, tx).await;
    Ok(())
}

async fn dispatch_loop(
    ctx: &Ctx<'_>,
    mut rx: mpsc::Receiver<(Value, Option<&'static str>)>,
    tools: &mut Box<dyn SessionTools>,
    mut memory: Option<&mut MemorySession>,
) {
    loop {
        let (ev, confirmation) = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return,
            w = rx.recv() => match w { Some(w) => w, None => return },
        };
        let skip = {
            let st = ctx.lock();
            st.in_terminated_thread(&ev) || st.answered.contains(s(&ev, "id"))
        };
        if !skip {
            execute(ctx, &ev, confirmation, tools).await;
            // Memory follows the tools' writes, at most every sync interval.
            if let Some(m) = memory.as_deref_mut() {
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    _ = m.sync_if_due() => {}
                }
            }
        }
        if confirmation == Some("allow") {
            ctx.lock().idle.release();
            ctx.idle_wake.notify_one();
        }
    }
}

fn session_content(out: &ToolOutput) -> Vec<Value> {
    let mut blocks = Vec::new();
    for b in &out.content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = b
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .unwrap_or("(no output)");
                blocks.push(json!({"type": "text", "text": text}));
            }
            Some("image" | "document" | "search_result") => blocks.push(b.clone()),
            _ => blocks.push(json!({"type": "text", "text": b.to_string()})),
        }
    }
    if blocks.is_empty() {
        blocks.push(json!({"type": "text", "text": "(no output)"}));
    }
    blocks
}

async fn execute(
    ctx: &Ctx<'_>,
    ev: &Value,
    confirmation: Option<&'static str>,
    tools: &mut Box<dyn SessionTools>,
) {
    let (id, name) = (s(ev, "id").to_string(), s(ev, "name").to_string());
    if !tools.owns(&name) {
        // Another client serves this name: post nothing, leave it pending for its owner.
        tracing::info!(tool = %name, tool_use_id = %id, "tool not owned by this worker; leaving it pending");
        if confirmation == Some("allow") {
            ctx.lock().idle.disarm();
        }
        ctx.record(ev, false, false, confirmation, 0);
        return;
    }
    if ctx.tool_cancel.is_cancelled() {
        return;
    }
    tracing::info!(tool = %name, tool_use_id = %id, "executing tool");
    ctx.worker.update(|st| {
        st.in_flight.push(ToolCallInfo {
            tool_use_id: id.clone(),
            session_id: ctx.session_id.to_string(),
            name: name.clone(),
            started_ms: now_ms(),
        })
    });
    let started = Instant::now();
    let input = ev.get("input").cloned().unwrap_or_else(|| json!({}));
    let call_cancel = ctx.tool_cancel.child_token();
    let timeout = ctx.worker.cfg.tool_timeout;
    let out = {
        let run = tools.run_tool(&name, &input, call_cancel.clone());
        tokio::pin!(run);
        tokio::select! {
            o = &mut run => o,
            _ = tokio::time::sleep(timeout) => {
                call_cancel.cancel();
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, &mut run).await;
                ToolOutput::error(format!("tool '{name}' timed out"))
            }
            _ = ctx.tool_cancel.cancelled() => {
                match tokio::time::timeout(DRAIN_TIMEOUT, &mut run).await {
                    Ok(o) => o,
                    Err(_) => ToolOutput::error(format!("tool '{name}' cancelled: the worker is stopping")),
                }
            }
        }
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    if ctx.lease.reason().is_some_and(|r| r.lost()) {
        tracing::info!(tool_use_id = %id, "lease lost; not posting the result");
        ctx.record(ev, out.is_error, false, confirmation, duration_ms);
        return;
    }
    let in_terminated = ctx.lock().in_terminated_thread(ev);
    let posted = if in_terminated {
        false
    } else {
        let result = if s(ev, "type") == "agent.custom_tool_use" {
            json!({"type": "user.custom_tool_result", "custom_tool_use_id": id, "is_error": out.is_error, "content": session_content(&out)})
        } else {
            json!({"type": "user.tool_result", "tool_use_id": id, "is_error": out.is_error, "content": session_content(&out)})
        };
        send_result(ctx, &id, result).await
    };
    ctx.record(ev, out.is_error, posted, confirmation, duration_ms);
}

async fn send_result(ctx: &Ctx<'_>, tool_use_id: &str, result: Value) -> bool {
    let start = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        match ctx
            .worker
            .api
            .send_events(ctx.session_id, ctx.cred, std::slice::from_ref(&result))
            .await
        {
            Ok(_) => {
                ctx.lock().answered.insert(tool_use_id.to_string());
                return true;
            }
            Err(e) => {
                let window = ctx.lease.send_window();
                let elapsed = start.elapsed();
                if e.is_fatal() || elapsed >= window || ctx.lease.reason().is_some_and(|r| r.lost())
                {
                    tracing::error!(tool_use_id, attempts = attempt, error = %e, "failed to send tool result");
                    return false;
                }
                let delay = crate::backoff(attempt - 1, SEND_BACKOFF_CAP);
                let wait = jitter(delay / 2, delay).min(window - elapsed);
                tracing::warn!(tool_use_id, attempt, error = %e, "tool result send failed; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(id: &str, perm: Option<&str>) -> Value {
        let mut v = json!({"type": "agent.tool_use", "id": id, "name": "bash", "input": {}});
        if let Some(p) = perm {
            v["evaluated_permission"] = json!(p);
        }
        v
    }

    #[test]
    fn ask_is_held_until_allow_and_deny_never_runs() {
        let mut st = State::default();
        let mut a = Actions::default();
        st.route(tool("t1", Some("ask")), &mut a);
        st.route(tool("t2", Some("deny")), &mut a);
        st.route(tool("t3", Some("surprise")), &mut a);
        assert!(a.enqueue.is_empty());
        assert_eq!(a.denied.len(), 1);
        let mut b = Actions::default();
        st.note_confirmation(
            &json!({"type": "user.tool_confirmation", "tool_use_id": "t1", "result": "allow"}),
            &mut b,
        );
        st.note_confirmation(
            &json!({"type": "user.tool_confirmation", "tool_use_id": "t3", "result": "maybe"}),
            &mut b,
        );
        assert_eq!(b.enqueue.len(), 1);
        assert_eq!(s(&b.enqueue[0].0, "id"), "t1");
        assert_eq!(b.enqueue[0].1, Some("allow"));
        assert_eq!(b.denied.len(), 1, "an unknown verdict is a denial");
    }

    #[test]
    fn idle_clock_defers_while_calls_are_held() {
        let mut c = IdleClock::default();
        c.hold();
        c.note(&json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}));
        assert!(c.armed_at.is_none());
        c.release();
        assert!(c.armed_at.is_some());
        c.note(&json!({"type": "session.status_idle", "stop_reason": {"type": "requires_action"}}));
        assert!(c.armed_at.is_none());
        c.note(
            &json!({"type": "session.status_idle", "stop_reason": {"type": "retries_exhausted"}}),
        );
        assert!(c.armed_at.is_some());
        c.note(&json!({"type": "user.tool_confirmation"}));
        assert!(c.armed_at.is_some(), "confirmations are neutral");
    }

    #[test]
    fn content_conversion_matches_the_sdk() {
        let out = ToolOutput {
            content: vec![
                json!({"type": "text", "text": ""}),
                json!({"type": "other", "x": 1}),
            ],
            is_error: false,
        };
        let c = session_content(&out);
        assert_eq!(c[0]["text"], "(no output)");
        assert_eq!(c[1]["type"], "text");
        let empty = ToolOutput {
            content: vec![],
            is_error: true,
        };
        assert_eq!(session_content(&empty)[0]["text"], "(no output)");
    }
}
