//! Logging setup.
//!
//! Two destinations:
//!
//! * stderr, human-readable or JSON (`--log-format json`), filtered by `-v`
//!   or `RUST_LOG`, with secrets masked;
//! * the log of the try being run: every event emitted inside a `try` span
//!   (at info and above for sluice, warn and above for libraries) is appended
//!   to that try's [`TryLog`], which `sluice logs` shows.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter};

use crate::secrets::MaskingWriter;
use crate::tasks::TryLog;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

static LOGS: LazyLock<Mutex<HashMap<u64, TryLog>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Registers a try's log; events in a span named `try` with field
/// `log_key = key` go to it until the guard is dropped.
pub fn capture(log: &TryLog) -> CaptureGuard {
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).insert(key, log.clone());
    CaptureGuard(key)
}

pub struct CaptureGuard(pub u64);

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// Sets up logging. `default_level` applies to sluice's own events when
/// `RUST_LOG` is unset; `show_tries` also prints the events inside tries
/// (which go to each try's own log in any case).
pub fn init(format: LogFormat, default_level: Level, show_tries: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,sluice={}", default_level.as_str().to_ascii_lowercase())));
    let writer = || MaskingWriter::new(std::io::stderr());
    let stderr_layer = match format {
        LogFormat::Human => {
            tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(use_color()).with_target(false).compact().boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(false).json().flatten_event(true).boxed(),
    };
    let capture_filter = filter::Targets::new().with_target("sluice", Level::INFO).with_default(Level::WARN);
    // Events inside a try belong to the try's log (and the progress display);
    // on stderr they only add noise unless asked for with -v.
    let show_tries = show_tries || std::env::var_os("RUST_LOG").is_some();
    let outside_tries =
        filter::DynFilterFn::new(move |_, cx| show_tries || !cx.lookup_current().is_some_and(|s| s.scope().any(|x| x.name() == "try")));
    let _ = tracing_subscriber::registry()
        .with(stderr_layer.with_filter(filter).with_filter(outside_tries))
        .with(CaptureLayer.with_filter(capture_filter))
        .try_init();
}

/// Colour on a terminal only, and never with `NO_COLOR` set
/// (<https://no-color.org>): a log written to a file or a pipe has no
/// escape codes.
pub fn use_color() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

struct CaptureLayer;

struct LogKey(u64);

#[derive(Default)]
struct KeyVisitor(Option<u64>);

impl Visit for KeyVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "log_key" {
            self.0 = Some(value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "log_key" {
            self.0 = Some(value as u64);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S> Layer<S> for CaptureLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "try" {
            return;
        }
        let mut v = KeyVisitor::default();
        attrs.record(&mut v);
        if let (Some(key), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().insert(LogKey(key));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else { return };
        for span in scope {
            let key = span.extensions().get::<LogKey>().map(|k| k.0);
            if let Some(key) = key {
                let log = LOGS.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
                if let Some(log) = log {
                    let mut v = LineVisitor::default();
                    event.record(&mut v);
                    let level = event.metadata().level();
                    log.line(&format!("{level:>5} {}{}", v.message, v.fields));
                }
                return;
            }
        }
    }
}
