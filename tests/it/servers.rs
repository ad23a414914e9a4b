//! Private server processes for the tests: each test gets its own `redis-server` or PostgreSQL
//! on a free loopback port, in its own directory, so tests can kill, restart and flush it freely.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection};
use tempfile::TempDir;

/// How long a freshly started server may take to answer before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A port the kernel just handed out, free for the server to bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Extra `redis-server` arguments, e.g. `["--appendonly", "yes"]`.
    pub fn start_with(args: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/run)");
        self.child = Some(child);
        wait_until_answers(self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts it again on the same port and directory (so with its AOF, if it keeps one).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the socket stays open but nothing answers, as with a hung server or a network
    /// partition. [`RedisServer::resume`] continues it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis is running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// A command through redis-cli, for test set-up and inspection.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls until a PING on `port` gets PONG (bounded).
pub fn wait_until_answers(port: u16) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if ping(port) {
            return;
        }
        assert!(Instant::now() < deadline, "redis on port {port} did not answer within {READY_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok();
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A Redis Cluster of `masters` nodes on loopback, no replicas.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> Self {
        let cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--appendonly", "no"];
        let nodes: Vec<RedisServer> = (0..masters).map(|_| RedisServer::start_with(&cluster_args)).collect();
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(output.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&output.stdout));
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// Polls until every node reports `cluster_state:ok` (bounded).
    fn wait_until_ok(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.nodes.iter().all(|node| node.cli(&["cluster", "info"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the cluster did not reach cluster_state:ok within {READY_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// How many keys each master holds.
    pub fn key_counts(&self) -> Vec<u64> {
        self.nodes.iter().map(|node| node.cli(&["dbsize"]).parse().unwrap_or(0)).collect()
    }
}

/// A private PostgreSQL for one test: its own cluster (initdb, trust authentication, no fsync) in
/// a temporary directory, on a free loopback port, with a database `credits`. Tests may stop,
/// kill and start it again; dropping it stops it and removes the directory.
///
/// PostgreSQL refuses to run as root, so when the tests run as root its programs run as the
/// `postgres` OS user, which then owns the directory. The postmaster is this process's own child
/// (started directly rather than daemonised by `pg_ctl start`), so a killed one is reaped at once:
/// a zombie postmaster would still claim the data directory's lock file until init reaps it.
///
/// Without PostgreSQL's programs (neither `/usr/lib/postgresql/<version>/bin` nor `initdb` on
/// PATH) it falls back to the server named by `DATABASE_URL`: each `PostgresServer` is then a
/// fresh database there, dropped at the end, and `stop`, `start_again` and `kill` panic.
pub struct PostgresServer {
    /// `postgres://user@host:port` and the query string (may be empty) of every URL handed out.
    server: (String, String),
    database: String,
    /// None for the `DATABASE_URL` fallback.
    cluster: Option<Cluster>,
}

struct Cluster {
    bin: PathBuf,
    /// The OS user (uid, gid) PostgreSQL runs as, when it is not us.
    owner: Option<(u32, u32)>,
    dir: TempDir,
    port: u16,
    postmaster: Option<Child>,
}

/// Makes database and schema names unique across the tests of one run.
static NAMES_MADE: AtomicU64 = AtomicU64::new(0);

fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), NAMES_MADE.fetch_add(1, Ordering::Relaxed))
}

impl PostgresServer {
    pub fn start() -> Self {
        match postgres_bin_dir() {
            Some(bin) => Self::start_private(bin, None),
            None => Self::fallback(),
        }
    }

    /// A private server that also accepts TLS (`ssl = on`) with this certificate and key (PEM).
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Self {
        let bin = postgres_bin_dir().expect("a TLS server needs PostgreSQL's programs (see .ci/run)");
        Self::start_private(bin, Some((cert_pem, key_pem)))
    }

    fn start_private(bin: PathBuf, tls: Option<(&str, &str)>) -> Self {
        let mut cluster = Cluster {
            bin,
            owner: postgres_owner(),
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            postmaster: None,
        };
        cluster.init();
        if let Some((cert, key)) = tls {
            cluster.enable_tls(cert, key);
        }
        cluster.spawn();
        let server = (format!("postgres://postgres@127.0.0.1:{}", cluster.port), String::new());
        let this = Self { server, database: "credits".into(), cluster: Some(cluster) };
        admin_sql(&this.url_of("postgres", None), "CREATE DATABASE credits").unwrap();
        this
    }

    /// No PostgreSQL programs here: a fresh database on the `DATABASE_URL` server.
    fn fallback() -> Self {
        let url = std::env::var("DATABASE_URL").expect(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH; see .ci/run) \
             and DATABASE_URL is not set",
        );
        let (base, query) = url.split_once('?').unwrap_or((&url, ""));
        let authority = base.find("://").map_or(0, |scheme| scheme + 3);
        let authority_end = base[authority..].find('/').map_or(base.len(), |slash| authority + slash);
        let server = (base[..authority_end].to_owned(), query.to_owned());
        let this = Self { server, database: unique_name("credits"), cluster: None };
        let create = format!("CREATE DATABASE {}", this.database);
        admin_sql(&this.url_of("postgres", None), &create).unwrap();
        this
    }

    /// `postgres://postgres@127.0.0.1:PORT/credits` (the fallback: its database on the
    /// `DATABASE_URL` server).
    pub fn url(&self) -> String {
        self.url_of(&self.database, None)
    }

    fn url_of(&self, database: &str, schema: Option<&str>) -> String {
        let (server, query) = &self.server;
        let mut parameters: Vec<String> = query.split('&').filter(|p| !p.is_empty()).map(str::to_owned).collect();
        parameters.extend(schema.map(|schema| format!("options[search_path]={schema}")));
        if parameters.is_empty() {
            format!("{server}/{database}")
        } else {
            format!("{server}/{database}?{}", parameters.join("&"))
        }
    }

    /// The URL of another empty store beside the first: a schema of its own in `credits`, named
    /// as the connection's search_path (a schema takes milliseconds, a database a third of a
    /// second).
    pub fn fresh_url(&self) -> String {
        let schema = unique_name("store");
        admin_sql(&self.url(), &format!("CREATE SCHEMA {schema}")).unwrap();
        self.url_of(&self.database, Some(&schema))
    }

    /// From now on `user` (created with `password`) must log in with it over TCP; everyone else
    /// is still trusted.
    pub fn require_password(&self, user: &str, password: &str) {
        let cluster = self.cluster.as_ref().expect("a private server");
        admin_sql(&self.url(), &format!("CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{password}'")).unwrap();
        let hba = cluster.data().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("host all {user} 127.0.0.1/32 scram-sha-256\n{rules}")).unwrap();
        admin_sql(&self.url(), "SELECT pg_reload_conf()").unwrap();
    }

    fn cluster(&mut self) -> &mut Cluster {
        self.cluster.as_mut().expect("a server from DATABASE_URL cannot be stopped, killed or restarted")
    }

    /// A clean shutdown (`pg_ctl stop -m fast`), waiting until the postmaster has exited.
    pub fn stop(&mut self) {
        self.cluster().stop("fast");
    }

    /// Starts it again on the same directory and port, after `stop` or `kill`.
    pub fn start_again(&mut self) {
        let cluster = self.cluster();
        assert!(cluster.postmaster.is_none(), "start_again: the server is running");
        cluster.spawn();
    }

    /// SIGKILL to the postmaster, as in a crash; returns once its other processes have gone too,
    /// so `start_again` finds the data directory free and runs crash recovery.
    pub fn kill(&mut self) {
        self.cluster().kill();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        match &mut self.cluster {
            Some(cluster) => {
                // The directory is deleted next, so nothing needs to reach the disk.
                cluster.stop("immediate");
                cluster.remove_orphan_shared_memory();
            }
            None => {
                let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database);
                admin_sql(&self.url_of("postgres", None), &drop).ok();
            }
        }
    }
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of PostgreSQL's programs, run as its OS user, in the cluster's directory.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn init(&self) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(self.dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        let settings = format!(
            "\n# The test's private server.\nport = {}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\n",
            self.port,
            self.dir.path().display()
        );
        let mut conf = OpenOptions::new().append(true).open(self.data().join("postgresql.conf")).unwrap();
        conf.write_all(settings.as_bytes()).unwrap();
    }

    /// `ssl = on` with `cert` and `key` in the data directory (the key readable by the server's
    /// user alone, as PostgreSQL demands).
    fn enable_tls(&self, cert: &str, key: &str) {
        use std::os::unix::fs::PermissionsExt;
        for (name, pem) in [("server.crt", cert), ("server.key", key)] {
            let path = self.data().join(name);
            std::fs::write(&path, pem).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut conf = OpenOptions::new().append(true).open(self.data().join("postgresql.conf")).unwrap();
        conf.write_all(b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n").unwrap();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postgres runs");
        self.postmaster = Some(child);
        self.wait_until_ready();
    }

    /// Polls `pg_isready` until the server accepts connections (bounded); fails at once if the
    /// postmaster exits instead.
    fn wait_until_ready(&mut self) {
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
            let postmaster = self.postmaster.as_mut().expect("spawned");
            if let Some(status) = postmaster.try_wait().unwrap() {
                self.postmaster = None;
                panic!("postgres exited ({status}) while starting:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres on port {port} did not accept connections within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `pg_ctl stop -m <mode>`, then waits for the postmaster to exit. Does nothing if stopped.
    fn stop(&mut self, mode: &str) {
        let Some(mut postmaster) = self.postmaster.take() else { return };
        // -W: pg_ctl only signals; waiting on our own child is exact (pg_ctl polls every 100 ms).
        let status = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", mode, "-W", "-s", "stop"]).status();
        if !status.is_ok_and(|status| status.success()) {
            postmaster.kill().ok();
        }
        postmaster.wait().unwrap();
    }

    fn kill(&mut self) {
        let Some(mut postmaster) = self.postmaster.take() else { return };
        postmaster.kill().unwrap();
        postmaster.wait().unwrap();
        // The postmaster's children notice its death and exit on their own, but until they have,
        // they keep its shared memory attached and a new postmaster would refuse to start.
        let data = self.data().canonicalize().unwrap();
        let deadline = Instant::now() + READY_TIMEOUT;
        while processes_in(&data) > 0 {
            assert!(Instant::now() < deadline, "postgres processes still alive {READY_TIMEOUT:?} after SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A killed postmaster leaves its SysV shared memory segment (id in postmaster.pid, line 7)
    /// for the next start to clean up; when there is none, remove it here.
    fn remove_orphan_shared_memory(&self) {
        let Ok(pid_file) = std::fs::read_to_string(self.data().join("postmaster.pid")) else { return };
        if let Some(shmid) = pid_file.lines().nth(6).and_then(|line| line.split_whitespace().nth(1)) {
            Command::new("ipcrm").args(["-m", shmid]).stderr(Stdio::null()).status().ok();
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` (Debian, Ubuntu), else the PATH directory with
/// `initdb` in it.
fn postgres_bin_dir() -> Option<PathBuf> {
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
        String::from_utf8_lossy(&output.stdout).trim().parse().unwrap()
    };
    Some((id("-u"), id("-g")))
}

/// How many live (not zombie) processes have `dir` as their working directory: PostgreSQL's
/// processes all work in the data directory.
fn processes_in(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit())))
        .filter(|entry| std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|entry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            state.is_some_and(|state| state != 'Z')
        })
        .count()
}

/// Runs one statement on `url`, on a thread of its own with a runtime of its own: it is called
/// from inside the tests' runtimes, which cannot block on another.
fn admin_sql(url: &str, statement: &str) -> Result<(), sqlx::Error> {
    let (url, statement) = (url.to_owned(), statement.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let mut connection = sqlx::PgConnection::connect(&url).await?;
            sqlx::raw_sql(AssertSqlSafe(statement)).execute(&mut connection).await?;
            connection.close().await
        })
    })
    .join()
    .expect("the admin thread does not panic")
}
