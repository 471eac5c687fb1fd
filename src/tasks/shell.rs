//! `shell`: runs a command.
//!
//! ```yaml
//! - id: fetch
//!   type: shell
//!   command: curl -fsS "https://example.com/export/{{ ds }}.csv" -o data/raw.csv
//!   env: { LANG: C.UTF-8 }
//! ```
//!
//! The command runs in its own process group: when the try times out or is
//! interrupted, the whole group (the shell and everything it started) gets
//! SIGTERM, then SIGKILL two seconds later; when the worker dies, the group
//! dies with it (see [`crate::process`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Outcome, Run, TaskCtx, TaskError, TaskType, ValidateCx};

/// Runs a command: a string run by `/bin/sh -c`, or a list of arguments run
/// directly. Its stdout and stderr go to the task log; a non-zero exit
/// status fails the try.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// The command: a string, run with `/bin/sh -c`, or a list of arguments
    /// (`[python3, script.py, "{{ ds }}"]`), run without a shell.
    pub command: Command,
    /// Environment variables added to sluice's own. The try's context is
    /// always set too: `SLUICE_DAG_ID`, `SLUICE_TASK_ID`, `SLUICE_RUN_ID`,
    /// `SLUICE_TRY_NUMBER`, `SLUICE_DS`, `SLUICE_DATA_INTERVAL_START`,
    /// `SLUICE_DATA_INTERVAL_END`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The working directory, relative to the project root. Default: the
    /// project root.
    pub cwd: Option<String>,
    /// An exit status that marks the task `skipped` instead of failed
    /// (Airflow's `skip_on_exit_code`). Default 99.
    pub skip_on_exit_code: Option<i32>,
}

/// A shell string or an argument list.
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_yaml::Value;
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        match Value::deserialize(d)? {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| scalar(v).ok_or_else(|| D::Error::custom(format!("argument {} of the command list is not a string", i + 1))))
                .collect::<Result<Vec<_>, _>>()
                .map(Command::Argv),
            Value::Mapping(_) => Err(D::Error::custom(
                "the command is a mapping, so YAML read a `: ` in it as a key; quote the whole command (`command: \"echo a: b\"`) or use a list of arguments",
            )),
            v => scalar(&v).map(Command::Shell).ok_or_else(|| D::Error::custom("the command must be a string (run with `/bin/sh -c`) or a list of arguments")),
        }
    }
}

pub struct Shell {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: std::path::PathBuf,
    skip_code: i32,
}

impl TaskType for ShellConfig {
    const NAME: &'static str = "shell";
    type Built = Shell;

    fn validate(&self, cx: &mut ValidateCx<'_, '_>) {
        match &self.command {
            Command::Shell(s) if s.trim().is_empty() => cx.error("command", "the command is empty"),
            Command::Argv(a) if a.is_empty() => cx.error("command", "the command list is empty"),
            _ => {}
        }
    }

    async fn build(self, ctx: &TaskCtx) -> Result<Shell, TaskError> {
        let argv = match self.command {
            // The system's shell by its path, as system(3) and Python's
            // subprocess do: no search of PATH for every command.
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s],
            Command::Argv(a) => a,
        };
        let cwd = match &self.cwd {
            Some(c) => ctx.project_path(c),
            None => ctx.res.project_root.clone(),
        };
        if !cwd.is_dir() {
            return Err(TaskError::Config(format!("cwd {} is not a directory", cwd.display())));
        }
        let mut env = self.env;
        let fmt = |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&ctx.tz).to_rfc3339();
        env.insert("SLUICE_DAG_ID".into(), ctx.dag_id.clone());
        env.insert("SLUICE_TASK_ID".into(), ctx.task_id.clone());
        env.insert("SLUICE_RUN_ID".into(), ctx.run_id.to_string());
        env.insert("SLUICE_TRY_NUMBER".into(), ctx.try_number.to_string());
        env.insert("SLUICE_DS".into(), ctx.logical_date.with_timezone(&ctx.tz).format("%Y-%m-%d").to_string());
        env.insert("SLUICE_DATA_INTERVAL_START".into(), fmt(ctx.interval.start));
        env.insert("SLUICE_DATA_INTERVAL_END".into(), fmt(ctx.interval.end));
        Ok(Shell { argv, env, cwd, skip_code: self.skip_on_exit_code.unwrap_or(99) })
    }
}

impl Run for Shell {
    async fn run(self, ctx: &TaskCtx) -> Result<Outcome, TaskError> {
        // Masked before quoting: a quoted secret would not match its mask.
        let shown: Vec<String> = self.argv.iter().map(|a| crate::secrets::mask(a)).collect();
        tracing::info!("running {}", shell_words(&shown));
        let child = crate::process::spawn(&self.argv, &self.env, &self.cwd)
            .await
            .map_err(|e| TaskError::Failed(format!("cannot start `{}`: {e}", self.argv[0])))?;
        let group = crate::process::Group::new(Some(child.pid));
        let crate::process::Child { stdout: out, stderr: err, exit, .. } = child;
        let log_out = ctx.log.clone();
        let log_err = ctx.log.clone();
        let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::<String>::new()));
        let tail_err = tail.clone();
        let read_out = async move {
            let mut lines = BufReader::new(out).split(b'\n');
            while let Ok(Some(line)) = lines.next_segment().await {
                log_out.line(&format!("out | {}", String::from_utf8_lossy(&line)));
            }
        };
        let read_err = async move {
            let mut lines = BufReader::new(err).split(b'\n');
            while let Ok(Some(line)) = lines.next_segment().await {
                let text = String::from_utf8_lossy(&line).into_owned();
                log_err.line(&format!("err | {text}"));
                let mut t = tail_err.lock().unwrap_or_else(|e| e.into_inner());
                t.push_back(text);
                if t.len() > 5 {
                    t.pop_front();
                }
            }
        };
        let (status, _, _) = tokio::join!(exit.wait(), read_out, read_err);
        let status = status.map_err(|e| TaskError::Failed(format!("waiting for the command failed: {e}")))?;
        group.disarm();
        match status.code() {
            Some(0) => Ok(Outcome::note("exit 0").metric("exit_code", 0)),
            Some(c) if c == self.skip_code => {
                tracing::info!("exit status {c} marks the task skipped");
                Ok(Outcome { skipped: true, ..Outcome::note(format!("skipped (exit {c})")) }.metric("exit_code", c))
            }
            code => {
                let tail: Vec<String> = tail.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
                let what = match code {
                    Some(c) => format!("command exited with status {c}"),
                    None => {
                        use std::os::unix::process::ExitStatusExt;
                        format!("command was killed by signal {}", status.signal().unwrap_or(0))
                    }
                };
                let message = if tail.is_empty() { what } else { format!("{what}; stderr ends with: {}", tail.join(" / ")) };
                Err(TaskError::Exit { code: code.unwrap_or(-1), message })
            }
        }
    }
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| if a.contains(' ') || a.is_empty() { format!("'{}'", a.replace('\'', "'\\''")) } else { a.clone() })
        .collect::<Vec<_>>()
        .join(" ")
}
