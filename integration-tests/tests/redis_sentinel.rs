//! Redis Sentinel with a real failover (docs/counter-store.md §12): a master, a replica and
//! three `redis-server --sentinel` processes on loopback; the real binary started with
//! `--redis-sentinel`; the master killed with SIGKILL; the service back on the promoted
//! replica by itself, answering per `--on-backend-error` meanwhile, and exact from then on.

use std::time::{Duration, Instant};

use integration_tests::redis::{RedisServer, Sentinel};
use integration_tests::{Rls, request, temp_file};
use ironclad_rls::proto::rate_limit_response::Code;

const MASTER: &str = "mymaster";

/// Five an hour per user: a fresh user shows exactness (exactly five admitted).
const LIMITS: &str = "domain: sentinel
descriptors:
  - key: user
    rate_limit:
      unit: hour
      requests_per_unit: 5
";

/// A sentinel watching `master_port` under [`MASTER`], quorum 2, quick to fail over, with
/// `extra` lines of configuration.
fn sentinel(master_port: u16, extra: &str) -> Sentinel {
    Sentinel::start(&format!(
        "sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {MASTER} 1000\n\
         sentinel failover-timeout {MASTER} 5000\n\
         sentinel parallel-syncs {MASTER} 1\n{extra}"
    ))
}

/// A field of `SENTINEL master mymaster` (a flat list of names and values).
fn master_field(s: &Sentinel, field: &str) -> Option<String> {
    let out = s.cli(None, &["SENTINEL", "master", MASTER]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .iter()
        .position(|l| *l == field)
        .and_then(|i| lines.get(i + 1))
        .map(|v| (*v).to_owned())
}

/// Polls `f` every 50 ms until it holds, or panics naming `what`.
fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A master, its replica in sync, and three sentinels that know both and each other.
fn topology() -> (RedisServer, RedisServer, Vec<Sentinel>) {
    let master = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    wait_until(Duration::from_secs(20), "the replica in sync", || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    });
    let sentinels: Vec<Sentinel> = (0..3).map(|_| sentinel(master.port, "")).collect();
    // A failover needs the quorum to see each other, and a replica to promote.
    wait_until(
        Duration::from_secs(30),
        "the sentinels to find each other and the replica",
        || {
            sentinels.iter().all(|s| {
                master_field(s, "num-other-sentinels").as_deref() == Some("2")
                    && master_field(s, "num-slaves").as_deref() == Some("1")
            })
        },
    );
    (master, replica, sentinels)
}

fn sentinel_flag(sentinels: &[Sentinel]) -> String {
    let addrs: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    format!("{MASTER},{}", addrs.join(","))
}

/// One call: `Some(code)` for an answer, `None` for a gRPC error.
async fn call(rls: &Rls, user: &str) -> Option<i32> {
    let mut client = rls.client().await;
    client
        .should_rate_limit(request("sentinel", &[&[("user", user)]]))
        .await
        .ok()
        .map(|r| r.into_inner().overall_code)
}

/// Sends `n` calls for `user`; (OK, OVER_LIMIT, errors).
async fn burst(rls: &Rls, user: &str, n: usize) -> (usize, usize, usize) {
    let (mut ok, mut over, mut err) = (0, 0, 0);
    for _ in 0..n {
        match call(rls, user).await {
            Some(c) if c == Code::Ok as i32 => ok += 1,
            Some(_) => over += 1,
            None => err += 1,
        }
    }
    (ok, over, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_failover_by_itself_and_stays_exact() {
    let (mut master, replica, sentinels) = topology();
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let flag = sentinel_flag(&sentinels);
    let config = file.to_str().expect("utf-8 path");
    // The default answer to a failed store (UNAVAILABLE), and `allow` beside it, which must
    // answer OK while there is no master.
    let strict = Rls::start(&[
        "--config",
        config,
        "--redis-sentinel",
        &flag,
        "--redis-timeout",
        "1s",
    ]);
    let lenient = Rls::start(&[
        "--config",
        config,
        "--redis-sentinel",
        &flag,
        "--redis-timeout",
        "1s",
        "--on-backend-error",
        "allow",
        "--over-limit-cache-ttl",
        "0s",
    ]);
    strict.wait_ready(Duration::from_secs(20));
    lenient.wait_ready(Duration::from_secs(20));
    assert_eq!(strict.admin_get("/readyz").0, 200);

    // Before: exact on the first master, counted there.
    assert_eq!(
        burst(&strict, "before", 8).await,
        (5, 3, 0),
        "exactly the limit admitted"
    );
    assert!(
        !master.cli(&["KEYS", "*"]).trim().is_empty(),
        "the counters live on the master the sentinels named"
    );
    // What the replica has when the master dies survives the failover: make sure it has it.
    assert_eq!(master.cli(&["WAIT", "1", "5000"]).trim(), "1");

    let killed_at = Instant::now();
    master.kill();

    // Meanwhile `allow` answers OK (never an error), whatever the store says.
    assert_eq!(call(&lenient, "meanwhile").await, Some(Code::Ok as i32));

    // Back by itself: a fresh user per probe, so the probes do not use up any counter we
    // look at later.
    let deadline = killed_at + Duration::from_secs(60);
    let mut probes = 0;
    loop {
        probes += 1;
        if call(&strict, &format!("probe-{probes}")).await == Some(Code::Ok as i32) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not come back on the new master; its log:\n{}",
            strict.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back_after = killed_at.elapsed();
    println!(
        "failover: OK again {:.2} s after SIGKILL of the master ({probes} probes; sentinels \
         down-after 1 s)",
        back_after.as_secs_f64()
    );
    assert!(
        replica.cli(&["ROLE"]).starts_with("master"),
        "the replica was promoted"
    );
    let promoted = replica.port.to_string();
    wait_until(
        Duration::from_secs(10),
        "every sentinel to name the promoted replica",
        || {
            sentinels
                .iter()
                .all(|s| master_field(s, "port").as_deref() == Some(promoted.as_str()))
        },
    );

    // From then on exact, on the new master: a fresh counter admits exactly its limit...
    assert_eq!(burst(&strict, "after", 8).await, (5, 3, 0));
    assert!(replica.cli(&["KEYS", "*after*"]).contains("after"));
    // ...the replicated count of before is still spent...
    assert_eq!(burst(&strict, "before", 1).await, (0, 1, 0));
    // ...and both replicas of the service share the new master's counters.
    assert_eq!(burst(&lenient, "after", 1).await, (0, 1, 0));
    assert!(
        strict
            .logs()
            .iter()
            .any(|l| l.contains("using this master") && l.contains(&promoted)),
        "the switch is logged with the new master's address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_with_passwords() {
    // Master and replica require a password; so do the sentinels (a different one).
    let master = RedisServer::start_with(&["--requirepass", "m-secret"]);
    let replica = RedisServer::start_with(&[
        "--requirepass",
        "m-secret",
        "--masterauth",
        "m-secret",
        "--replicaof",
        "127.0.0.1",
        &master.port.to_string(),
    ]);
    // A sentinel that itself requires a password, and authenticates to the master.
    let sentinel = sentinel(
        master.port,
        &format!("sentinel auth-pass {MASTER} m-secret\nrequirepass s-secret\n"),
    );
    let _ = &replica;
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let (_pdir, master_pass) = temp_file("redis-password", "m-secret\n");
    let (_sdir, sentinel_pass) = temp_file("sentinel-password", "s-secret\n");
    let rls = Rls::start(&[
        "--config",
        file.to_str().expect("utf-8 path"),
        "--redis-sentinel",
        &format!("{MASTER},127.0.0.1:{}", sentinel.port),
        "--redis-password-file",
        master_pass.to_str().expect("utf-8 path"),
        "--redis-sentinel-password-file",
        sentinel_pass.to_str().expect("utf-8 path"),
        "--redis-timeout",
        "1s",
    ]);
    rls.wait_ready(Duration::from_secs(20));
    assert_eq!(burst(&rls, "u", 6).await, (5, 1, 0));
    let logs = rls.logs().join("\n");
    assert!(
        !logs.contains("m-secret") && !logs.contains("s-secret"),
        "no password in the log"
    );
    let (_, config) = rls.admin_get("/config");
    assert!(!config.contains("secret"), "no password in /config");
}
