//! The spawner: a small helper process that starts a worker's commands.
//!
//! Forking the worker for every command costs more than the command (a
//! `true` task): the worker is large and multi-threaded, and the fork copies
//! its page tables. The spawner is `sluice __spawner`, started once per
//! worker on first use. It is single-threaded and small, starts commands
//! with `posix_spawn` (no copy of a large process), and makes each command
//! the leader of its own process group.
//!
//! It talks to the worker over a `SOCK_SEQPACKET` socket pair (fd 3 here),
//! one message per request or event; see [`super::spawn`] for the worker's
//! side and the message formats. Its socket is the worker's lifeline: when
//! the worker exits or is killed (even by `kill -9`), the kernel closes the
//! worker's end, the spawner reads end-of-file, and it kills every group it
//! started (SIGTERM, then SIGKILL after [`super::GRACE`]) before it exits.
//! A killed worker's command cannot run on and overlap its retry.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// The spawner's end of the socket pair, as the worker passes it.
pub const SOCKET_FD: RawFd = 3;

/// The largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The spawner's main loop: never returns.
pub fn serve() -> ! {
    // SAFETY: fd 3 is the socket the worker passed; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
    // Commands must not inherit the lifeline.
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let mut s = Spawner { sock, children: HashMap::new(), buf: vec![0u8; MAX_MESSAGE] };
    if s.send(b"H").is_err() {
        std::process::exit(1);
    }
    loop {
        let mut fds = vec![libc::pollfd { fd: s.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        let pids: Vec<i32> = s.children.keys().copied().collect();
        fds.extend(pids.iter().map(|p| libc::pollfd { fd: s.children[p].as_raw_fd(), events: libc::POLLIN, revents: 0 }));
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            s.shutdown();
        }
        for (i, pid) in pids.iter().enumerate() {
            if fds[i + 1].revents != 0 {
                s.reap(*pid);
            }
        }
        if fds[0].revents != 0 {
            match s.receive() {
                Ok(true) => {}
                // End of file (the worker is gone) or a broken socket.
                Ok(false) | Err(_) => s.shutdown(),
            }
        }
    }
}

struct Spawner {
    sock: OwnedFd,
    /// Running commands: pid (= process group id) → pidfd.
    children: HashMap<i32, OwnedFd>,
    buf: Vec<u8>,
}

impl Spawner {
    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        // SAFETY: a blocking send of a valid buffer on our socket.
        let r = unsafe { libc::send(self.sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Reads one request and starts its command. Ok(false) at end of file.
    fn receive(&mut self) -> std::io::Result<bool> {
        let (n, fds) = recv_with_fds(self.sock.as_raw_fd(), &mut self.buf)?;
        if n == 0 {
            return Ok(false);
        }
        let buf = std::mem::take(&mut self.buf);
        let reply = Self::reply(self, &buf[..n], fds);
        self.buf = buf;
        self.send(reply?.as_bytes())?;
        Ok(true)
    }

    /// Starts the command a request describes; the answer to send back.
    fn reply(&mut self, request: &[u8], fds: Vec<OwnedFd>) -> std::io::Result<String> {
        let fields: Vec<&[u8]> = request.split(|b| *b == 0).collect();
        // id, cwd, program, argc, argv..., env...
        let reply = match (fields.as_slice(), <[OwnedFd; 2]>::try_from(fds)) {
            ([id, cwd, program, argc, rest @ ..], Ok([out, err])) => {
                let id = String::from_utf8_lossy(id).into_owned();
                let argc: usize = std::str::from_utf8(argc).ok().and_then(|a| a.parse().ok()).unwrap_or(usize::MAX);
                if argc > rest.len() {
                    format!("F {id} {}", libc::EINVAL)
                } else {
                    let (argv, env) = rest.split_at(argc);
                    match self.start(cwd, program, argv, env, &out, &err) {
                        Ok(pid) => format!("P {id} {pid}"),
                        Err(e) => format!("F {id} {}", e.raw_os_error().unwrap_or(libc::EIO)),
                    }
                }
            }
            // The worker never sends one; it logs this answer.
            _ => "malformed request".to_string(),
        };
        Ok(reply)
    }

    /// Starts one command (`posix_spawn`: no copy of this
    /// process) with `out` and `err` as its stdout and stderr, /dev/null as
    /// its stdin, in a new process group. Returns once it executes.
    fn start(&mut self, cwd: &[u8], program: &[u8], argv: &[&[u8]], env: &[&[u8]], out: &OwnedFd, err: &OwnedFd) -> std::io::Result<i32> {
        let c = |b: &[u8]| CString::new(b).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL));
        let cwd = c(cwd)?;
        let program = c(program)?;
        let argv: Vec<CString> = argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
        let env: Vec<CString> = env.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
        let mut argv_p: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr() as *mut _).collect();
        argv_p.push(std::ptr::null_mut());
        let mut env_p: Vec<*mut libc::c_char> = env.iter().map(|a| a.as_ptr() as *mut _).collect();
        env_p.push(std::ptr::null_mut());
        let devnull = c(b"/dev/null")?;
        let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::from_raw_os_error(r)) };
        let mut pid: libc::pid_t = 0;
        // SAFETY: the attribute and file-action objects are initialised
        // before use and destroyed after; every pointer passed is valid
        // for the call (the CStrings and arrays outlive it).
        unsafe {
            let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
            let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
            check(libc::posix_spawn_file_actions_init(&mut fa))?;
            if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
                libc::posix_spawn_file_actions_destroy(&mut fa);
                return Err(e);
            }
            let mut sigdef: libc::sigset_t = std::mem::zeroed();
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut sigdef);
            // Rust ignores SIGPIPE; commands expect the default.
            libc::sigaddset(&mut sigdef, libc::SIGPIPE);
            libc::sigemptyset(&mut mask);
            let spawned = check(libc::posix_spawn_file_actions_addopen(&mut fa, 0, devnull.as_ptr(), libc::O_RDONLY, 0))
                .and_then(|_| check(libc::posix_spawn_file_actions_adddup2(&mut fa, out.as_raw_fd(), 1)))
                .and_then(|_| check(libc::posix_spawn_file_actions_adddup2(&mut fa, err.as_raw_fd(), 2)))
                .and_then(|_| check(libc::posix_spawn_file_actions_addchdir_np(&mut fa, cwd.as_ptr())))
                .and_then(|_| {
                    check(libc::posix_spawnattr_setflags(
                        &mut attr,
                        (libc::POSIX_SPAWN_SETPGROUP | libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short,
                    ))
                })
                .and_then(|_| check(libc::posix_spawnattr_setpgroup(&mut attr, 0)))
                .and_then(|_| check(libc::posix_spawnattr_setsigdefault(&mut attr, &sigdef)))
                .and_then(|_| check(libc::posix_spawnattr_setsigmask(&mut attr, &mask)))
                .and_then(|_| check(libc::posix_spawn(&mut pid, program.as_ptr(), &fa, &attr, argv_p.as_ptr(), env_p.as_ptr())));
            libc::posix_spawnattr_destroy(&mut attr);
            libc::posix_spawn_file_actions_destroy(&mut fa);
            spawned?;
        }
        // SAFETY: pidfd_open on our own live (or zombie) child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            // Without a pidfd the exit could not be seen: end the command.
            let e = std::io::Error::last_os_error();
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(e);
        }
        // SAFETY: a new descriptor, owned here.
        self.children.insert(pid, unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
        Ok(pid)
    }

    /// A command's pidfd is readable: reap it and tell the worker.
    fn reap(&mut self, pid: i32) {
        let mut st = 0;
        // SAFETY: reaping our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid || r < 0 {
            self.children.remove(&pid);
            let msg = if r == pid { format!("X {pid} {st}") } else { format!("L {pid}") };
            if self.send(msg.as_bytes()).is_err() {
                self.shutdown();
            }
        }
    }

    /// The worker is gone: SIGTERM every group still running, SIGKILL
    /// what is left after the grace period, and exit.
    fn shutdown(&mut self) -> ! {
        let groups: Vec<i32> = self.children.keys().copied().collect();
        let alive = |g: i32| {
            // SAFETY: reaping without blocking, and signal 0 (a check).
            unsafe {
                libc::waitpid(g, std::ptr::null_mut(), libc::WNOHANG);
                libc::killpg(g, 0) == 0
            }
        };
        for g in &groups {
            // SAFETY: signalling a group this spawner started.
            unsafe { libc::killpg(*g, libc::SIGTERM) };
        }
        let deadline = Instant::now() + super::GRACE;
        while Instant::now() < deadline && groups.iter().any(|g| alive(*g)) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for g in &groups {
            // SAFETY: as above.
            unsafe { libc::killpg(*g, libc::SIGKILL) };
        }
        std::process::exit(0)
    }
}

/// Receives one message and the descriptors sent with it.
fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cmsg = [0u64; 16]; // room for a few descriptors, aligned
    // SAFETY: msghdr is plain data; every pointer set below is valid for
    // the call, and the control messages are read with the CMSG macros.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        let n = loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break n;
            }
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        Ok((n as usize, fds))
    }
}

/// Sends one message with descriptors (on a non-blocking socket this may
/// fail with `WouldBlock`).
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    let mut cmsg = [0u64; 16];
    // SAFETY: as in recv_with_fds; the control buffer has room for the
    // descriptors (checked against its size).
    unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize;
        if space > std::mem::size_of_val(&cmsg) {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut RawFd, fds.len());
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
