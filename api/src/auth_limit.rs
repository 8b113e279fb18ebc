//! Failed authentication — API tokens, web sign-ins, console logins — counted per source
//! address, per token prefix and per account name in fixed windows: over the limit a source is
//! refused (429) before its token is even looked at, and a prefix's wrong secrets or a name's
//! wrong passwords are refused; each window that saw failures becomes one audit event with its
//! counts. The one limiter of every way in. Pure: the caller passes the time, so the tests drive a fake clock.

use std::collections::HashMap;
use std::net::IpAddr;

/// The limiter's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimitPolicy {
    /// Length of a counting window, in ms.
    pub window_ms: i64,
    /// Failures from one source address in a window before it is refused.
    pub max_per_source: u64,
    /// Failures against one token prefix in a window before its wrong secrets answer 429.
    pub max_per_prefix: u64,
    /// Failed sign-ins of one account name in a window before it is refused unchecked.
    pub max_per_account: u64,
    /// Most windows tracked at once; failures of keys past it are only counted in total.
    pub max_tracked: usize,
}

impl Default for AuthLimitPolicy {
    fn default() -> Self {
        AuthLimitPolicy {
            window_ms: 60_000,
            max_per_source: 20,
            max_per_prefix: 20,
            max_per_account: 5,
            max_tracked: 65_536,
        }
    }
}

/// What failures are counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailureKey {
    /// The client's address (not its port: a new connection is the same client).
    Source(IpAddr),
    /// The public prefix of a presented token.
    Prefix(String),
    /// An account name a password sign-in named (whether or not it exists).
    Account(String),
}

/// One finished window of a key, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReport {
    /// The key.
    pub key: FailureKey,
    /// When the window began (unix ms).
    pub started_ms: i64,
    /// Failed authentications in it.
    pub failures: u64,
    /// Requests answered 429 in it.
    pub refused: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started_ms: i64,
    failures: u64,
    refused: u64,
}

/// The counters. Keep one per process, behind a mutex (every method is quick).
#[derive(Debug, Default)]
pub struct AuthLimiter {
    policy: AuthLimitPolicy,
    windows: HashMap<FailureKey, Window>,
    /// Windows that ended while a key was in use again, waiting for [`AuthLimiter::take_closed`].
    closed: Vec<FailureReport>,
    /// Failures of keys not tracked because the table was full (reported, then reset).
    untracked: u64,
}

impl AuthLimiter {
    /// A limiter with `policy`.
    pub fn new(policy: AuthLimitPolicy) -> Self {
        AuthLimiter {
            policy,
            ..Default::default()
        }
    }

    fn limit(&self, key: &FailureKey) -> u64 {
        match key {
            FailureKey::Source(_) => self.policy.max_per_source,
            FailureKey::Prefix(_) => self.policy.max_per_prefix,
            FailureKey::Account(_) => self.policy.max_per_account,
        }
    }

    /// The key's current window, closing an expired one first; None when the table is full.
    fn window(&mut self, key: &FailureKey, now: i64, create: bool) -> Option<&mut Window> {
        let window_ms = self.policy.window_ms;
        if let Some(w) = self.windows.get(key) {
            if now >= w.started_ms + window_ms {
                let w = *w;
                self.windows.remove(key);
                self.closed.push(FailureReport {
                    key: key.clone(),
                    started_ms: w.started_ms,
                    failures: w.failures,
                    refused: w.refused,
                });
            }
        }
        if !self.windows.contains_key(key) {
            if !create || self.windows.len() >= self.policy.max_tracked {
                return None;
            }
            self.windows.insert(
                key.clone(),
                Window {
                    started_ms: now,
                    failures: 0,
                    refused: 0,
                },
            );
        }
        self.windows.get_mut(key)
    }

    /// Whether `key` is over its limit now: Some(seconds until its window ends, at least 1),
    /// and the refusal is counted; None: go on.
    pub fn refused(&mut self, key: &FailureKey, now: i64) -> Option<u64> {
        let limit = self.limit(key);
        let window_ms = self.policy.window_ms;
        let w = self.window(key, now, false)?;
        if w.failures < limit {
            return None;
        }
        w.refused += 1;
        let left_ms = (w.started_ms + window_ms - now).max(1);
        Some(u64::try_from(left_ms).unwrap_or(1).div_ceil(1000))
    }

    /// Counts one failed authentication under `key`.
    pub fn failed(&mut self, key: &FailureKey, now: i64) {
        match self.window(key, now, true) {
            Some(w) => w.failures += 1,
            None => self.untracked += 1,
        }
    }

    /// A successful authentication under `key` ends its window (reported like any other), so
    /// earlier mistakes do not count against the next ones.
    pub fn succeeded(&mut self, key: &FailureKey) {
        if let Some(w) = self.windows.remove(key) {
            self.closed.push(FailureReport {
                key: key.clone(),
                started_ms: w.started_ms,
                failures: w.failures,
                refused: w.refused,
            });
        }
    }

    /// Every window that has ended by `now` (all of them with `now = i64::MAX`, at shutdown),
    /// and the count of untracked failures since the last call.
    pub fn take_closed(&mut self, now: i64) -> (Vec<FailureReport>, u64) {
        let window_ms = self.policy.window_ms;
        let ended: Vec<FailureKey> = self
            .windows
            .iter()
            .filter(|(_, w)| now >= w.started_ms.saturating_add(window_ms))
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(w) = self.windows.remove(&key) {
                self.closed.push(FailureReport {
                    key,
                    started_ms: w.started_ms,
                    failures: w.failures,
                    refused: w.refused,
                });
            }
        }
        let mut out = std::mem::take(&mut self.closed);
        // A window whose only traffic was a look (no failure, no refusal) is not an event.
        out.retain(|r| r.failures + r.refused > 0);
        (out, std::mem::take(&mut self.untracked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AuthLimitPolicy {
        AuthLimitPolicy {
            window_ms: 10_000,
            max_per_source: 3,
            max_per_prefix: 5,
            max_per_account: 2,
            max_tracked: 4,
        }
    }

    fn src(last: u8) -> FailureKey {
        FailureKey::Source(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn a_source_is_refused_after_its_limit_until_the_window_ends() {
        let mut l = AuthLimiter::new(policy());
        let a = src(1);
        for t in 0..3 {
            assert_eq!(l.refused(&a, 1_000 + t), None);
            l.failed(&a, 1_000 + t);
        }
        // The window began at 1 000 and lasts 10 s: 5.5 s are left, rounded up.
        assert_eq!(l.refused(&a, 5_500), Some(6));
        assert_eq!(l.refused(&a, 10_999), Some(1));
        // Another source is not affected.
        assert_eq!(l.refused(&src(2), 5_500), None);
        // A new window starts clean.
        assert_eq!(l.refused(&a, 11_000), None);
    }

    #[test]
    fn each_window_is_reported_once_with_its_counts() {
        let mut l = AuthLimiter::new(policy());
        let a = src(1);
        for t in 0..5 {
            if l.refused(&a, t).is_none() {
                l.failed(&a, t);
            }
        }
        // Still open: nothing to report.
        assert_eq!(l.take_closed(9_999), (vec![], 0));
        let (reports, untracked) = l.take_closed(10_000);
        assert_eq!(untracked, 0);
        assert_eq!(
            reports,
            vec![FailureReport {
                key: a.clone(),
                started_ms: 0,
                failures: 3,
                refused: 2
            }]
        );
        assert_eq!(l.take_closed(50_000), (vec![], 0));
    }

    #[test]
    fn a_window_closed_by_new_traffic_is_still_reported() {
        let mut l = AuthLimiter::new(policy());
        let p = FailureKey::Prefix("rs_abc".into());
        l.failed(&p, 0);
        l.failed(&p, 20_000);
        let (reports, _) = l.take_closed(20_001);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!((reports[0].started_ms, reports[0].failures), (0, 1));
        let (reports, _) = l.take_closed(i64::MAX);
        assert_eq!((reports[0].started_ms, reports[0].failures), (20_000, 1));
    }

    #[test]
    fn prefixes_have_their_own_limit() {
        let mut l = AuthLimiter::new(policy());
        let p = FailureKey::Prefix("rs_abc".into());
        for t in 0..4 {
            l.failed(&p, t);
        }
        assert_eq!(l.refused(&p, 5), None);
        l.failed(&p, 5);
        assert!(l.refused(&p, 6).is_some());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut l = AuthLimiter::new(policy());
        for i in 0..10 {
            l.failed(&src(i), 0);
        }
        let (reports, untracked) = l.take_closed(i64::MAX);
        assert_eq!((reports.len(), untracked), (4, 6));
        // Space again once windows close.
        l.failed(&src(42), 0);
        assert_eq!(l.take_closed(i64::MAX).0.len(), 1);
    }

    #[test]
    fn an_account_is_refused_after_its_limit_and_a_success_clears_it() {
        let mut l = AuthLimiter::new(policy());
        let bo = FailureKey::Account("bo".into());
        l.failed(&bo, 1_000);
        l.succeeded(&bo);
        assert_eq!(l.refused(&bo, 1_001), None, "a success forgets the mistake");
        l.failed(&bo, 1_002);
        l.failed(&bo, 1_003);
        assert_eq!(l.refused(&bo, 1_004), Some(10));
        assert_eq!(l.refused(&FailureKey::Account("rosa".into()), 1_004), None);
        let (reports, _) = l.take_closed(i64::MAX);
        assert_eq!(
            reports.len(),
            2,
            "the cleared window and the open one: {reports:?}"
        );
    }
}
