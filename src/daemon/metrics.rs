//! What the daemon exposes on `/metrics`, in Prometheus' text format:
//! counters and histograms kept in memory by this process, plus run and
//! task counts read from the state store when scraped.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use crate::runner::{Observer, RunEvent};
use crate::state::TiState;

/// A histogram with fixed buckets (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, secs: f64) {
        let secs = secs.max(0.0);
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Ordering::Relaxed));
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {n}");
    }
}

pub struct Metrics {
    pub task_duration: Histogram,
    pub scheduling_delay: Histogram,
    pub tries_started: AtomicU64,
    pub tries_succeeded: AtomicU64,
    pub tries_failed: AtomicU64,
    pub runs_created: AtomicU64,
    pub dags_loaded: AtomicU64,
    pub dag_load_errors: AtomicU64,
    pub running_local: AtomicU64,
    /// Completed passes of the scheduler loop (tests wait for one).
    pub scheduler_loops: AtomicU64,
    pub last_loop: Mutex<DateTime<Utc>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            task_duration: Histogram::new(&[0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0]),
            scheduling_delay: Histogram::new(&[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0]),
            tries_started: AtomicU64::new(0),
            tries_succeeded: AtomicU64::new(0),
            tries_failed: AtomicU64::new(0),
            runs_created: AtomicU64::new(0),
            dags_loaded: AtomicU64::new(0),
            dag_load_errors: AtomicU64::new(0),
            running_local: AtomicU64::new(0),
            scheduler_loops: AtomicU64::new(0),
            last_loop: Mutex::new(Utc::now()),
        }
    }
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

impl Metrics {
    /// The text exposition; `db` holds (name, labels, value) read from the state store.
    pub fn render(&self, db: &[(String, String, i64)]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut out, "sluice_dags_loaded", "DAGs loaded by this daemon.", self.dags_loaded.load(Ordering::Relaxed));
        gauge(&mut out, "sluice_dag_load_errors", "DAG files that currently fail to load.", self.dag_load_errors.load(Ordering::Relaxed));
        gauge(&mut out, "sluice_tasks_running_local", "Tries running in this process.", self.running_local.load(Ordering::Relaxed));
        counter(&mut out, "sluice_tries_started_total", "Tries started by this process.", self.tries_started.load(Ordering::Relaxed));
        counter(
            &mut out,
            "sluice_tries_succeeded_total",
            "Tries that succeeded in this process.",
            self.tries_succeeded.load(Ordering::Relaxed),
        );
        counter(&mut out, "sluice_tries_failed_total", "Tries that failed in this process.", self.tries_failed.load(Ordering::Relaxed));
        counter(
            &mut out,
            "sluice_runs_created_total",
            "Scheduled runs created by this process.",
            self.runs_created.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "sluice_scheduler_loops_total",
            "Completed passes of the scheduler loop (load, plan, start).",
            self.scheduler_loops.load(Ordering::Relaxed),
        );
        self.task_duration.render("sluice_task_duration_seconds", "Duration of tries run by this process.", &mut out);
        self.scheduling_delay.render(
            "sluice_scheduling_delay_seconds",
            "From a run's planned time (the end of its interval) to its first task's start.",
            &mut out,
        );
        let mut last = String::new();
        for (name, labels, v) in db {
            if *name != last {
                let help = match name.as_str() {
                    "sluice_dag_runs" => "Runs in the state store, by state.",
                    "sluice_task_instances" => "Task instances of active runs, by state.",
                    _ => "Tries ready to start now.",
                };
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name.clone();
            }
            let _ = writeln!(out, "{name}{labels} {v}");
        }
        if let Some(b) = resident_bytes() {
            gauge(&mut out, "process_resident_memory_bytes", "Resident memory of this process.", b);
        }
        out
    }
}

/// Records the daemon's view of a run: the scheduling delay when its first
/// try starts, and each try's duration.
pub struct RunObserver {
    pub metrics: std::sync::Arc<Metrics>,
    /// When the run was due (its interval's end), for scheduled runs.
    pub planned: Option<DateTime<Utc>>,
    pub started: bool,
}

impl Observer for RunObserver {
    fn event(&mut self, ev: &RunEvent) {
        match ev {
            RunEvent::Started { .. } => {
                self.metrics.tries_started.fetch_add(1, Ordering::Relaxed);
                self.metrics.running_local.fetch_add(1, Ordering::Relaxed);
                if !self.started {
                    self.started = true;
                    if let Some(p) = self.planned {
                        let delay = (Utc::now() - p).num_microseconds().unwrap_or(0) as f64 / 1e6;
                        self.metrics.scheduling_delay.observe(delay);
                    }
                }
            }
            RunEvent::Finished(r) => {
                self.metrics.running_local.fetch_sub(1, Ordering::Relaxed);
                self.metrics.task_duration.observe(r.elapsed.as_secs_f64());
                match r.state {
                    TiState::Success | TiState::Skipped => self.metrics.tries_succeeded.fetch_add(1, Ordering::Relaxed),
                    TiState::Failed | TiState::UpForRetry => self.metrics.tries_failed.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_text() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(3.0);
        let mut s = String::new();
        h.render("x", "help", &mut s);
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3"));
    }
}
