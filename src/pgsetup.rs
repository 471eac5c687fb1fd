//! A private PostgreSQL cluster for `sluice demo` when no database is
//! configured: created with `initdb` in a folder of the project and started
//! on a free loopback port. PostgreSQL refuses to run as root, so as root the
//! cluster belongs to the `postgres` system user (which Debian's package
//! creates).

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PgSetupError(String);

#[derive(Debug, Clone)]
pub struct PrivatePostgres {
    pub url: String,
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// Whether this call started it (false when it was already running).
    pub started: bool,
    run_as: Option<String>,
}

impl PrivatePostgres {
    /// The command that stops it, for messages.
    pub fn stop_command(&self) -> String {
        let prefix = self.run_as.as_ref().map(|u| format!("runuser -u {u} -- ")).unwrap_or_default();
        format!("{prefix}{} -D {} stop", self.bin.join("pg_ctl").display(), self.dir.display())
    }
}

fn find_bin() -> Result<PathBuf, PgSetupError> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_string_lossy().parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, p)| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p).ok_or_else(|| {
        PgSetupError(
            "PostgreSQL's server is not installed (no initdb found); install it (`apt-get install postgresql`; scripts/demo.sh does) or set SLUICE_DATABASE_URL".into(),
        )
    })
}

fn run(cmd: &mut Command, what: &str) -> Result<String, PgSetupError> {
    let out = cmd.output().map_err(|e| PgSetupError(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(PgSetupError(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free_port() -> Option<u16> {
    (55432..55532).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// Creates (if needed) and starts (if needed) the cluster in `dir`.
pub fn ensure(dir: &Path) -> Result<PrivatePostgres, PgSetupError> {
    let bin = find_bin()?;
    let dir = std::path::absolute(dir).map_err(|e| PgSetupError(e.to_string()))?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let run_as = root.then(|| "postgres".to_string());
    // As root the cluster belongs to `postgres`, which cannot enter a
    // project under a private home such as /root: keep it in /var/tmp then.
    let dir = if root && !postgres_can_enter(dir.parent().unwrap_or(&dir)) { reachable_dir(&dir) } else { dir };
    let cmd = |program: &str| {
        let mut c = match &run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(bin.join(program));
                c
            }
            None => Command::new(bin.join(program)),
        };
        c.env_remove("PGDATA");
        c
    };
    if !dir.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&dir).map_err(|e| PgSetupError(format!("cannot create {}: {e}", dir.display())))?;
        if root {
            chown_to_postgres(&dir)?;
        }
        run(cmd("initdb").args(["-D"]).arg(&dir).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]), "initdb")?;
    }
    let status = cmd("pg_ctl").args(["-D"]).arg(&dir).arg("status").output();
    let running = status.is_ok_and(|s| s.status.success());
    let (port, started) = if running {
        let pid = std::fs::read_to_string(dir.join("postmaster.pid")).map_err(|e| PgSetupError(e.to_string()))?;
        let port = pid
            .lines()
            .nth(3)
            .and_then(|l| l.trim().parse::<u16>().ok())
            .ok_or_else(|| PgSetupError("cannot read the port from postmaster.pid".into()))?;
        (port, false)
    } else {
        let port = free_port().ok_or_else(|| PgSetupError("no free port between 55432 and 55531".into()))?;
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.display());
        run(
            cmd("pg_ctl").args(["-D"]).arg(&dir).args(["-l"]).arg(dir.join("server.log")).args(["-w", "-t", "60", "-o", &opts, "start"]),
            "starting PostgreSQL",
        )?;
        (port, true)
    };
    Ok(PrivatePostgres { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), dir, bin, started, run_as })
}

fn postgres_can_enter(dir: &Path) -> bool {
    // The nearest existing ancestor decides.
    let mut d = dir;
    while !d.exists() {
        match d.parent() {
            Some(p) => d = p,
            None => return false,
        }
    }
    Command::new("runuser").args(["-u", "postgres", "--", "test", "-x"]).arg(d).status().is_ok_and(|s| s.success())
}

/// A place under /var/tmp, one per project (named after a hash of its path).
fn reachable_dir(dir: &Path) -> PathBuf {
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes())[..6]);
    PathBuf::from("/var/tmp").join(format!("sluice-pg-{hash}"))
}

fn chown_to_postgres(dir: &Path) -> Result<(), PgSetupError> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer to static storage or null.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(PgSetupError(
            "running as root, PostgreSQL needs the `postgres` system user (created by Debian's postgresql package)".into(),
        ));
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| PgSetupError(format!("chown {}: {e}", dir.display())))
}
