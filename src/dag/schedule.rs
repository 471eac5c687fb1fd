//! Schedules and data intervals.
//!
//! A schedule is a 5-field cron expression or a preset (`@hourly`, `@daily`,
//! `@weekly`, `@monthly`, `@yearly`), evaluated in the DAG's IANA time zone
//! so that `0 9 * * 1` in `Asia/Seoul` means 09:00 Seoul time across DST
//! changes in any zone. Following Airflow 2, the run for the interval
//! `[tick, next tick)` has `logical_date = tick` and is due once the interval
//! has ended.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written in the DAG file.
    pub expr: String,
    cron: Cron,
    /// Whether the hour field is `*`: such schedules step through real
    /// time across DST changes (an hourly DAG gets 25 runs on the day the
    /// clocks go back), as Airflow's timetables do.
    every_hour: bool,
}

/// A half-open interval `[start, end)` of data a run processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

const PRESETS: [(&str, &str); 7] = [
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
];

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let trimmed = expr.trim();
        let pattern = if trimmed.starts_with('@') {
            match PRESETS.iter().find(|(name, _)| *name == trimmed) {
                Some((_, p)) => *p,
                None => {
                    let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                    return Err(format!(
                        "unknown schedule preset `{trimmed}`{}; presets are {}",
                        crate::diag::hint(trimmed, names.iter().copied()),
                        names.join(", ")
                    ));
                }
            }
        } else {
            let fields = trimmed.split_whitespace().count();
            if fields != 5 {
                return Err(format!(
                    "invalid cron expression `{trimmed}`: it has {fields} fields, a schedule needs 5 (minute hour day-of-month month day-of-week), e.g. `0 9 * * 1`"
                ));
            }
            trimmed
        };
        check_fields(trimmed, pattern)?;
        // Classic cron ORs day-of-month and day-of-week when both are set.
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).dom_and_dow(false).build();
        let cron = parser.parse(pattern).map_err(|e| format!("invalid cron expression `{trimmed}`: {e}"))?;
        let hour = pattern.split_whitespace().nth(1).unwrap_or("*");
        let every_hour = matches!(hour, "*" | "*/1" | "0-23");
        Ok(Schedule { expr: trimmed.to_string(), cron, every_hour })
    }

    /// The first tick strictly after `t`.
    ///
    /// Follows Airflow's DST rules: the expression is evaluated on the
    /// zone's wall clock; a schedule whose hour field is `*` steps through
    /// real time (so an hour that happens twice gets two runs and an hour
    /// that is skipped gets none), while one at fixed hours runs at the
    /// second of two identical wall-clock times and, in a gap, as many
    /// minutes after the gap as it was meant to be into it (`30 2 * * *`
    /// runs at 03:30 on the day 02:00 becomes 03:00).
    pub fn next_after(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let t = whole_seconds(t);
        let naive = t.with_timezone(&tz).naive_local();
        let next = self.cron.find_next_occurrence(&naive.and_utc(), false).ok()?.naive_utc();
        if self.every_hour { Some(t + (next - naive)) } else { Some(make_aware(next, tz)) }
    }

    /// The last tick strictly before `t` (see [`Schedule::next_after`]).
    pub fn prev_before(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let t = whole_seconds(t);
        let naive = t.with_timezone(&tz).naive_local();
        let prev = self.cron.find_previous_occurrence(&naive.and_utc(), false).ok()?.naive_utc();
        if self.every_hour {
            return Some(t - (naive - prev));
        }
        let p = make_aware(prev, tz);
        if p < t {
            return Some(p);
        }
        // In the hour that happens twice, the wall clock of `t` may be past
        // the tick's while `t` itself is before it (01:45 EDT is before the
        // tick at 01:30 EST): the tick before that one.
        let prev = self.cron.find_previous_occurrence(&prev.and_utc(), false).ok()?.naive_utc();
        Some(make_aware(prev, tz))
    }

    /// The first tick at or after `t`.
    pub fn next_at_or_after(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let t = whole_seconds(t);
        self.next_after(t - chrono::Duration::seconds(1), tz)
    }

    /// The last tick at or before `t`.
    pub fn prev_at_or_before(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let t = whole_seconds(t);
        if self.is_tick(t, tz) { Some(t) } else { self.prev_before(t, tz) }
    }

    pub fn is_tick(&self, t: DateTime<Utc>, tz: Tz) -> bool {
        self.next_at_or_after(t, tz) == Some(t)
    }

    /// The interval that starts at tick `start`.
    pub fn interval_starting(&self, start: DateTime<Utc>, tz: Tz) -> Option<DataInterval> {
        self.next_after(start, tz).map(|end| DataInterval { start, end })
    }

    /// The latest interval that has fully ended by `now`.
    pub fn latest_complete_interval(&self, now: DateTime<Utc>, tz: Tz) -> Option<DataInterval> {
        let end = self.prev_at_or_before(now, tz)?;
        let start = self.prev_before(end, tz)?;
        Some(DataInterval { start, end })
    }

    /// The interval whose logical date falls on calendar day `date` (in `tz`):
    /// the first tick of that day. Errors name the nearest ticks when the
    /// schedule has none on that day (e.g. a weekly DAG and a Wednesday).
    pub fn interval_on_date(&self, date: NaiveDate, tz: Tz) -> Result<DataInterval, String> {
        let day_start = local_midnight(date, tz);
        let next_day = local_midnight(date.succ_opt().unwrap_or(date), tz);
        let first = self.next_at_or_after(day_start, tz);
        match first {
            Some(t) if t < next_day => self.interval_starting(t, tz).ok_or_else(|| "the schedule has no later tick".to_string()),
            _ => {
                let before = self.prev_before(day_start, tz).map(|t| fmt_local(t, tz));
                let after = first.map(|t| fmt_local(t, tz));
                Err(format!(
                    "schedule `{}` has no interval starting on {date}; the nearest start on or before it is {} and after it {}; pass one of those with --date or --logical-date",
                    self.expr,
                    before.unwrap_or_else(|| "none".into()),
                    after.unwrap_or_else(|| "none".into())
                ))
            }
        }
    }
}

/// A wall-clock time in `tz` as an instant, as Airflow makes it aware: the
/// second of two identical times when the clocks go back, and, in the gap
/// when they go forward, the time read with the offset before the gap
/// (02:30 in a gap from 02:00 to 03:00 is 03:30).
pub fn make_aware(naive: chrono::NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    use chrono::Offset;
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(_, later) => later.with_timezone(&Utc),
        chrono::LocalResult::None => {
            let before = tz.offset_from_utc_datetime(&(naive - chrono::Duration::hours(3))).fix();
            Utc.from_utc_datetime(&(naive - before))
        }
    }
}

/// Ticks are whole minutes, but "now" has nanoseconds; croner carries the
/// sub-second part of its input into what it returns when searching
/// backwards, so every search starts from a whole second.
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Timelike;
    t.with_nanosecond(0).unwrap_or(t)
}

/// Names the field and value when a number is out of range: croner's own
/// message does not say which.
fn check_fields(expr: &str, pattern: &str) -> Result<(), String> {
    const FIELDS: [(&str, u32, u32); 5] =
        [("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7)];
    for (field, (name, lo, hi)) in pattern.split_whitespace().zip(FIELDS) {
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            if let Some(step) = step
                && step.parse::<u32>().map_or(true, |s| s == 0)
            {
                return Err(format!("invalid cron expression `{expr}`: the {name} step `/{step}` must be a positive number"));
            }
            for n in range.split('-') {
                if let Ok(v) = n.parse::<u32>()
                    && (v < lo || v > hi)
                {
                    return Err(format!("invalid cron expression `{expr}`: {name} {v} is out of range {lo}-{hi}"));
                }
            }
        }
    }
    Ok(())
}

/// Midnight of `date` in `tz`, in UTC. On a day whose midnight does not
/// exist (a DST gap at 00:00), the first valid instant after it.
pub fn local_midnight(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let naive = date.and_hms_opt(0, 0, 0).expect("midnight is valid");
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
        chrono::LocalResult::None => {
            let later = naive + chrono::Duration::hours(1);
            tz.from_local_datetime(&later).earliest().map(|t| t.with_timezone(&Utc)).unwrap_or_else(|| Utc.from_utc_datetime(&naive))
        }
    }
}

/// `2026-11-16 09:00 KST` style, for messages.
pub fn fmt_local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

/// Parses an IANA time zone name with a "did you mean" on failure.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        let hint = crate::diag::hint(name, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
        format!("unknown time zone `{name}`{hint}; use an IANA name such as `UTC` or `Asia/Seoul`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn presets_and_cron() {
        let s = Schedule::parse("@daily").unwrap();
        assert_eq!(s.next_after(utc("2024-01-05T10:00:00Z"), Tz::UTC), Some(utc("2024-01-06T00:00:00Z")));
        assert!(Schedule::parse("*/10 * * * *").is_ok());
        assert!(Schedule::parse("0 0 * * * *").unwrap_err().contains("6 fields"));
        assert!(Schedule::parse("@dayly").unwrap_err().contains("did you mean `@daily`"));
        assert!(Schedule::parse("61 * * * *").is_err());
    }

    #[test]
    fn intervals_follow_airflow() {
        let s = Schedule::parse("@daily").unwrap();
        let i = s.latest_complete_interval(utc("2024-01-05T10:00:00Z"), Tz::UTC).unwrap();
        assert_eq!(i.start, utc("2024-01-04T00:00:00Z"));
        assert_eq!(i.end, utc("2024-01-05T00:00:00Z"));
        let d = s.interval_on_date(NaiveDate::from_ymd_opt(2024, 1, 5).unwrap(), Tz::UTC).unwrap();
        assert_eq!((d.start, d.end), (utc("2024-01-05T00:00:00Z"), utc("2024-01-06T00:00:00Z")));
    }

    #[test]
    fn weekly_seoul_and_wrong_day() {
        let s = Schedule::parse("0 9 * * 1").unwrap();
        let tz: Tz = "Asia/Seoul".parse().unwrap();
        let d = s.interval_on_date(NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(), tz).unwrap();
        assert_eq!(d.start, utc("2026-11-16T00:00:00Z")); // 09:00 KST
        assert_eq!(d.end, utc("2026-11-23T00:00:00Z"));
        let e = s.interval_on_date(NaiveDate::from_ymd_opt(2026, 11, 18).unwrap(), tz).unwrap_err();
        assert!(e.contains("2026-11-16 09:00 KST") && e.contains("2026-11-23 09:00 KST"), "{e}");
    }

    #[test]
    fn dst_is_followed() {
        // 02:30 daily in New York: after the spring-forward day the UTC offset changes.
        let s = Schedule::parse("0 12 * * *").unwrap();
        let tz: Tz = "America/New_York".parse().unwrap();
        let before = s.next_after(utc("2024-03-09T00:00:00Z"), tz).unwrap();
        let after = s.next_after(utc("2024-03-11T00:00:00Z"), tz).unwrap();
        assert_eq!(before, utc("2024-03-09T17:00:00Z")); // EST, UTC-5
        assert_eq!(after, utc("2024-03-11T16:00:00Z")); // EDT, UTC-4
    }

    /// Ticks of a schedule from `from` (inclusive) to `to` (exclusive), in UTC.
    fn ticks(expr: &str, tz: &str, from: &str, to: &str) -> Vec<String> {
        let s = Schedule::parse(expr).unwrap();
        let tz: Tz = tz.parse().unwrap();
        let mut t = s.next_at_or_after(utc(from), tz);
        let mut out = Vec::new();
        while let Some(x) = t.filter(|x| *x < utc(to)) {
            out.push(x.format("%H:%M").to_string());
            t = s.next_after(x, tz);
        }
        out
    }

    #[test]
    fn hourly_runs_every_real_hour_across_dst() {
        // New York, 2024-11-03: 01:00-02:00 happens twice. Airflow gives 25
        // one-hour runs; every hour of real time gets its run.
        let day = ticks("@hourly", "America/New_York", "2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z");
        assert_eq!(day.len(), 25);
        assert_eq!(&day[..4], ["04:00", "05:00", "06:00", "07:00"]); // 00:00 EDT, 01:00 EDT, 01:00 EST, 02:00 EST
        let s = Schedule::parse("@hourly").unwrap();
        let ny: Tz = "America/New_York".parse().unwrap();
        let i = s.interval_starting(utc("2024-11-03T05:00:00Z"), ny).unwrap();
        assert_eq!(i.end - i.start, chrono::Duration::hours(1));
        // 2024-03-10: 02:00-03:00 does not exist: 23 runs.
        assert_eq!(ticks("@hourly", "America/New_York", "2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z").len(), 23);
        // Berlin (back on 2024-10-27 at 03:00) and Sydney (southern
        // hemisphere: back on 2024-04-07, forward on 2024-10-06).
        assert_eq!(ticks("0 * * * *", "Europe/Berlin", "2024-10-26T22:00:00Z", "2024-10-27T23:00:00Z").len(), 25);
        assert_eq!(ticks("*/30 * * * *", "Europe/Berlin", "2024-03-30T23:00:00Z", "2024-03-31T22:00:00Z").len(), 46);
        assert_eq!(ticks("@hourly", "Australia/Sydney", "2024-04-06T13:00:00Z", "2024-04-07T14:00:00Z").len(), 25);
        assert_eq!(ticks("@hourly", "Australia/Sydney", "2024-10-05T14:00:00Z", "2024-10-06T13:00:00Z").len(), 23);
        // Going backwards agrees.
        assert_eq!(s.prev_before(utc("2024-11-03T07:00:00Z"), ny), Some(utc("2024-11-03T06:00:00Z")));
        assert_eq!(s.prev_before(utc("2024-11-03T06:00:00Z"), ny), Some(utc("2024-11-03T05:00:00Z")));
    }

    #[test]
    fn fixed_times_in_dst_changes_follow_airflow() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 01:30 happens twice on 2024-11-03: the second, 01:30 EST.
        let s = Schedule::parse("30 1 * * *").unwrap();
        assert_eq!(s.next_after(utc("2024-11-03T04:00:00Z"), ny), Some(utc("2024-11-03T06:30:00Z")));
        assert!(!s.is_tick(utc("2024-11-03T05:30:00Z"), ny));
        assert_eq!(s.prev_before(utc("2024-11-03T05:45:00Z"), ny), Some(utc("2024-11-02T05:30:00Z")));
        assert_eq!(s.prev_before(utc("2024-11-03T07:00:00Z"), ny), Some(utc("2024-11-03T06:30:00Z")));
        // 02:30 does not exist on 2024-03-10: 03:30 EDT, as in Airflow.
        let s = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(s.next_after(utc("2024-03-10T05:00:00Z"), ny), Some(utc("2024-03-10T07:30:00Z")));
        assert_eq!(s.next_after(utc("2024-03-10T07:30:00Z"), ny), Some(utc("2024-03-11T06:30:00Z")));
        // Berlin, 2024-03-31 02:30 (gap 02:00-03:00): 03:30 CEST = 01:30 UTC;
        // 2024-10-27 02:30 twice: the second, 02:30 CET = 01:30 UTC.
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(s.next_after(utc("2024-03-30T23:00:00Z"), berlin), Some(utc("2024-03-31T01:30:00Z")));
        assert_eq!(s.next_after(utc("2024-10-26T23:00:00Z"), berlin), Some(utc("2024-10-27T01:30:00Z")));
        // A daily DAG still has one run per day on both days.
        let d = Schedule::parse("@daily").unwrap();
        let i = d.interval_on_date(NaiveDate::from_ymd_opt(2024, 11, 3).unwrap(), ny).unwrap();
        assert_eq!(i.end - i.start, chrono::Duration::hours(25));
    }

    #[test]
    fn fractional_now_gives_whole_ticks() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let now = utc("2026-11-21T16:49:00Z") + chrono::Duration::microseconds(997_794);
        let i = s.latest_complete_interval(now, Tz::UTC).unwrap();
        assert_eq!((i.start, i.end), (utc("2026-11-21T16:30:00Z"), utc("2026-11-21T16:40:00Z")));
        assert_eq!(s.prev_at_or_before(now, Tz::UTC), Some(utc("2026-11-21T16:40:00Z")));
    }

    #[test]
    fn timezone_hint() {
        assert!(parse_tz("Asia/Seul").unwrap_err().contains("Asia/Seoul"));
    }
}
