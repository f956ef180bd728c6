//! Airlock tray application: a minimal Tauri 2 shell.
//!
//! [`menu`] is the pure, unit-tested menu model; [`run`] starts the shell
//! (tray icon + hidden main window). Business logic lives in the agent; the
//! tray will only mirror the agent's state and forward user intents.

pub mod menu;
mod shell;

pub use shell::{SHOW_ENV, TRAY_ID, apply_state, run};
