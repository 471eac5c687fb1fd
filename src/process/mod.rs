//! Child processes of tasks: each runs in its own process group, dies with
//! its worker, and is never left behind when sluice exits.
//!
//! * [`spawn`] starts a command, through the worker's spawner process
//!   ([`spawner`]): a small single-threaded helper whose forks are cheap,
//!   which kills the groups it started when the worker dies. Where there is
//!   no spawner (unit tests, `SLUICE_SPAWN=fork`) the worker forks itself,
//!   with the next hook.
//! * [`supervise`] (a `pre_exec` hook) puts the child in a new process
//!   group and forks it once more: the command runs in the grandchild,
//!   while the child waits for it and mirrors its exit status. When the
//!   worker dies, even by `kill -9`, the kernel tells the child
//!   (`PR_SET_PDEATHSIG`), which kills the whole group: a killed worker's
//!   command cannot run on and overlap its retry.
//! * [`Group`] kills the group when a try is cancelled or times out:
//!   SIGTERM, then SIGKILL after [`GRACE`]. Groups still waiting for their
//!   SIGKILL are tracked, and [`kill_all_before_exit`] delivers it before
//!   the process exits, so that a command that ignores SIGTERM does not
//!   survive `sluice run` or Ctrl-C.

mod spawn;
mod spawner;

pub use spawn::{Child, main_hook, spawn};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);

/// Process groups of running commands: None while running, the SIGKILL
/// deadline once SIGTERM was sent.
static GROUPS: LazyLock<Mutex<HashMap<i32, Option<Instant>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// A running command's process group. Dropping it while armed (the try
/// timed out or was interrupted) kills the group.
pub struct Group(Option<i32>);

impl Group {
    pub fn new(pgid: Option<u32>) -> Group {
        let pgid = pgid.map(|p| p as i32);
        if let Some(p) = pgid {
            GROUPS.lock().unwrap_or_else(|e| e.into_inner()).insert(p, None);
        }
        Group(pgid)
    }

    /// The command ended by itself: nothing to kill.
    pub fn disarm(mut self) {
        if let Some(p) = self.0.take() {
            GROUPS.lock().unwrap_or_else(|e| e.into_inner()).remove(&p);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let Some(pgid) = self.0.take() else { return };
        // SAFETY: killpg only sends a signal; a group that is gone is ESRCH.
        unsafe {
            libc::killpg(pgid, libc::SIGTERM);
        }
        tracing::warn!(pgid, "sent SIGTERM to the command's process group; SIGKILL follows in {}s", GRACE.as_secs());
        GROUPS.lock().unwrap_or_else(|e| e.into_inner()).insert(pgid, Some(Instant::now() + GRACE));
        std::thread::spawn(move || {
            std::thread::sleep(GRACE);
            finish(pgid);
        });
    }
}

/// Sends SIGKILL to a group that was sent SIGTERM, once.
fn finish(pgid: i32) {
    if GROUPS.lock().unwrap_or_else(|e| e.into_inner()).remove(&pgid).is_some() {
        // SAFETY: as above.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// Before the process exits: groups sent SIGTERM get their SIGKILL (after
/// what remains of their grace), and groups still running are killed.
pub fn kill_all_before_exit() {
    let groups: Vec<(i32, Option<Instant>)> = GROUPS.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, *v)).collect();
    for (pgid, deadline) in groups {
        match deadline {
            Some(d) => {
                // Wait for the group to end on its own, within its grace.
                while Instant::now() < d && group_alive(pgid) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                finish(pgid);
            }
            None => {
                // SAFETY: as above.
                unsafe {
                    libc::killpg(pgid, libc::SIGKILL);
                }
                GROUPS.lock().unwrap_or_else(|e| e.into_inner()).remove(&pgid);
            }
        }
    }
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that the group exists.
    unsafe { libc::killpg(pgid, 0) == 0 }
}

/// Set in the supervising child when its parent (the worker) died.
static PARENT_GONE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_parent_death(_: libc::c_int) {
    PARENT_GONE.store(true, Ordering::SeqCst);
}

/// The signal the kernel sends the supervising child when the worker dies.
const DEATH_SIGNAL: libc::c_int = libc::SIGUSR2;

/// A `pre_exec` hook, run in the forked child before it executes the
/// command. It makes the child the leader of a new process group, then
/// forks: the grandchild returns to execute the command; the child stays
/// behind as its supervisor and never returns.
///
/// # Safety
///
/// Runs between fork and exec in a child of a multi-threaded process: only
/// async-signal-safe calls are made, and nothing is allocated.
pub unsafe fn supervise(worker: libc::pid_t) -> std::io::Result<()> {
    // SAFETY (whole body): raw system calls only, on this process's own
    // state; see the function's contract.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pid = libc::fork();
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            return Ok(()); // the grandchild: on to exec
        }
        // The supervisor. Close every descriptor but stdio, among them the
        // pipe through which the worker learns that exec succeeded: the
        // worker's spawn returns as soon as the grandchild executes.
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..1024 {
                libc::close(fd);
            }
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_parent_death as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0; // no SA_RESTART: waitpid returns EINTR
        libc::sigaction(DEATH_SIGNAL, &sa, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, DEATH_SIGNAL as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != worker {
            PARENT_GONE.store(true, Ordering::SeqCst);
        }
        loop {
            if PARENT_GONE.load(Ordering::SeqCst) {
                if libc::getppid() != worker {
                    kill_own_group();
                }
                // A death signal while the worker lives (the worker thread
                // that forked us ended) is not the worker's death.
                PARENT_GONE.store(false, Ordering::SeqCst);
            }
            let mut status: libc::c_int = 0;
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    // Die the same way, so that the worker sees the signal.
                    let sig = libc::WTERMSIG(status);
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                    libc::kill(libc::getpid(), sig);
                    libc::_exit(128 + sig);
                }
                continue; // stopped or continued: keep waiting
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
    }
}

/// In the supervisor: SIGTERM the group (itself excepted), wait the grace
/// period, then SIGKILL the group, itself included.
unsafe fn kill_own_group() -> ! {
    // SAFETY: async-signal-safe calls on this process's own group.
    unsafe {
        let mut ign: libc::sigaction = std::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        libc::sigaction(libc::SIGTERM, &ign, std::ptr::null_mut());
        libc::killpg(0, libc::SIGTERM);
        let ts = libc::timespec { tv_sec: GRACE.as_secs() as libc::time_t, tv_nsec: 0 };
        libc::nanosleep(&ts, std::ptr::null_mut());
        libc::killpg(0, libc::SIGKILL);
        libc::_exit(137)
    }
}
