//! Failed sign-ins, limited per name: after [`MAX_FAILURES`] failures within [`WINDOW_MS`] a
//! name is refused without checking its password until the oldest failure ages out. In
//! memory, so a restart forgets (an attacker gains one window per restart, which the audit
//! log shows). Bounded: at most [`MAX_NAMES`] names are tracked; when full, the entries whose
//! failures have all aged out are dropped, and if none has, new names are refused outright.

use std::collections::HashMap;
use std::sync::Mutex;

/// Failures allowed per name within the window.
pub const MAX_FAILURES: usize = 5;
/// The window (ms).
pub const WINDOW_MS: i64 = 5 * 60_000;
/// Names tracked at once.
const MAX_NAMES: usize = 10_000;

/// Recent failed sign-ins by name.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, Vec<i64>>>,
}

impl LoginThrottle {
    /// None if `name` may try now; else how long until it may (ms).
    pub fn wait_for(&self, name: &str, now: i64) -> Option<i64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let recent: Vec<i64> = map
            .get(name)
            .map(|v| v.iter().copied().filter(|t| now - t < WINDOW_MS).collect())
            .unwrap_or_default();
        if recent.len() >= MAX_FAILURES {
            recent.iter().min().map(|oldest| oldest + WINDOW_MS - now)
        } else if !map.contains_key(name) && map.len() >= MAX_NAMES {
            Some(WINDOW_MS)
        } else {
            None
        }
    }

    /// Records a failed sign-in of `name`.
    pub fn failed(&self, name: &str, now: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_NAMES && !map.contains_key(name) {
            map.retain(|_, v| v.iter().any(|t| now - t < WINDOW_MS));
            if map.len() >= MAX_NAMES {
                return;
            }
        }
        let v = map.entry(name.to_string()).or_default();
        v.retain(|t| now - t < WINDOW_MS);
        v.push(now);
    }

    /// A successful sign-in clears the name's failures.
    pub fn succeeded(&self, name: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_a_name_for_the_window() {
        let t = LoginThrottle::default();
        for i in 0..MAX_FAILURES as i64 {
            assert_eq!(t.wait_for("ana", 1000 + i), None);
            t.failed("ana", 1000 + i);
        }
        assert_eq!(t.wait_for("ana", 2000), Some(1000 + WINDOW_MS - 2000));
        assert_eq!(t.wait_for("bo", 2000), None, "other names are not affected");
        assert_eq!(t.wait_for("ana", 1000 + WINDOW_MS + 10), None);
        t.failed("bo", 0);
        t.succeeded("bo");
        assert_eq!(t.wait_for("bo", 1), None);
    }
}
