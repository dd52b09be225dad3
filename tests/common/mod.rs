//! Shared test helpers: a real `redis-server` per test on a free port.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process started for one test: no persistence, loopback only, killed
/// when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

fn redis_server_on_path() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
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
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("bad redis url")
    }

    /// Clears the server's command statistics.
    pub fn reset_stats(&self) {
        let mut conn = self.client().get_connection().expect("connect for stats");
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(&mut conn)
            .expect("CONFIG RESETSTAT");
    }

    /// Commands received since the last [`reset_stats`](Self::reset_stats), by lowercase
    /// name, without the `INFO`/`CONFIG` of the counting itself.
    pub fn command_stats(&self) -> HashMap<String, u64> {
        let mut conn = self.client().get_connection().expect("connect for stats");
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .expect("INFO commandstats");
        info.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat"))
            .collect()
    }

    /// The total number of commands received since the last reset.
    pub fn command_count(&self) -> u64 {
        self.command_stats().values().sum()
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

    /// Raw `GET` of a key.
    pub fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        let mut conn = self.client().get_connection().expect("connect");
        redis::cmd("GET").arg(key).query(&mut conn).expect("GET")
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
