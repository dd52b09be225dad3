//! Shared test helpers: a real `redis-server` per test on a free port.
#![allow(dead_code, unreachable_pub)]

mod intercept;

pub use self::intercept::{Call, Hook, Intercept};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A `redis-server` process started for one test: no persistence, loopback only, killed
/// when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    monitor: Mutex<Option<Monitor>>,
    /// What [`restart`](Self::restart) starts it with again: its arguments beyond the
    /// port and its working directory (a cluster node's configuration and directory).
    args: Vec<String>,
    dir: Option<std::path::PathBuf>,
}

/// A `MONITOR` connection that records the name of every command a client sends (not
/// those run inside Lua scripts).
struct Monitor {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    fences: Arc<Mutex<Vec<String>>>,
    next_fence: std::sync::atomic::AtomicU64,
    /// The harness's own connection for fences and `INFO stats`, kept open: a connection
    /// that closes costs Redis a read event too, at a moment nobody controls.
    control: Mutex<Control>,
    _stream: TcpStream,
}

struct Control {
    conn: BufReader<TcpStream>,
    /// `total_reads_processed` at the last reset (counting the `INFO` that read it).
    base: u64,
    /// Commands this connection sent since the last reset: each is one read for Redis.
    own: u64,
}

impl Control {
    /// Sends one command (inline) and returns its reply: one line, or a bulk string.
    fn call(&mut self, command: &str) -> String {
        self.own += 1;
        let stream = self.conn.get_mut();
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("send to Redis");
        let mut head = String::new();
        self.conn.read_line(&mut head).expect("reply");
        let Some(len) = head.strip_prefix('$') else {
            return head;
        };
        let len: usize = len.trim().parse().expect("bulk length");
        let mut body = vec![0; len + 2];
        std::io::Read::read_exact(&mut self.conn, &mut body).expect("bulk reply");
        String::from_utf8_lossy(&body[..len]).into_owned()
    }

    /// `INFO stats` `total_reads_processed`: the socket reads Redis made from clients.
    fn reads_processed(&mut self) -> u64 {
        self.call("INFO stats")
            .lines()
            .find_map(|line| line.strip_prefix("total_reads_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO stats reports total_reads_processed")
    }
}

impl Monitor {
    fn start(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect MONITOR");
        stream.write_all(b"MONITOR\r\n").expect("send MONITOR");
        let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR reply");
        assert!(ok.starts_with("+OK"), "MONITOR refused: {ok}");
        let control = TcpStream::connect(("127.0.0.1", port)).expect("connect control");
        // MONITOR names a client `[<db> <address>]`: the harness's own commands are left out.
        let own = format!(" {}", control.local_addr().expect("control address"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let fences = Arc::new(Mutex::new(Vec::new()));
        let (l, f) = (lines.clone(), fences.clone());
        std::thread::spawn(move || {
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                // +1700000000.123456 [0 127.0.0.1:5555] "GET" "key"
                let Some((origin, command)) = text.split_once("] ") else {
                    continue;
                };
                if origin.ends_with(" lua") {
                    continue;
                }
                let name = command
                    .split('"')
                    .nth(1)
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                if name == "echo" && command.contains("tower-stateless-fence-") {
                    f.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(command.to_owned());
                } else if !origin.ends_with(&own) {
                    l.lock().unwrap_or_else(|e| e.into_inner()).push(name);
                }
            }
        });
        let monitor = Self {
            port,
            lines,
            fences,
            next_fence: std::sync::atomic::AtomicU64::new(0),
            control: Mutex::new(Control {
                conn: BufReader::new(control),
                base: 0,
                own: 0,
            }),
            _stream: stream,
        };
        monitor.reset();
        monitor
    }

    /// Waits for everything sent so far, forgets it, and starts counting reads anew.
    fn reset(&self) {
        self.fence();
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        control.base = control.reads_processed();
        control.own = 0;
    }

    /// Socket reads Redis made from clients since the last reset, the harness's own
    /// fences and `INFO`s left out: a pipeline sent in one write is one read, and a
    /// client that waits for each reply before it sends on makes one per command. So
    /// this counts round trips, pipelines without `MULTI` included.
    fn reads(&self) -> u64 {
        self.fence();
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let now = control.reads_processed();
        now - control.base - control.own
    }

    /// Sends a marker command and waits until MONITOR has shown it: everything sent
    /// before it has then been recorded.
    fn fence(&self) {
        let n = self
            .next_fence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("tower-stateless-fence-{n}");
        let reply = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .call(&format!("ECHO {marker}"));
        assert_eq!(reply, marker, "fence reply");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.fences.lock().unwrap_or_else(|e| e.into_inner());
            if seen.iter().any(|f| f.contains(&format!("\"{marker}\""))) {
                return;
            }
            drop(seen);
            assert!(Instant::now() < deadline, "MONITOR never showed the fence");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn redis_server_on_path() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free loopback port that no other server of this test process has had: a stopped
/// server keeps its port for its restart, so another test must not be handed it.
fn free_port() -> u16 {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on loopback");
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

/// The ports handed out by [`free_port`] (and cluster bus ports), never handed out again.
static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Starts `redis-server --port port` with `args`, in `dir` if given, and waits until it
/// answers as itself (`INFO server` names this process). `None` when it exits first: the
/// port is another process's.
fn launch(port: u16, args: &[&str], dir: Option<&Path>) -> Option<Child> {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().expect("failed to start redis-server");
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return None;
        }
        let pid = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut conn| redis::cmd("INFO").arg("server").query::<String>(&mut conn))
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse::<u32>().ok())
            });
        if pid == Some(child.id()) {
            return Some(child);
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RedisServer {
    /// Starts a server, or returns `None` (after saying so) when `redis-server` is not
    /// installed. Under `CI=true` a missing `redis-server` fails the test instead.
    pub fn start() -> Option<Self> {
        if !redis_server_on_path() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("redis-server is not on PATH, and CI=true: Redis tests must not skip");
            }
            eprintln!("SKIPPED: redis-server is not on PATH; install it to run the Redis tests");
            return None;
        }
        let mut server = Self {
            port: free_port(),
            child: None,
            monitor: Mutex::new(None),
            args: Vec::new(),
            dir: None,
        };
        while !server.spawn() {
            // Taken by another process meanwhile: another port.
            server.port = free_port();
        }
        Some(server)
    }

    /// Starts `redis-server` on this server's port. Another test process may hold the
    /// port (free ports are picked by binding port 0 and letting go, and a stopped
    /// server's port is free for anyone until it restarts): then this server's process
    /// exits, and `spawn` answers false instead of handing the test somebody else's Redis.
    fn spawn(&mut self) -> bool {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        match launch(self.port, &args, self.dir.as_deref()) {
            Some(child) => {
                self.child = Some(child);
                true
            }
            None => false,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        *self.monitor.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server process (SIGSTOP): connections stay open but nothing answers,
    /// as with a stalled or partitioned Redis.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`pause`](Self::pause)d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server not running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Starts the server again on the same port, empty (a cluster node keeps its
    /// cluster configuration: its id and its slots).
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "port {} was taken by another process while its server was stopped",
            self.port
        );
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("bad redis url")
    }

    /// Starts counting the commands clients send from now on (the previous count is
    /// dropped). Counting uses `MONITOR`, so commands that a Lua script runs inside one
    /// `EVALSHA` are not counted: what is counted is round trips from clients.
    pub fn reset_stats(&self) {
        let mut monitor = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        match monitor.as_ref() {
            Some(m) => m.reset(),
            None => *monitor = Some(Monitor::start(self.port)),
        }
    }

    /// Commands clients sent since the last [`reset_stats`](Self::reset_stats), by
    /// lowercase name.
    pub fn command_stats(&self) -> HashMap<String, u64> {
        let monitor = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        let monitor = monitor
            .as_ref()
            .expect("call reset_stats before command_stats");
        monitor.fence();
        let lines = monitor.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut stats = HashMap::new();
        for name in lines.iter() {
            *stats.entry(name.clone()).or_insert(0) += 1;
        }
        stats
    }

    /// The total number of client commands since the last reset.
    pub fn command_count(&self) -> u64 {
        self.command_stats().values().sum()
    }

    /// Client round trips since the last reset, as Redis saw them: the socket reads it
    /// made from clients (`INFO stats` `total_reads_processed`, the harness's own
    /// commands left out). A pipeline, in a `MULTI` … `EXEC` transaction or not, arrives
    /// in one read; each command a client sends only after the previous reply is one
    /// more. A client connection that closes counts one too, so measure between
    /// connections that stay open.
    pub fn round_trips(&self) -> u64 {
        let monitor = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        monitor
            .as_ref()
            .expect("call reset_stats before round_trips")
            .reads()
    }

    /// Raw `PTTL` of a key, in milliseconds (-2 absent, -1 no TTL).
    pub fn pttl(&self, key: &str) -> i64 {
        let mut conn = self.client().get_connection().expect("connect");
        redis::cmd("PTTL").arg(key).query(&mut conn).expect("PTTL")
    }

    /// All keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.client().get_connection().expect("connect");
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .expect("KEYS")
    }

    /// Deletes every key matching `pattern`; returns how many there were.
    pub fn delete_keys(&self, pattern: &str) -> usize {
        let keys = self.keys(pattern);
        if !keys.is_empty() {
            let mut conn = self.client().get_connection().expect("connect");
            let _: usize = redis::cmd("DEL").arg(&keys).query(&mut conn).expect("DEL");
        }
        keys.len()
    }

    /// How many keys the server holds (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        let mut conn = self.client().get_connection().expect("connect");
        redis::cmd("DBSIZE").query(&mut conn).expect("DBSIZE")
    }

    /// Raw `GET` of a key.
    pub fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        let mut conn = self.client().get_connection().expect("connect");
        redis::cmd("GET").arg(key).query(&mut conn).expect("GET")
    }

    /// `SET key value` on a connection of its own, not through a store.
    pub fn raw_set(&self, key: &str, value: &[u8]) {
        let mut conn = self.client().get_connection().expect("connect");
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut conn)
            .expect("SET");
    }
}

impl RedisServer {
    /// Starts a replica of `primary` (`REPLICAOF`, as `--replicaof` does) and waits until the
    /// primary counts it as a connected replica, so that `WAIT` on the primary can be
    /// confirmed by it. `None` (skipping) when `redis-server` is not installed, as
    /// [`start`](Self::start).
    pub fn start_replica_of(primary: &RedisServer) -> Option<Self> {
        let replica = Self::start()?;
        let mut conn = replica.client().get_connection().expect("connect replica");
        // Load what the primary sends from the socket: never write a dump.rdb into the
        // working directory (the crate's).
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("repl-diskless-load")
            .arg("swapdb")
            .query(&mut conn)
            .expect("CONFIG SET repl-diskless-load");
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(primary.port)
            .query(&mut conn)
            .expect("REPLICAOF");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let replica_info = replica.info("replication");
            let primary_info = primary.info("replication");
            if replica_info.contains("master_link_status:up")
                && primary_info.contains("connected_slaves:1")
                && primary_info.contains("state=online")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica never came online:\n{replica_info}\n{primary_info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(replica)
    }

    /// The text of `INFO <section>`.
    pub fn info(&self, section: &str) -> String {
        let mut conn = self.client().get_connection().expect("connect");
        redis::cmd("INFO")
            .arg(section)
            .query(&mut conn)
            .expect("INFO")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a Redis for the test or returns from it (skipping) when there is none.
#[macro_export]
macro_rules! redis_or_skip {
    () => {
        match $crate::common::RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

/// A real 3-master Redis Cluster on free ports (`redis-server --cluster-enabled yes` ×3,
/// joined with `redis-cli --cluster create`), torn down when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    _dir: TempDir,
}

/// A scratch directory removed when dropped (cluster nodes write their config there).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            // Not to be handed to another server: a restarted node needs it again.
            TAKEN
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(port + 10_000);
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts the cluster, or `None` (skipping, or failing under `CI=true`) when
    /// `redis-server`/`redis-cli` are missing.
    pub fn start() -> Option<Self> {
        let have_cli = Command::new("redis-cli")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !redis_server_on_path() || !have_cli {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "redis-server/redis-cli not on PATH, and CI=true: cluster tests must not skip"
                );
            }
            eprintln!("SKIPPED: redis-server or redis-cli is not on PATH");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "tower-stateless-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let dir = TempDir(dir);
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let (port, child, args) = loop {
                let port = free_cluster_port();
                let conf = dir.0.join(format!("nodes-{port}.conf"));
                let args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().expect("utf-8 path"),
                    "--cluster-node-timeout",
                    "2000",
                ];
                if let Some(child) = launch(port, &args, Some(&dir.0)) {
                    break (port, child, Vec::from(args.map(str::to_owned)));
                }
            };
            nodes.push(RedisServer {
                port,
                child: Some(child),
                monitor: Mutex::new(None),
                args,
                dir: Some(dir.0.clone()),
            });
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_ok();
        Some(cluster)
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let mut conn = node.client().get_connection().expect("connect node");
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut conn)
                    .expect("CLUSTER INFO");
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never reached state ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kills node `index` (as a crash would) and starts it again on its port with its
    /// cluster configuration, so it rejoins owning the same slots, empty; returns once
    /// every node reports `cluster_state:ok` again (a restarted master waits about the
    /// node timeout, 2 s here, before it serves).
    pub fn restart_node(&mut self, index: usize) {
        self.nodes[index].restart();
        self.wait_ok();
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, e.g. to count commands on each.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `CLUSTER KEYSLOT` of a key, as the server computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        let mut conn = self.nodes[0].client().get_connection().expect("connect");
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .expect("KEYSLOT")
    }

    /// Every key on every node matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.keys(pattern)).collect()
    }
}

/// Starts a Redis Cluster for the test or returns from it (skipping) when there is none.
#[macro_export]
macro_rules! cluster_or_skip {
    () => {
        match $crate::common::RedisCluster::start() {
            Some(cluster) => cluster,
            None => return,
        }
    };
}

/// Fails every call: as unavailable (an outage of any backend), or with an unexpected
/// reply (not an outage).
#[derive(Debug)]
pub struct Down {
    broken: bool,
}

impl Hook for Down {
    fn before(&self, _: &Call<'_>) -> Result<(), tower_stateless::store::StoreError> {
        use tower_stateless::store::StoreError;
        Err(if self.broken {
            StoreError::Unexpected("corrupt reply (test)".into())
        } else {
            StoreError::Unavailable("store down (test)".into())
        })
    }
}

/// A store whose every operation fails: as unavailable (an outage of any backend), or,
/// when built with [`DownStore::broken`], with an unexpected reply (not an outage). The
/// memory store behind it is never reached.
pub type DownStore = Intercept<tower_stateless::store::MemoryStore, Down>;

impl DownStore {
    /// Every operation fails as unavailable.
    pub fn unavailable() -> Self {
        Intercept::new(
            tower_stateless::store::MemoryStore::new(),
            Down { broken: false },
        )
    }

    /// Every operation fails with an unexpected reply.
    pub fn broken() -> Self {
        Intercept::new(
            tower_stateless::store::MemoryStore::new(),
            Down { broken: true },
        )
    }
}

/// A log sink for the tracing subscriber of one current-thread test.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures `WARN` and above on this thread until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// The captured lines containing `needle`.
    pub fn lines_containing(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs generic tests `async fn name<St: StateStore>(store: St)` on a real 3-master Redis
/// Cluster, as `redis_cluster::name` (feature `redis-cluster`).
#[macro_export]
macro_rules! cluster_tests {
    ($($name:ident),* $(,)?) => {
        #[cfg(feature = "redis-cluster")]
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let cluster = $crate::cluster_or_skip!();
                    let store = tower_stateless::store::RedisStore::builder()
                        .cluster_urls(cluster.urls())
                        .build()
                        .expect("cluster store");
                    super::$name(store).await;
                    drop(cluster);
                }
            )*
        }
    };
}

/// Runs generic tests `async fn name<St: StateStore>(store: St)` once per backend:
/// `memory::name`, `redis::name` (a real server of its own) and `redis_cluster::name`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(tower_stateless::store::MemoryStore::new()).await
                }
            )*
        }

        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let server = $crate::redis_or_skip!();
                    let store = tower_stateless::store::RedisStore::from_url(server.url())
                        .expect("store");
                    super::$name(store).await;
                    drop(server);
                }
            )*
        }

        $crate::cluster_tests!($($name),*);
    };
}

/// Runs generic tests `async fn name<St: StateStore>(store: St, other: St)` once per
/// backend, with two handles on one shared store (as two instances of a service have).
#[macro_export]
macro_rules! backend_pair_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = tower_stateless::store::MemoryStore::new();
                    super::$name(store.clone(), store).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = $crate::redis_or_skip!();
                    let open = || {
                        tower_stateless::store::RedisStore::from_url(server.url()).expect("store")
                    };
                    super::$name(open(), open()).await;
                    drop(server);
                }
            )*
        }
        #[cfg(feature = "redis-cluster")]
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let cluster = $crate::cluster_or_skip!();
                    let build = || {
                        tower_stateless::store::RedisStore::builder()
                            .cluster_urls(cluster.urls())
                            .build()
                            .expect("cluster store")
                    };
                    super::$name(build(), build()).await;
                    drop(cluster);
                }
            )*
        }
    };
}

/// Opens every connection of a store's pool (connections open on first use, one per
/// slot in turn), so that no counted request pays a connection's handshake: a round trip
/// of its own that MONITOR does not show.
pub async fn warm_pool(store: &tower_stateless::store::RedisStore) {
    use tower_stateless::store::StateStore;
    for _ in 0..16 {
        store.get("warm-pool").await.expect("warm the pool");
    }
}

/// The JSON body of a response (an error answer, a token answer).
pub async fn json_body<B>(response: http::Response<B>) -> serde_json::Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;

    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&body).expect("json")
}
