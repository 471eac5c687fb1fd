//! Polars' own warnings (deprecations, hints), which polars prints to
//! stderr from whichever thread meets them, once per chunk: one query can
//! print the same 46 lines. A task that runs polars captures them for the
//! length of its work and logs each distinct warning once, with how many
//! times it came, in its try's log.
//!
//! Polars calls one process-wide function from its worker threads, which
//! know nothing of the try, so a warning goes to every capture active when
//! it is raised (two transforms running at once each log it). Outside any
//! capture a warning is logged at debug level.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Once, Weak};

type Counts = Mutex<BTreeMap<String, u64>>;

static ACTIVE: Mutex<Vec<Weak<Counts>>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

fn route(message: &str, kind: polars::error::PolarsWarning) {
    let text = format!("{kind:?}: {}", message.trim());
    let live: Vec<Arc<Counts>> = {
        let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
        active.retain(|w| w.strong_count() > 0);
        active.iter().filter_map(Weak::upgrade).collect()
    };
    if live.is_empty() {
        tracing::debug!("polars: {text}");
    }
    for counts in live {
        *counts.lock().unwrap_or_else(|p| p.into_inner()).entry(text.clone()).or_default() += 1;
    }
}

/// Polars warnings raised while this value lives.
pub struct Capture(Arc<Counts>);

impl Capture {
    pub fn start() -> Capture {
        INSTALL.call_once(|| polars::error::set_warning_function(route));
        let counts = Arc::new(Counts::default());
        ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&counts));
        Capture(counts)
    }

    /// Each distinct warning and how many times it came.
    pub fn take(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect()
    }

    /// Logs each distinct warning once, in the current try's log.
    pub fn log(self) {
        for (text, n) in self.take() {
            let times = if n > 1 { format!(" ({n} times)") } else { String::new() };
            tracing::warn!("polars: {text}{times}");
        }
    }
}

/// Tests that capture polars' warnings, or run SQL that may warn, hold
/// this: the capture is process-wide, and tests run in parallel threads.
#[cfg(test)]
pub static TEST_SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use polars::prelude::*;

    use super::*;

    /// A deprecated cast on a frame of many chunks warns once per chunk;
    /// the capture holds it once, with its count, and nothing reaches stderr.
    #[test]
    fn a_warning_per_chunk_is_one_entry_with_its_count() {
        let _serial = TEST_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let cap = Capture::start();
        let mut df = df!("d" => ["2024-01-01"]).unwrap();
        for _ in 0..9 {
            df.vstack_mut(&df!("d" => ["2024-01-02"]).unwrap()).unwrap();
        }
        assert_eq!(df.first_col_n_chunks(), 10);
        let out = df.lazy().select([col("d").cast(DataType::Date)]).collect().unwrap();
        assert_eq!(out.height(), 10);
        let got = cap.take();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].0.contains("Casting from String to Date is deprecated") && got[0].1 >= 1, "{got:?}");
    }
}
