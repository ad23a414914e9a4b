//! The benchmark's private servers: a `redis-server` and a PostgreSQL cluster, each on a free
//! loopback port in a temporary directory, stopped and removed when dropped. Adapted from the
//! test harness (`tests/it/servers.rs`), which an example cannot import.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A port the kernel just handed out, free for a server to bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback port").local_addr().expect("local address").port()
}

/// `redis-server --save "" --appendonly no`: no persistence, so nothing but the work measured.
pub struct PrivateRedis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian: apt-get install redis-server)");
        let deadline = Instant::now() + READY_TIMEOUT;
        while !redis_cli_ok(port) {
            assert!(Instant::now() < deadline, "redis on port {port} did not answer within {READY_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

fn redis_cli_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "PING"])
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "PONG")
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A PostgreSQL cluster of its own (initdb, trust authentication, fsync on as by default) with a
/// database `credits`. PostgreSQL refuses to run as root, so as root its programs run as the
/// `postgres` OS user, which then owns the directory.
pub struct PrivatePostgres {
    postmaster: Child,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    dir: TempDir,
    port: u16,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bin = postgres_bin_dir().expect("PostgreSQL's server programs (/usr/lib/postgresql/<v>/bin) are needed");
        let owner = postgres_owner();
        let dir = tempfile::tempdir().expect("a temporary directory");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the PostgreSQL directory");
        }
        let port = free_port();
        let data = dir.path().join("data");
        let init = as_owner(Command::new(bin.join("initdb")), owner, dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(init.status.success(), "initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        let settings = format!(
            "\n# The benchmark's private server (fsync stays on).\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nmax_connections = 200\n",
            dir.path().display()
        );
        let mut conf = OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("postgresql.conf");
        conf.write_all(settings.as_bytes()).expect("write postgresql.conf");
        let log = OpenOptions::new().create(true).append(true).open(dir.path().join("postgres.log")).expect("log");
        let postmaster = as_owner(Command::new(bin.join("postgres")), owner, dir.path())
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("postgres runs");
        let server = Self { postmaster, bin, owner, dir, port };
        server.wait_until_ready();
        server.psql("postgres", "CREATE DATABASE credits");
        server
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/credits", self.port)
    }

    /// The postmaster's process id (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.postmaster.id()
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let port = self.port.to_string();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-t", "1"])
                .status()
                .expect("pg_isready runs");
            if ready.success() {
                return;
            }
            assert!(Instant::now() < deadline, "postgres on port {port} did not start within {READY_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn psql(&self, database: &str, statement: &str) {
        let output = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", database, "-c", statement])
            .output()
            .expect("psql runs");
        assert!(output.status.success(), "psql {statement}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // The directory is deleted next, so nothing needs to reach the disk.
        let data = self.dir.path().join("data");
        let stopped = as_owner(Command::new(self.bin.join("pg_ctl")), self.owner, self.dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-W", "-s", "stop"])
            .status();
        if !stopped.is_ok_and(|status| status.success()) {
            self.postmaster.kill().ok();
        }
        self.postmaster.wait().ok();
    }
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>, dir: &std::path::Path) -> Command {
    command.current_dir(dir);
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}

/// The newest `/usr/lib/postgresql/<version>/bin`, else the PATH directory holding `initdb`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file())
    })
}

/// The `postgres` OS user's (uid, gid) when we are root; None when PostgreSQL can run as us.
fn postgres_owner() -> Option<(u32, u32)> {
    let root = std::fs::metadata("/proc/self").is_ok_and(|process| process.uid() == 0);
    if !root {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let output = Command::new("id").args([flag, "postgres"]).output().expect("id runs");
        assert!(output.status.success(), "running as root needs a `postgres` OS user for PostgreSQL");
        String::from_utf8_lossy(&output.stdout).trim().parse().expect("a numeric id")
    };
    Some((id("-u"), id("-g")))
}
