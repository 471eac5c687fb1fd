//! Live progress of a run on the terminal: a spinner per running task on a
//! TTY, one line per event otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::dag::duration::{format, format_elapsed};
use crate::runner::{Observer, RunEvent};
use crate::state::TiState;

pub struct Progress {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    tty: bool,
    width: usize,
}

impl Progress {
    pub fn new(width: usize) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let target = if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Progress { multi: MultiProgress::with_draw_target(target), bars: HashMap::new(), tty, width: width.max(4) }
    }

    fn line(&self, mut s: String) {
        if self.tty {
            let _ = self.multi.println(s);
        } else {
            // One write per line (eprintln! makes one for the text and one
            // for the newline).
            use std::io::Write;
            s.push('\n');
            let _ = std::io::stderr().lock().write_all(s.as_bytes());
        }
    }
}

impl Observer for Progress {
    fn event(&mut self, ev: &RunEvent) {
        let w = self.width;
        match ev {
            RunEvent::Started { task, try_number, max_tries } => {
                let tries = if *max_tries > 1 { format!("  try {try_number}/{max_tries}") } else { String::new() };
                if self.tty {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {spinner} {msg} running {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(format!("{task:w$}{tries}"));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.bars.insert(task.clone(), bar);
                } else {
                    self.line(format!("  > {task:w$} running{tries}"));
                }
            }
            RunEvent::Finished(r) => {
                if let Some(bar) = self.bars.remove(&r.task_id) {
                    bar.finish_and_clear();
                }
                let took = format_elapsed(r.elapsed);
                let text = match r.state {
                    TiState::Success => {
                        format!("  ✓ {:w$} success  {took:>7}  {}", r.task_id, r.note.clone().unwrap_or_default())
                    }
                    TiState::Skipped => format!("  - {:w$} skipped  {took:>7}  {}", r.task_id, r.note.clone().unwrap_or_default()),
                    TiState::UpForRetry => format!(
                        "  ! {:w$} failed   {took:>7}  try {}/{}, retrying in {}: {}",
                        r.task_id,
                        r.try_number,
                        r.max_tries,
                        format(r.retry_in.unwrap_or_default()),
                        first_line(r.error.as_deref().unwrap_or_default())
                    ),
                    TiState::Queued => format!("  ~ {:w$} interrupted {took:>7}", r.task_id),
                    TiState::UpForReschedule => {
                        format!("  … {:w$} waiting  {took:>7}  next poke in {}", r.task_id, format(r.retry_in.unwrap_or_default()))
                    }
                    _ => format!("  ✗ {:w$} failed   {took:>7}  {}", r.task_id, first_line(r.error.as_deref().unwrap_or_default())),
                };
                self.line(text);
                for warn in &r.warnings {
                    self.line(format!("    warning: {}", first_line(warn)));
                }
                for n in &r.notices {
                    let mark = if n.delivered() { "    " } else { "    ✗ " };
                    self.line(format!("{mark}{}", first_line(&crate::secrets::mask(&n.to_string()))));
                }
            }
            RunEvent::Decided { task, state } => {
                let sym = if *state == TiState::Skipped { "-" } else { "↑" };
                self.line(format!("  {sym} {task:w$} {state}"));
            }
            RunEvent::RunFinished { .. } => {
                let _ = self.multi.clear();
            }
        }
    }
}

pub fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or_default();
    if l.chars().count() > 160 { format!("{}…", l.chars().take(160).collect::<String>()) } else { l.to_string() }
}
