//! Which scheduled runs are due. Pure: the daemon passes in what the state
//! store says (the latest scheduled run) and the time.

use chrono::{DateTime, Utc};

use crate::dag::Dag;
use crate::dag::schedule::DataInterval;

/// Intervals due for a scheduled run, oldest first, at most `limit`.
///
/// * With `catchup: true`, every complete interval after the latest
///   scheduled run (or from `start_date`) is due: after a downtime, each
///   missed interval gets exactly one run.
/// * With `catchup: false`, only the latest complete interval is due, and
///   only if no scheduled run covers it or a later one.
///
/// `end_date` bounds both. An interval is complete when its end has passed.
pub fn due(dag: &Dag, last_scheduled: Option<DateTime<Utc>>, now: DateTime<Utc>, limit: usize) -> Vec<DataInterval> {
    let Some(s) = &dag.schedule else { return Vec::new() };
    let Some(start_date) = dag.start_date else { return Vec::new() };
    let tz = dag.timezone;
    let in_range = |i: &DataInterval| i.start >= start_date && dag.end_date.is_none_or(|e| i.start <= e) && i.end <= now;
    if !dag.catchup {
        return match s.latest_complete_interval(now, tz) {
            Some(i) if in_range(&i) && last_scheduled.is_none_or(|l| l < i.start) && limit > 0 => vec![i],
            _ => Vec::new(),
        };
    }
    let mut out = Vec::new();
    let mut t = match last_scheduled {
        Some(l) => s.next_after(l, tz),
        None => s.next_at_or_after(start_date, tz),
    };
    while let Some(tick) = t {
        if out.len() >= limit {
            break;
        }
        let Some(i) = s.interval_starting(tick, tz) else { break };
        if i.end > now || dag.end_date.is_some_and(|e| i.start > e) {
            break;
        }
        out.push(i);
        t = Some(i.end);
    }
    out
}

/// When the schedule next needs attention: the end of the next interval.
pub fn next_wake(dag: &Dag, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let s = dag.schedule.as_ref()?;
    s.next_after(now, dag.timezone)
}

/// A tokio-cron-scheduler expression (6 fields, seconds first) for a DAG's
/// schedule. It only wakes the daemon up; which runs are due is decided by
/// [`due`], which follows DST (tokio-cron-scheduler keeps a fixed offset).
pub fn wake_cron(expr: &str) -> String {
    let five = match expr.trim() {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        other => other,
    };
    format!("0 {five}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(src: &str) -> Dag {
        crate::dag::from_yaml(src)
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn catchup_makes_every_missed_interval_due() {
        let d = dag(
            "schedule: '* * * * *'\nstart_date: '2024-01-05T10:00:00Z'\ncatchup: true\ntasks: [{id: a, type: shell, command: 'true'}]\n",
        );
        let now = utc("2024-01-05T10:10:30Z");
        let due_all = due(&d, None, now, 100);
        assert_eq!(due_all.len(), 10);
        assert_eq!(due_all[0].start, utc("2024-01-05T10:00:00Z"));
        assert_eq!(due_all[9].end, utc("2024-01-05T10:10:00Z"));
        // After the fourth, six remain; the limit applies.
        assert_eq!(due(&d, Some(utc("2024-01-05T10:03:00Z")), now, 100).len(), 6);
        assert_eq!(due(&d, None, now, 3).len(), 3);
    }

    #[test]
    fn without_catchup_only_the_latest() {
        let d = dag("schedule: '* * * * *'\nstart_date: '2024-01-05T10:00:00Z'\ntasks: [{id: a, type: shell, command: 'true'}]\n");
        let now = utc("2024-01-05T10:10:30Z");
        let d1 = due(&d, None, now, 100);
        assert_eq!(d1.len(), 1);
        assert_eq!(d1[0].start, utc("2024-01-05T10:09:00Z"));
        assert!(due(&d, Some(utc("2024-01-05T10:09:00Z")), now, 100).is_empty());
    }

    #[test]
    fn an_hourly_dag_gets_every_hour_of_the_autumn_dst_day() {
        let d = dag(
            "schedule: '@hourly'\ntimezone: America/New_York\nstart_date: 2024-11-03\ncatchup: true\ntasks: [{id: a, type: shell, command: 'true'}]\n",
        );
        let due_all = due(&d, None, utc("2024-11-04T05:00:00Z"), 100);
        assert_eq!(due_all.len(), 25);
        assert!(due_all.iter().all(|i| i.end - i.start == chrono::Duration::hours(1)));
        assert!(due_all.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn end_date_and_wake_expressions() {
        let d = dag(
            "schedule: '@hourly'\nstart_date: '2024-01-05T00:00:00Z'\nend_date: '2024-01-05T02:00:00Z'\ncatchup: true\ntasks: [{id: a, type: shell, command: 'true'}]\n",
        );
        assert_eq!(due(&d, None, utc("2024-01-06T00:00:00Z"), 100).len(), 3);
        assert_eq!(wake_cron("@daily"), "0 0 0 * * *");
        assert_eq!(wake_cron("*/10 * * * *"), "0 */10 * * * *");
    }
}
