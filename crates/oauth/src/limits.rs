//! Fixed-window rate limits, per key and in total.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::types::Millis;

const WINDOW_MS: Millis = 60_000;
const MAX_KEYS: usize = 4096;

/// Allows `per_key` events per minute per key and `4 × per_key` in total.
#[derive(Debug)]
pub(crate) struct RateLimit {
    per_key: u32,
    total: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    window_start: Millis,
    total: u32,
    keys: HashMap<String, u32>,
}

impl RateLimit {
    pub fn new(per_key: u32) -> Self {
        Self {
            per_key,
            total: per_key.saturating_mul(4),
            state: Mutex::default(),
        }
    }

    /// Counts one event; false if over a limit.
    pub fn allow(&self, key: &str, now: Millis) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now - s.window_start >= WINDOW_MS || now < s.window_start {
            s.window_start = now;
            s.total = 0;
            s.keys.clear();
        }
        if s.total >= self.total {
            return false;
        }
        if !s.keys.contains_key(key) && s.keys.len() >= MAX_KEYS {
            return false;
        }
        let n = s.keys.entry(key.to_owned()).or_insert(0);
        if *n >= self.per_key {
            return false;
        }
        *n += 1;
        s.total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_total_and_window() {
        let r = RateLimit::new(2);
        assert!(r.allow("a", 0));
        assert!(r.allow("a", 1));
        assert!(!r.allow("a", 2));
        assert!(r.allow("b", 2));
        assert!(r.allow("b", 2));
        assert!(r.allow("c", 2));
        assert!(r.allow("c", 2));
        assert!(r.allow("d", 2));
        assert!(r.allow("d", 2));
        assert!(!r.allow("e", 2), "total of 8 reached");
        assert!(r.allow("a", 60_000), "new window");
    }
}
