//! `sluice web` (the web UI on its own) and `sluice users` (who may log
//! in to it); `sluice daemon --web` starts the same server through
//! [`start`].

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::App;
use crate::state::Role;

#[derive(Args, Debug)]
pub struct WebArgs {
    /// Where to listen. On any address but loopback every page needs a login.
    #[arg(long, env = "SLUICE_WEB_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: String,
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// Add a web UI user, or set an existing one's role and password. The
    /// password is asked for (or read from the first line of stdin when it
    /// is not a terminal).
    Add {
        name: String,
        /// admin: reads and acts (trigger, clear, mark, pause); viewer: reads.
        #[arg(long, value_enum)]
        role: Role,
    },
    /// List the web UI users.
    List,
}

/// Starts the web UI in this process; returns the address it listens on.
pub async fn start(app: &App, addr: &str, stop: tokio_util::sync::CancellationToken) -> Result<std::net::SocketAddr> {
    let addr: std::net::SocketAddr =
        addr.parse().map_err(|e| super::ConfigError(format!("--web/--addr {addr}: {e} (e.g. 127.0.0.1:8080)")))?;
    let store = app.store().await?;
    let (_, conns) = app.load(true)?;
    let res = app.resources(conns)?;
    // The report dashboards' pipeline section reads run statistics.
    let _ = res.pipeline.set(Arc::new(store.clone()));
    let project = app.project.clone();
    let templates = app.templates.clone();
    let dags = Arc::new(move || {
        let (conns, _) = crate::connections::Connections::load(&project.root, true);
        let files = crate::loader::dag_files(std::slice::from_ref(&project.dags_dir)).unwrap_or_default();
        crate::loader::load(&files, &project.root, &conns, &templates)
    });
    let site = crate::web::Site { store, dags, res };
    let bound = crate::web::serve(site, addr, stop).await?;
    tracing::info!("web UI on http://{bound}/");
    eprintln!("web UI on http://{bound}/{}", if bound.ip().is_loopback() { "" } else { " (every page needs a login)" });
    Ok(bound)
}

pub async fn web(app: &App, args: WebArgs) -> Result<ExitCode> {
    let stop = tokio_util::sync::CancellationToken::new();
    start(app, &args.addr, stop.clone()).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    stop.cancel();
    Ok(ExitCode::SUCCESS)
}

pub async fn users(app: &App, cmd: UsersCmd) -> Result<ExitCode> {
    let store = app.store().await?;
    match cmd {
        UsersCmd::Add { name, role } => {
            if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
                return Ok(super::config_exit(&format!("user name `{name}`: use a name without spaces")));
            }
            let password = read_password(&name)?;
            if password.chars().count() < 8 {
                return Ok(super::config_exit("the password is shorter than 8 characters"));
            }
            let hash = tokio::task::spawn_blocking(move || crate::web::hash_password(&password)).await?.map_err(anyhow::Error::msg)?;
            let new = store.put_user(&name, role, &hash).await?;
            outln!("{} {name} ({role})", if new { "added" } else { "updated" });
        }
        UsersCmd::List => {
            for u in store.users().await? {
                outln!("{}\t{}\t{}", u.name, u.role, u.created_at.to_rfc3339());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a password: asked twice on a terminal with echo off, or the first
/// line of stdin.
fn read_password(name: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let ask = |prompt: &str| -> Result<String> {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
        let _echo = EchoOff::new();
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        eprintln!();
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let a = ask(&format!("password for {name}: "))?;
    let b = ask("again: ")?;
    anyhow::ensure!(a == b, "the two passwords differ");
    Ok(a)
}

/// Turns the terminal's echo off until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed termios that
        // tcgetattr fills; nothing is kept on failure.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}
