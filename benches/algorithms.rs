//! What each counting algorithm costs: one admitted hit on one counter, on the memory store
//! (the decision itself, under its mutex) and through the Redis store (one script call,
//! sequential, so the figure is the round trip on loopback). 10 000 distinct counters cycle,
//! so logs and buckets hold realistic state; limits are high so every hit is admitted and
//! written (the slowest path). Then the bounded cost of a sliding window asked for
//! 2^32 − 1 hits under a limit of 2^32 − 1 (the request that once aborted the memory store):
//! admitted once per counter, then over limit at once. The Redis half starts its own
//! `redis-server` on a free port and is skipped, with a note, when none is installed.
//! Run with `cargo bench --bench algorithms`; figures are in the README.

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ironclad_rls::config::Algorithm;
use ironclad_rls::descriptor::{CounterKey, CounterScope};
use ironclad_rls::limiter::{CounterOp, CounterStore, MemoryStore, SystemClock};
use ironclad_rls::redis::{RedisOptions, RedisStore, RedisTarget};

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::TokenBucket,
];

/// One op per consumer: 100 000 hits per second each (a sliding log of a second holds up to
/// that many; the bench keeps each at a few hundred).
fn ops(algorithm: Algorithm) -> Vec<CounterOp> {
    (0..10_000)
        .map(|i| CounterOp {
            key: CounterKey::new(
                "bench",
                "ep",
                &CounterScope::Consumer {
                    prefix: "/api",
                    consumer: &format!("c{i}"),
                },
            ),
            window_secs: 1,
            algorithm,
            limit: 100_000,
            capacity: 100_000,
            hits: 1,
            negative: false,
            enforce: true,
            quota: false,
        })
        .collect()
}

/// The huge request on each of 10 000 counters.
fn huge_ops() -> Vec<CounterOp> {
    ops(Algorithm::SlidingWindow)
        .into_iter()
        .map(|op| CounterOp {
            window_secs: 3_600,
            limit: u32::MAX.into(),
            capacity: u32::MAX.into(),
            hits: u32::MAX.into(),
            ..op
        })
        .collect()
}

const HUGE: &str = "sliding_window, 2^32 - 1 hits";

fn memory(c: &mut Criterion) {
    let store = MemoryStore::new(Arc::new(SystemClock));
    for (name, ops) in ALGORITHMS
        .map(|a| (a.as_str(), ops(a)))
        .into_iter()
        .chain([(HUGE, huge_ops())])
    {
        let mut i = 0;
        c.bench_function(&format!("memory store, 1 counter: {name}"), |b| {
            b.iter(|| {
                i = (i + 1) % ops.len();
                black_box(
                    store
                        .apply_now(std::slice::from_ref(&ops[i]), false)
                        .expect("the store has room"),
                )
            })
        });
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(Server, u16)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
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
        .spawn()
        .ok()?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((server, port))
}

fn redis(c: &mut Criterion) {
    let Some((_server, port)) = start_redis() else {
        eprintln!("redis-server not found or not starting: Redis round trips not measured");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(async {
        RedisStore::new(RedisOptions {
            target: RedisTarget::Single(format!("redis://127.0.0.1:{port}")),
            password: None,
            ca_pem: None,
            timeout: Duration::from_secs(2),
            key_prefix: "rls".into(),
            ..RedisOptions::defaults()
        })
        .expect("store")
    });
    rt.block_on(async {
        while store.ping().await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut group = c.benchmark_group("redis store round trip, 1 counter");
    group.measurement_time(Duration::from_secs(5));
    for (name, ops) in ALGORITHMS
        .map(|a| (a.as_str(), ops(a)))
        .into_iter()
        .chain([(HUGE, huge_ops())])
    {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % ops.len();
                black_box(
                    rt.block_on(store.apply(std::slice::from_ref(&ops[i]), false))
                        .expect("Redis answers"),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
