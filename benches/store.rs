//! Store operations on MemoryStore and on a real Redis (started on a free port; skipped
//! with a message when `redis-server` is not installed). The Redis `PING` row is the
//! floor: one round trip on loopback, against which the store's operations compare.
//!
//! Run with: `cargo bench --bench store`

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use tower_stateless::store::{MemoryStore, RedisStore, StateStore};

const TTL: Duration = Duration::from_secs(600);

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let redis = Redis(child, port);
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(redis);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn bench_ops<S: StateStore>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, store: S) {
    let mut group = c.benchmark_group(format!("store/{name}"));
    let value = Bytes::from(vec![b'x'; 256]);
    rt.block_on(async {
        store
            .set("bench:present", value.clone(), TTL)
            .await
            .expect("set");
        store
            .set("bench:cas", value.clone(), TTL)
            .await
            .expect("set");
    });
    group.bench_function("get", |b| {
        b.to_async(rt)
            .iter(|| async { store.get("bench:present").await.expect("get") })
    });
    group.bench_function("get_many_3", |b| {
        b.to_async(rt).iter(|| async {
            store
                .get_many(&["bench:present", "bench:a", "bench:b"])
                .await
                .expect("get_many")
        })
    });
    group.bench_function("set", |b| {
        b.to_async(rt).iter(|| async {
            store
                .set("bench:set", value.clone(), TTL)
                .await
                .expect("set")
        })
    });
    group.bench_function("set_if_absent_existing", |b| {
        b.to_async(rt).iter(|| async {
            store
                .set_if_absent("bench:present", value.clone(), TTL)
                .await
                .expect("set_if_absent")
        })
    });
    group.bench_function("compare_and_set", |b| {
        b.to_async(rt).iter(|| async {
            store
                .compare_and_set("bench:cas", &value, value.clone(), TTL)
                .await
                .expect("cas")
        })
    });
    group.bench_function("get_and_refresh", |b| {
        b.to_async(rt).iter(|| async {
            store
                .get_and_refresh("bench:present", TTL)
                .await
                .expect("getex")
        })
    });
    group.finish();
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    bench_ops(c, &rt, "memory", MemoryStore::new());

    let Some(redis) = start_redis() else {
        eprintln!("SKIPPED: redis-server not found; Redis benches not run");
        return;
    };
    let url = format!("redis://127.0.0.1:{}", redis.1);
    let client = redis::Client::open(url.as_str()).expect("client");
    let conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .expect("connect");
    c.bench_function("store/redis/PING (round-trip floor)", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .expect("ping")
            }
        })
    });
    let store = RedisStore::from_url(url).expect("store");
    bench_ops(c, &rt, "redis", store);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = stores
}
criterion_main!(benches);
