//! Airlock tray application: a Tauri 2 shell around the agent.
//!
//! - [`menu`]: the pure, unit-tested menu model (state → entries, icon, tooltip; item id → action);
//! - [`snapshot`]: the agent's control API documents → [`menu::TrayState`], and state transitions →
//!   notifications (pure);
//! - [`sse`]: a bounded parser for the agent's event stream;
//! - [`link`]: the connection to the agent — attach to a running one or run it in-process
//!   ([`airlock_agent::run`], as `airlock up` does), follow its events, carry out intents;
//! - [`run`]: the Tauri shell (tray icon and menu, the window showing the agent's web UI from the
//!   control API origin, notifications, clipboard, single instance, autostart).
//!
//! Business logic lives in the agent; the tray mirrors its state and forwards user intents.

pub mod link;
pub mod menu;
mod shell;
pub mod snapshot;
pub mod sse;

pub use shell::{ATTACH_ONLY_ENV, SHOW_ENV, ShellError, TRAY_ID, apply_state, quit, run};
