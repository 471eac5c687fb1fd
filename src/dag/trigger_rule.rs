//! Trigger rules: when a task may run, given the states of its upstream
//! tasks. The semantics are Airflow's (`TriggerRuleDep`), including its eager
//! propagation: a task is marked `upstream_failed` or `skipped` as soon as the
//! outcome is certain, without waiting for the remaining upstream tasks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// When a task runs, given its upstream tasks' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    /// All upstream tasks succeeded (the default).
    #[default]
    AllSuccess,
    /// All upstream tasks failed or are upstream_failed.
    AllFailed,
    /// All upstream tasks finished, whatever their state.
    AllDone,
    /// All upstream tasks were skipped.
    AllSkipped,
    /// At least one upstream task succeeded (runs without waiting for the rest).
    OneSuccess,
    /// At least one upstream task failed (runs without waiting for the rest).
    OneFailed,
    /// At least one upstream task succeeded or failed.
    OneDone,
    /// No upstream task failed (succeeded or skipped).
    NoneFailed,
    /// No upstream task failed and at least one succeeded.
    NoneFailedMinOneSuccess,
    /// No upstream task was skipped.
    NoneSkipped,
    /// Run regardless of upstream states, as soon as the run starts.
    Always,
}

impl TriggerRule {
    pub const ALL: [TriggerRule; 11] = [
        TriggerRule::AllSuccess,
        TriggerRule::AllFailed,
        TriggerRule::AllDone,
        TriggerRule::AllSkipped,
        TriggerRule::OneSuccess,
        TriggerRule::OneFailed,
        TriggerRule::OneDone,
        TriggerRule::NoneFailed,
        TriggerRule::NoneFailedMinOneSuccess,
        TriggerRule::NoneSkipped,
        TriggerRule::Always,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllFailed => "all_failed",
            TriggerRule::AllDone => "all_done",
            TriggerRule::AllSkipped => "all_skipped",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::OneDone => "one_done",
            TriggerRule::NoneFailed => "none_failed",
            TriggerRule::NoneFailedMinOneSuccess => "none_failed_min_one_success",
            TriggerRule::NoneSkipped => "none_skipped",
            TriggerRule::Always => "always",
        }
    }
}

/// How many upstream tasks are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamCounts {
    pub total: usize,
    pub success: usize,
    pub skipped: usize,
    pub failed: usize,
    pub upstream_failed: usize,
}

impl UpstreamCounts {
    /// Upstream tasks in a terminal state.
    pub fn done(&self) -> usize {
        self.success + self.skipped + self.failed + self.upstream_failed
    }
    pub fn all_done(&self) -> bool {
        self.done() >= self.total
    }
}

/// What to do with a task that has not started yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not decidable yet: wait for more upstream tasks to finish.
    Wait,
    /// Queue the task to run.
    Run,
    /// Mark the task skipped (it will not run).
    Skip,
    /// Mark the task upstream_failed (it will not run).
    UpstreamFailed,
}

/// Airflow's trigger rule evaluation. A task with no upstream runs at once.
pub fn evaluate(rule: TriggerRule, c: UpstreamCounts) -> Decision {
    use Decision::*;
    if c.total == 0 {
        return Run;
    }
    let done = c.all_done();
    let any_failed = c.failed + c.upstream_failed > 0;
    match rule {
        TriggerRule::Always => Run,
        TriggerRule::AllSuccess => {
            if any_failed {
                UpstreamFailed
            } else if c.skipped > 0 {
                Skip
            } else if c.success == c.total {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::AllFailed => {
            if c.success + c.skipped > 0 {
                Skip
            } else if done {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::AllDone => {
            if done {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::AllSkipped => {
            if c.success + c.failed + c.upstream_failed > 0 {
                Skip
            } else if done {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::OneSuccess => {
            if c.success > 0 {
                Run
            } else if done && c.skipped == c.total {
                Skip
            } else if done {
                UpstreamFailed
            } else {
                Wait
            }
        }
        TriggerRule::OneFailed => {
            if any_failed {
                Run
            } else if done {
                Skip
            } else {
                Wait
            }
        }
        TriggerRule::OneDone => {
            if c.success + c.failed > 0 {
                Run
            } else if done {
                Skip
            } else {
                Wait
            }
        }
        TriggerRule::NoneFailed => {
            if any_failed {
                UpstreamFailed
            } else if done {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::NoneFailedMinOneSuccess => {
            if any_failed {
                UpstreamFailed
            } else if done && c.skipped == c.total {
                Skip
            } else if done {
                Run
            } else {
                Wait
            }
        }
        TriggerRule::NoneSkipped => {
            if c.skipped > 0 {
                Skip
            } else if done {
                Run
            } else {
                Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Decision::*;
    use super::TriggerRule::*;
    use super::*;

    /// (success, skipped, failed, upstream_failed, still running) of 3 upstreams
    fn c(success: usize, skipped: usize, failed: usize, upstream_failed: usize) -> UpstreamCounts {
        UpstreamCounts { total: 3, success, skipped, failed, upstream_failed }
    }

    #[test]
    fn airflow_semantics_table() {
        let cases = [
            (AllSuccess, c(3, 0, 0, 0), Run),
            (AllSuccess, c(2, 0, 0, 0), Wait),
            (AllSuccess, c(0, 0, 1, 0), UpstreamFailed), // eager
            (AllSuccess, c(0, 0, 0, 1), UpstreamFailed),
            (AllSuccess, c(1, 1, 0, 0), Skip), // eager
            (AllFailed, c(0, 0, 2, 1), Run),
            (AllFailed, c(0, 0, 2, 0), Wait),
            (AllFailed, c(1, 0, 0, 0), Skip), // eager
            (AllDone, c(1, 1, 0, 0), Wait),
            (AllDone, c(1, 1, 1, 0), Run),
            (AllSkipped, c(0, 3, 0, 0), Run),
            (AllSkipped, c(0, 2, 0, 0), Wait),
            (AllSkipped, c(1, 0, 0, 0), Skip),
            (OneSuccess, c(1, 0, 0, 0), Run), // eager
            (OneSuccess, c(0, 3, 0, 0), Skip),
            (OneSuccess, c(0, 2, 1, 0), UpstreamFailed),
            (OneSuccess, c(0, 0, 1, 0), Wait),
            (OneFailed, c(0, 0, 1, 0), Run), // eager
            (OneFailed, c(0, 0, 0, 1), Run),
            (OneFailed, c(2, 1, 0, 0), Skip),
            (OneFailed, c(2, 0, 0, 0), Wait),
            (OneDone, c(0, 0, 1, 0), Run),
            (OneDone, c(0, 2, 0, 1), Skip),
            (OneDone, c(0, 1, 0, 0), Wait),
            (NoneFailed, c(1, 2, 0, 0), Run),
            (NoneFailed, c(1, 1, 0, 0), Wait),
            (NoneFailed, c(1, 0, 1, 0), UpstreamFailed),
            (NoneFailedMinOneSuccess, c(1, 2, 0, 0), Run),
            (NoneFailedMinOneSuccess, c(0, 3, 0, 0), Skip),
            (NoneFailedMinOneSuccess, c(0, 0, 0, 1), UpstreamFailed),
            (NoneSkipped, c(1, 0, 2, 0), Run),
            (NoneSkipped, c(1, 1, 0, 0), Skip),
            (NoneSkipped, c(1, 0, 0, 0), Wait),
            (Always, c(0, 0, 0, 0), Run),
        ];
        for (rule, counts, want) in cases {
            assert_eq!(evaluate(rule, counts), want, "{rule:?} {counts:?}");
        }
    }

    #[test]
    fn no_upstream_runs() {
        for rule in TriggerRule::ALL {
            assert_eq!(evaluate(rule, UpstreamCounts::default()), Run);
        }
    }
}
