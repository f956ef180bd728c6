//! Reference environments work queue and sessions events API (SQLite), served by `airlock relay --api`.
//!
//! It speaks the self-hosted environment protocol of Claude Managed Agents (the work queue under
//! `/v1/environments/{id}/work/*`, the sessions events API under `/v1/sessions/*` and the memory
//! store API under `/v1/memory_stores/*`) with the same paths, JSON shapes, states and lease
//! rules, so the official SDK workers and Airlock's own worker run against it unchanged. Here the caller plays the brain: the orchestrating side (authenticated
//! with `x-api-key`) creates sessions, posts `agent.tool_use` / `session.status_idle` events to
//! `POST /v1/sessions/{id}/events` — the one extension to the documented API — and reads the
//! `user.tool_result` events the worker posts back, from the events list or the SSE stream.
//!
//! Work item states: `queued` → (`ack`) `starting` → (first heartbeat) `active` → (`stop`)
//! `stopping` → `stopped`. A polled item that is not acked within `reclaim_older_than_ms` is
//! delivered again; an acked item whose lease (`ttl_seconds` after the last heartbeat, or after
//! the ack) lapses goes back to `queued`. Heartbeats carry `expected_last_heartbeat`
//! (`NO_HEARTBEAT` first, then the server's previous `last_heartbeat` exactly); a mismatch answers
//! `412` with the server's view in `error.details.current_state`.
//!
//! Credentials: [`Store::create_environment`] mints an environment key (workers send it as
//! `Authorization: Bearer`) and an API key for the orchestrating side (`x-api-key`). Each poll
//! delivery carries a `secret` (URL-safe base64 JSON `{"sessions_token": …}`) whose token is
//! accepted for that item's ack / heartbeat / stop and its session's calls. Only SHA-256 hashes of
//! keys and tokens are stored.
//!
//! Memory stores (beta `agent-memory-2026-07-22`, `managed-agents-2026-04-01` also accepted):
//! `POST|GET /v1/memory_stores`, `GET /v1/memory_stores/{id}` (API key), and under
//! `/v1/memory_stores/{id}/memories` list (`view=basic|full`, `limit` ≤100 / ≤20 with content,
//! opaque `page` cursors, `path_prefix`, `depth` with `memory_prefix` rollups, ordered by path),
//! create `{path, content}`, retrieve, update `{content?, path?, precondition?}` and delete
//! (`?expected_content_sha256=`). A `content_sha256` precondition that does not hold answers 409
//! `memory_precondition_failed_error` unless the memory already is what was asked for; a path
//! taken by (or nested with) another memory answers 409 `memory_path_conflict_error`; each change
//! mints a new `memory_version_id`. Sessions attach up to 8 stores as `memory_store` resources
//! (`access` `read_write` | `read_only`, `mount_path` defaulting to `/mnt/memory/<name slug>`).
//! The memory endpoints take the API key or a sessions token whose session has the store
//! attached (read-only attachments read but do not write); the environment key is refused.
//!
//! All SQLite work runs on blocking threads; long-poll waiters and SSE subscribers are bounded.

mod api;
mod memory;
mod store;

pub use api::{AGENT_MEMORY_BETA, MANAGED_AGENTS_BETA, router};
pub use memory::{
    MAX_CONTENT_BYTES, MAX_MEMORIES_PER_STORE, MAX_PAGE_BASIC, MAX_PAGE_FULL, MAX_PATH_BYTES,
    MAX_SESSION_STORES,
};
pub use store::{EnvironmentCredentials, Error, Store, StoreOptions};
