//! Starting a command: through the worker's spawner process when the
//! `sluice` binary runs (see [`super::spawner`]), else by forking the worker
//! with the [`super::supervise`] hook (unit tests, or `SLUICE_SPAWN=fork`).
//! Both give the same guarantees: the command leads its own process group,
//! and the group dies with the worker.
//!
//! Messages on the socket, fields separated by NUL bytes:
//! * worker → spawner: `id, cwd, program, argc, argv.., env..` with the
//!   command's stdout and stderr (pipes) attached as `SCM_RIGHTS`;
//! * spawner → worker: `H` (ready), `P id pid` (started), `F id errno`
//!   (could not start), `X pid status` (exited, a raw wait status),
//!   `L pid` (lost: could not be waited for).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::spawner::{MAX_MESSAGE, SOCKET_FD, send_with_fds};

/// The argument that makes the binary a spawner.
pub const SPAWNER_ARG: &str = "__spawner";

/// Set by the `sluice` binary: `/proc/self/exe __spawner` is a spawner.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The `sluice` binary's first step: serve as a spawner when started as
/// one, else allow spawners for this process.
pub fn main_hook() {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(SPAWNER_ARG)) {
        super::spawner::serve();
    }
    ENABLED.store(std::env::var_os("SLUICE_SPAWN").is_none_or(|v| v != "fork"), Ordering::SeqCst);
}

/// A started command.
pub struct Child {
    /// Its process id, which is also its process group id.
    pub pid: u32,
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    pub stderr: Box<dyn AsyncRead + Send + Unpin>,
    pub exit: Exit,
}

/// A started command's exit, to wait for.
pub enum Exit {
    Spawner(oneshot::Receiver<i32>),
    Forked(tokio::process::Child),
}

impl Exit {
    /// Waits for the command to exit.
    pub async fn wait(self) -> io::Result<ExitStatus> {
        match self {
            Exit::Spawner(rx) => rx
                .await
                .map(ExitStatus::from_raw)
                .map_err(|_| io::Error::other("the spawner process that started the command ended, so its exit status is unknown")),
            Exit::Forked(mut c) => c.wait().await,
        }
    }
}

/// Starts `argv` in `cwd`, with the worker's environment plus `env`,
/// stdin from /dev/null and stdout and stderr piped.
pub async fn spawn(argv: &[String], env: &BTreeMap<String, String>, cwd: &Path) -> io::Result<Child> {
    if argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    }
    if ENABLED.load(Ordering::SeqCst)
        && let Some(conn) = connection().await
    {
        match conn.spawn(argv, env, cwd).await {
            Ok(child) => return Ok(child),
            Err(Spawn::Command(e)) => return Err(e),
            Err(Spawn::Transport(e)) => {
                tracing::debug!(error = %e, "the spawner could not take the command; forking instead");
            }
        }
    }
    spawn_forked(argv, env, cwd)
}

fn spawn_forked(argv: &[String], env: &BTreeMap<String, String>, cwd: &Path) -> io::Result<Child> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).envs(env).current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let worker = std::process::id() as libc::pid_t;
    // SAFETY: `supervise` makes only async-signal-safe calls (see there).
    unsafe {
        cmd.pre_exec(move || super::supervise(worker));
    }
    let mut child = cmd.spawn()?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("the command's output pipes are missing"));
    };
    Ok(Child { pid: child.id().unwrap_or(0), stdout: Box::new(out), stderr: Box::new(err), exit: Exit::Forked(child) })
}

/// Why the spawner did not start a command.
enum Spawn {
    /// The command itself cannot start (not found, not executable, ...).
    Command(io::Error),
    /// The spawner could not take it (gone, message too large).
    Transport(io::Error),
}

/// The worker's spawner, started on first use; None when it cannot start.
static CONN: tokio::sync::Mutex<Option<Option<Arc<Conn>>>> = tokio::sync::Mutex::const_new(None);

async fn connection() -> Option<Arc<Conn>> {
    let mut slot = CONN.lock().await;
    if let Some(Some(c)) = &*slot
        && c.dead.load(Ordering::SeqCst)
    {
        *slot = None; // it died: start another
    }
    if slot.is_none() {
        let started = Conn::start().await;
        if let Err(e) = &started {
            tracing::warn!(error = %e, "cannot start the spawner process; commands are started by forking the worker");
        }
        *slot = Some(started.ok());
    }
    slot.clone().flatten()
}

type Pending = HashMap<u64, oneshot::Sender<Result<(i32, oneshot::Receiver<i32>), i32>>>;

struct Conn {
    sock: AsyncFd<OwnedFd>,
    next_id: AtomicU64,
    /// Requests sent, by id.
    pending: Mutex<Pending>,
    /// Commands running, by pid.
    running: Mutex<HashMap<i32, oneshot::Sender<i32>>>,
    dead: AtomicBool,
    _process: tokio::process::Child,
}

impl Conn {
    async fn start() -> io::Result<Arc<Conn>> {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills the array with two new descriptors.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are new descriptors owned here.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = tokio::process::Command::new("/proc/self/exe");
        cmd.arg0("sluice-spawner")
            .arg(SPAWNER_ARG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own group: a terminal's Ctrl-C reaches the worker, which
            // stops its tries, and not the spawner.
            .process_group(0);
        // SAFETY: dup2 and fcntl only, on descriptors this process owns.
        unsafe {
            cmd.pre_exec(move || {
                if theirs_fd == SOCKET_FD {
                    libc::fcntl(SOCKET_FD, libc::F_SETFD, 0);
                } else if libc::dup2(theirs_fd, SOCKET_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = cmd.spawn()?;
        drop(theirs);
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        // SAFETY: `ours` is an open socket, owned by the AsyncFd from here.
        let sock = unsafe { AsyncFd::register(ours) }.map_err(|e| e.into_parts().1)?;
        let mut buf = [0u8; 16];
        let hello = tokio::time::timeout(
            Duration::from_secs(10),
            sock.async_io(tokio::io::Interest::READABLE, |fd| recv(fd.as_raw_fd(), &mut buf)),
        )
        .await
        .map_err(|_| io::Error::other("the spawner did not answer within 10 s"))??;
        if &buf[..hello] != b"H" {
            return Err(io::Error::other("the spawner did not start"));
        }
        let conn = Arc::new(Conn {
            sock,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            _process: process,
        });
        tokio::spawn(conn.clone().read_events());
        Ok(conn)
    }

    async fn spawn(&self, argv: &[String], env: &BTreeMap<String, String>, cwd: &Path) -> Result<Child, Spawn> {
        if argv.iter().any(|a| a.contains('\0')) || env.iter().any(|(k, v)| k.contains(['\0', '=']) || v.contains('\0')) {
            return Err(Spawn::Command(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the command or its environment contains a NUL byte, or an environment variable name contains `=`",
            )));
        }
        let program = resolve(&argv[0], env).map_err(Spawn::Command)?;
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let mut msg = Vec::with_capacity(4096);
        let mut field = |b: &[u8]| {
            msg.extend_from_slice(b);
            msg.push(0);
        };
        field(id.to_string().as_bytes());
        field(cwd.as_os_str().as_bytes());
        field(program.as_os_str().as_bytes());
        field(argv.len().to_string().as_bytes());
        for a in argv {
            field(a.as_bytes());
        }
        for (k, v) in std::env::vars_os() {
            if !k.to_str().is_some_and(|k| env.contains_key(k)) {
                field(&[k.as_bytes(), b"=", v.as_bytes()].concat());
            }
        }
        for (k, v) in env {
            field(format!("{k}={v}").as_bytes());
        }
        msg.pop();
        if msg.len() > MAX_MESSAGE {
            return Err(Spawn::Transport(io::Error::from_raw_os_error(libc::EMSGSIZE)));
        }
        let (out_r, out_w) = pipe().map_err(Spawn::Transport)?;
        let (err_r, err_w) = pipe().map_err(Spawn::Transport)?;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let sent = self
            .sock
            .async_io(tokio::io::Interest::WRITABLE, |fd| send_with_fds(fd.as_raw_fd(), &msg, &[out_w.as_raw_fd(), err_w.as_raw_fd()]))
            .await;
        drop((out_w, err_w));
        if let Err(e) = sent {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(Spawn::Transport(e));
        }
        let (pid, exit) = match rx.await {
            Ok(Ok(started)) => started,
            Ok(Err(errno)) => return Err(Spawn::Command(io::Error::from_raw_os_error(errno))),
            Err(_) => return Err(Spawn::Transport(io::Error::other("the spawner ended"))),
        };
        let receiver = |fd: OwnedFd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(Spawn::Transport);
        Ok(Child { pid: pid as u32, stdout: Box::new(receiver(out_r)?), stderr: Box::new(receiver(err_r)?), exit: Exit::Spawner(exit) })
    }

    /// Reads the spawner's messages until it ends.
    async fn read_events(self: Arc<Conn>) {
        let mut buf = vec![0u8; 256];
        loop {
            let n = match self.sock.async_io(tokio::io::Interest::READABLE, |fd| recv(fd.as_raw_fd(), &mut buf)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            let f: Vec<&str> = text.split(' ').collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok());
            match (f[0], num(1), num(2)) {
                ("P", Some(id), Some(pid)) => {
                    let (tx, rx) = oneshot::channel();
                    self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(pid as i32, tx);
                    if let Some(p) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&(id as u64)) {
                        let _ = p.send(Ok((pid as i32, rx)));
                    }
                }
                ("F", Some(id), Some(errno)) => {
                    if let Some(p) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&(id as u64)) {
                        let _ = p.send(Err(errno as i32));
                    }
                }
                ("X", Some(pid), Some(status)) => {
                    if let Some(w) = self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&(pid as i32)) {
                        let _ = w.send(status as i32);
                    }
                }
                ("L", Some(pid), _) => {
                    self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&(pid as i32));
                }
                _ => tracing::warn!(message = %text, "an unexpected message from the spawner"),
            }
        }
        // The spawner is gone (killed?): its commands cannot be waited for,
        // so they are killed (a retry must not overlap them), and whoever
        // waits learns it.
        self.dead.store(true, Ordering::SeqCst);
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let orphans: Vec<i32> = self.running.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(pid, _)| pid).collect();
        for pid in &orphans {
            // SAFETY: killpg only sends a signal to the command's group.
            unsafe { libc::killpg(*pid, libc::SIGKILL) };
        }
        tracing::warn!(
            killed = orphans.len(),
            "the spawner process ended; its commands were killed; a new one starts with the next command"
        );
    }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: a non-blocking receive into a valid buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new and owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

/// The program to execute for `name`, searched in the command's `PATH`
/// (its own if `env` sets one, else the worker's), as `execvp` would.
fn resolve(name: &str, env: &BTreeMap<String, String>) -> io::Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = match env.get("PATH") {
        Some(p) => p.into(),
        None => std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
    };
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        let Ok(c) = std::ffi::CString::new(candidate.as_os_str().as_bytes()) else { continue };
        // SAFETY: access on a valid C string.
        if candidate.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(candidate);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}
