//! Private server processes for the tests: each test gets its own `redis-server` on a free
//! loopback port, in its own directory, so tests can kill, restart and flush it freely.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
