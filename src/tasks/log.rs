//! A try's log: sluice's own lines for the try (captured from `tracing`
//! events inside the try's span, see [`crate::logging`]) and the task's
//! stdout/stderr, in order, with timestamps. Secrets are masked on the way
//! in. Very long logs keep their head and their last lines.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Bytes kept from the start of a log before only the tail is kept.
const HEAD_BYTES: usize = 4 << 20;
/// Lines kept at the end of a log that outgrew [`HEAD_BYTES`].
const TAIL_LINES: usize = 2000;

#[derive(Clone, Default)]
pub struct TryLog(Arc<Mutex<Buf>>);

#[derive(Default)]
struct Buf {
    head: String,
    tail: VecDeque<String>,
    omitted: usize,
    /// Set when lines arrived since the last `take_dirty`.
    dirty: bool,
    /// Also print each line to stderr (`sluice tasks test`).
    echo: bool,
}

impl TryLog {
    pub fn new() -> TryLog {
        TryLog::default()
    }

    /// A log that also prints each line to stderr as it arrives.
    pub fn echoing() -> TryLog {
        let l = TryLog::default();
        l.0.lock().unwrap_or_else(|e| e.into_inner()).echo = true;
        l
    }

    /// Appends one line, prefixed with the time and masked.
    pub fn line(&self, text: &str) {
        let now = chrono::Local::now().format("%H:%M:%S%.3f");
        let masked = crate::secrets::mask(text.trim_end_matches(['\n', '\r']));
        let line = format!("[{now}] {masked}\n");
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if b.echo {
            eprint!("{line}");
        }
        b.dirty = true;
        if b.head.len() + line.len() <= HEAD_BYTES && b.tail.is_empty() {
            b.head.push_str(&line);
        } else {
            b.tail.push_back(line);
            if b.tail.len() > TAIL_LINES {
                b.tail.pop_front();
                b.omitted += 1;
            }
        }
    }

    /// Starts the log with text stored earlier (a rescheduled sensor's
    /// pokes so far), as it was stored: already masked and timestamped.
    pub fn seed(&self, text: &str) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        b.head = text.to_string();
        b.dirty = true;
    }

    /// The whole log as stored.
    pub fn text(&self) -> String {
        let b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = b.head.clone();
        if b.omitted > 0 {
            s.push_str(&format!("[... {} lines omitted ...]\n", b.omitted));
        }
        for l in &b.tail {
            s.push_str(l);
        }
        s
    }

    /// The last `n` lines, for error messages and failure emails.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].iter().map(|s| s.to_string()).collect()
    }

    /// Whether lines arrived since the last call (for periodic flushes).
    pub fn take_dirty(&self) -> bool {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut b.dirty, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lines_in_order_and_masks() {
        crate::secrets::register("log-secret-123");
        let l = TryLog::new();
        l.line("hello");
        l.line("token=log-secret-123");
        let t = l.text();
        assert!(t.contains("hello\n") && t.contains("token=***\n"), "{t}");
        assert!(!t.contains("log-secret-123"));
        assert_eq!(l.last_lines(1).len(), 1);
        assert!(l.take_dirty());
        assert!(!l.take_dirty());
    }
}
