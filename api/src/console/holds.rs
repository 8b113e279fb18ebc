//! Who keeps a machine's console session open besides its viewers: the one home of that rule.
//! A job running on the machine holds it (the engine takes a hold when it starts driving the
//! job, so a conductor that resumes a job after a restart takes it again, and drops it when
//! the job ends). A session with no viewer and no hold closes after its linger.

use std::collections::BTreeMap;

/// Why a session is held open with no viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldFor {
    /// A job runs on the machine: its output is attached to the job.
    Job(i64),
}

/// The holds on one session.
#[derive(Debug, Default)]
pub(super) struct Holds {
    by_id: BTreeMap<u64, HoldFor>,
}

impl Holds {
    /// Adds hold `id`.
    pub fn take(&mut self, id: u64, why: HoldFor) {
        self.by_id.insert(id, why);
    }

    /// Removes hold `id`; true if it was there.
    pub fn release(&mut self, id: u64) -> bool {
        self.by_id.remove(&id).is_some()
    }

    /// The jobs whose output this session's output belongs to now (each once, ascending).
    pub fn jobs(&self) -> Vec<i64> {
        let mut jobs: Vec<i64> = self.by_id.values().map(|HoldFor::Job(j)| *j).collect();
        jobs.sort_unstable();
        jobs.dedup();
        jobs
    }

    /// Whether the session stays open: someone watches or something holds it.
    pub fn keep_open(&self, viewers: usize) -> bool {
        viewers > 0 || !self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_the_session_open_until_its_hold_is_released() {
        let mut h = Holds::default();
        assert!(!h.keep_open(0), "nothing holds a fresh session");
        h.take(1, HoldFor::Job(7));
        assert!(h.keep_open(0), "a job holds it with no viewer");
        assert_eq!(h.jobs(), vec![7]);
        assert!(h.release(1));
        assert!(!h.release(1), "a hold is released once");
        assert!(!h.keep_open(0));
        assert!(h.jobs().is_empty());
    }

    #[test]
    fn two_holds_count_apart_and_the_same_job_is_named_once() {
        let mut h = Holds::default();
        h.take(1, HoldFor::Job(7));
        // A job resumed by a new driver while the old one is being aborted holds twice.
        h.take(2, HoldFor::Job(7));
        h.take(3, HoldFor::Job(3));
        assert_eq!(h.jobs(), vec![3, 7]);
        h.release(1);
        assert_eq!(
            h.jobs(),
            vec![3, 7],
            "job 7 is still held by its other hold"
        );
        h.release(2);
        assert_eq!(h.jobs(), vec![3]);
        h.release(3);
        assert!(!h.keep_open(0));
    }

    #[test]
    fn a_viewer_and_a_job_each_keep_it_open() {
        let mut h = Holds::default();
        assert!(h.keep_open(1), "a viewer alone keeps it open");
        h.take(1, HoldFor::Job(9));
        assert!(h.keep_open(1));
        h.release(1);
        assert!(
            h.keep_open(1),
            "the viewer still watches after the job ended"
        );
        assert!(!h.keep_open(0), "nobody: it closes (after its linger)");
    }
}
