//! `RedisStore`: counters shared by every replica in one Redis or one Redis Cluster.
//!
//! Owns the scripts (`script.rs` and the Lua beside it), connections (multiplexed and
//! pipelined: concurrent requests share them), per-call deadlines, both the local one and
//! the one each script call carries on the server's clock (`deadline.rs`: a call answered
//! as failed never counts later), the circuit breaker, and readiness (a probe run of the
//! script, not PING). Implements [`CounterStore`] and passes the same conformance suite as
//! the memory store, and the differential test against it.
//!
//! Single node: one call of a Redis Function per request, whatever the number of counters
//! (one round trip), and concurrent requests coalesced into one call (`batch.rs`: each
//! request still decided and counted alone, in arrival order). Redis Cluster: one script
//! call (EVALSHA) per hash tag of a request, concurrently, shared with the other requests
//! of that tag on the wire at the same time (`tags.rs`), and a give-back where a request
//! rejected on one slot was counted on another (`cluster.rs`).

mod batch;
mod breaker;
mod cluster;
mod deadline;
mod script;
pub mod sentinel;
mod tags;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::{Client, IntoConnectionInfo, TlsCertificates};
use arc_swap::ArcSwapOption;

use crate::limiter::{BatchOutcome, CounterOp, CounterStore, StoreError, StoreFuture};
use batch::{Queue, Source};
use breaker::Breaker;
use deadline::ServerClock;
use script::{Mode, Reply};

/// Connections to a single node, by default (`connections` of [`RedisOptions`]).
pub const DEFAULT_CONNECTIONS: usize = 1;

/// Calls in flight per connection, by default (`calls_per_connection`).
pub const DEFAULT_CALLS_PER_CONNECTION: usize = 2;

/// How often an open circuit probes Redis.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Where Redis is.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One server (or a proxy in front of several).
    Single(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
    /// A master found through Redis Sentinel, followed across failovers (`sentinel.rs`).
    Sentinel(sentinel::SentinelTarget),
}

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// Where.
    pub target: RedisTarget,
    /// Overrides the URL's password (read from `--redis-password-file`).
    pub password: Option<String>,
    /// PEM CA certificate(s) for `rediss://`.
    pub ca_pem: Option<Vec<u8>>,
    /// Deadline of every call.
    pub timeout: Duration,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Single node: multiplexed connections to open (at least 1).
    pub connections: usize,
    /// Single node: coalesced calls in flight on each connection (at least 1).
    pub calls_per_connection: usize,
    /// Single node: run the connections and their workers on a thread of their own (a
    /// current-thread runtime), so replies from Redis are read and handed out without
    /// waiting behind the request tasks of the main runtime (docs/counter-store.md §11).
    pub own_thread: bool,
}

impl RedisOptions {
    /// Options for a local Redis (`redis://127.0.0.1:6379`) with the service's defaults, to
    /// be completed with struct update syntax.
    pub fn defaults() -> Self {
        RedisOptions {
            target: RedisTarget::Single("redis://127.0.0.1:6379".into()),
            password: None,
            ca_pem: None,
            timeout: Duration::from_millis(15),
            key_prefix: "rls".into(),
            connections: DEFAULT_CONNECTIONS,
            calls_per_connection: DEFAULT_CALLS_PER_CONNECTION,
            own_thread: true,
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("target", &describe(&self.target))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// The target with credentials redacted, for logs and `/config`.
pub fn describe(target: &RedisTarget) -> String {
    match target {
        RedisTarget::Single(u) => url::redact(u),
        RedisTarget::Cluster(nodes) => {
            let nodes: Vec<String> = nodes.iter().map(|u| url::redact(u)).collect();
            format!("cluster {}", nodes.join(","))
        }
        RedisTarget::Sentinel(t) => {
            let nodes: Vec<String> = t.sentinels.iter().map(|u| url::redact(u)).collect();
            format!("sentinel {} via {}", t.master, nodes.join(","))
        }
    }
}

enum Connection {
    /// A single node: the coalescing queue in front of its connections.
    Single(Queue),
    /// A cluster: its connection, and the calls of each hash tag (`tags.rs`).
    Cluster(Arc<tags::Calls>),
}

/// The Redis [`CounterStore`].
pub struct RedisStore {
    connection: Connection,
    /// `redis`, `redis-cluster` or `redis-sentinel`, for `/config` and metrics.
    kind: &'static str,
    timeout: Duration,
    key_prefix: String,
    breaker: Arc<Breaker>,
    server_clock: Arc<ServerClock>,
    described: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.described)
            .finish_non_exhaustive()
    }
}

/// Why Redis options were refused at start-up.
#[derive(Debug, thiserror::Error)]
#[error("invalid Redis settings: {0}")]
pub struct RedisConfigError(String);

impl RedisStore {
    /// Builds the store without waiting for Redis: the service starts while Redis is down
    /// and becomes ready when it answers. Must be called inside a Tokio runtime.
    pub fn new(options: RedisOptions) -> Result<Arc<Self>, RedisConfigError> {
        let described = describe(&options.target);
        let bad = |e: ::redis::RedisError| RedisConfigError(format!("{described}: {e}"));
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: options.ca_pem.clone(),
        };
        let breaker = Arc::new(Breaker::new(options.timeout));
        let server_clock = Arc::new(ServerClock::new(options.timeout));
        // A single node and a Sentinel's master share the coalescing queue; only where each
        // call's connection comes from differs.
        let queue =
            |connect: Box<dyn FnOnce() -> Result<Vec<Source>, ::redis::RedisError> + Send>| {
                let shared = Arc::new(batch::Shared {
                    timeout: options.timeout,
                    breaker: breaker.clone(),
                    clock: server_clock.clone(),
                });
                Queue::start(
                    connect,
                    options.calls_per_connection,
                    options.own_thread,
                    shared,
                )
            };
        let connection = match &options.target {
            RedisTarget::Single(u) => {
                let mut info = url::with_scheme(u).into_connection_info().map_err(bad)?;
                if let Some(p) = &options.password {
                    let settings = info.redis_settings().clone().set_password(p);
                    info = info.set_redis_settings(settings);
                }
                let client = if options.ca_pem.is_some() {
                    Client::build_with_tls(info, certs()).map_err(bad)?
                } else {
                    Client::open(info).map_err(bad)?
                };
                // The call's own deadline (batch.rs) answers the requests; the client's is
                // only there to free the slot of a reply that never comes. Set to the same
                // value, the two raced, and a call past it failed as "unavailable" half the
                // time instead of "timeout".
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.timeout.max(Duration::from_millis(250))))
                    .set_response_timeout(Some(options.timeout * 2))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(200));
                let n = options.connections.max(1);
                let connect = move || {
                    (0..n)
                        .map(|_| {
                            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                                .map(Source::Fixed)
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                Connection::Single(queue(Box::new(connect)).map_err(bad)?)
            }
            RedisTarget::Sentinel(target) => {
                // The same coalescing queue as a single node; each call takes the master the
                // sentinels name at that moment.
                let follower = sentinel::Follower::start(sentinel::SentinelOptions {
                    target: target.clone(),
                    password: options.password.clone(),
                    ca_pem: options.ca_pem.clone(),
                    timeout: options.timeout,
                })
                .map_err(|e| RedisConfigError(format!("{described}: {e}")))?;
                let n = options.connections.max(1);
                let connect = move || Ok(vec![Source::Sentinel(follower); n]);
                Connection::Single(queue(Box::new(connect)).map_err(bad)?)
            }
            RedisTarget::Cluster(nodes) => {
                let nodes: Vec<String> = nodes.iter().map(|n| url::with_scheme(n)).collect();
                let mut builder = ClusterClient::builder(nodes)
                    .connection_timeout(options.timeout.max(Duration::from_millis(250)))
                    .response_timeout(options.timeout)
                    .retries(1);
                if let Some(p) = &options.password {
                    builder = builder.password(p);
                }
                if options.ca_pem.is_some() {
                    builder = builder.certs(certs());
                }
                let client = builder.build().map_err(bad)?;
                let slot = Arc::new(ArcSwapOption::empty());
                tokio::spawn(cluster::connect(client, slot.clone(), described.clone()));
                Connection::Cluster(Arc::new(tags::Calls::new(
                    slot,
                    options.timeout,
                    breaker.clone(),
                    server_clock.clone(),
                )))
            }
        };
        let kind = match options.target {
            RedisTarget::Single(_) => "redis",
            RedisTarget::Cluster(_) => "redis-cluster",
            RedisTarget::Sentinel(_) => "redis-sentinel",
        };
        let store = Arc::new(RedisStore {
            connection,
            kind,
            timeout: options.timeout,
            key_prefix: options.key_prefix,
            breaker,
            server_clock,
            described,
        });
        tokio::spawn(probe(Arc::downgrade(&store)));
        Ok(store)
    }

    /// The Redis Cluster's calls.
    fn cluster(&self) -> Result<&Arc<tags::Calls>, StoreError> {
        match &self.connection {
            Connection::Cluster(calls) => Ok(calls),
            Connection::Single(_) => Err(StoreError::Unavailable(
                "not a Redis Cluster connection".into(),
            )),
        }
    }

    /// The target, credentials redacted.
    pub fn described(&self) -> &str {
        &self.described
    }

    fn open_circuit(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "circuit open after repeated failures (last: {})",
            self.breaker.last_error()
        ))
    }

    /// One request's check-and-count, carrying its deadline on the server's clock (built
    /// from the moment it is sent or queued, the moment its local timeout counts from); every
    /// reply teaches the store that clock's offset (`deadline.rs`). Single node: through the
    /// coalescing queue. Redis Cluster: with the other requests of its hash tag (`tags.rs`).
    async fn run_script(&self, ops: &[&CounterOp], mode: Mode) -> Result<BatchOutcome, StoreError> {
        let deadline = self
            .server_clock
            .deadline(self.server_clock.local_ms(), self.timeout);
        let encoded = script::encode(&self.key_prefix, ops, mode, deadline);
        let reply = match &self.connection {
            Connection::Single(queue) => queue.submit(encoded).await?,
            // A probe has no counters, so no tag: it goes alone.
            Connection::Cluster(calls) => match ops.first() {
                Some(op) => {
                    calls
                        .submit(cluster::hash_tag(op.key.as_str()), encoded)
                        .await?
                }
                None => calls.call_one(&encoded).await?,
            },
        };
        match reply {
            Reply::Ran(mut out) => {
                script::complete(&mut out, ops).map_err(StoreError::Unavailable)?;
                Ok(out)
            }
            Reply::Expired { .. } => {
                // It sat in Redis past the moment the service gave up on it: answered as a
                // timeout, and nothing was counted. Not a breaker failure, on a cluster as on
                // one node (docs/counter-store.md §7): Redis answered, and a call carrying
                // several requests of a tag would otherwise count one failure per request.
                Err(StoreError::Timeout)
            }
        }
    }
}

/// The first probe after the circuit opens, this long after: a stall that has passed (Redis
/// or the service waiting for a core) closes the circuit again within milliseconds, where a
/// probe on a fixed 100 ms tick failed every request in between (6 688 calls in one run at
/// 40 000 per second, after a stall that had timed out 93).
const FIRST_PROBE: Duration = Duration::from_millis(5);

/// While the circuit is open, probes Redis, first [`FIRST_PROBE`] after it opened, then at
/// doubling intervals up to [`PROBE_INTERVAL`]; the first answer closes it. Ends when the
/// store is dropped.
async fn probe(store: std::sync::Weak<RedisStore>) {
    loop {
        let Some(breaker) = store.upgrade().map(|s| s.breaker.clone()) else {
            return;
        };
        // Woken by the opening; the timeout only lets a dropped store end this task.
        if tokio::time::timeout(Duration::from_secs(1), breaker.opened())
            .await
            .is_err()
        {
            continue;
        }
        let mut wait = FIRST_PROBE;
        loop {
            tokio::time::sleep(wait).await;
            let Some(store) = store.upgrade() else { return };
            if !store.breaker.is_open() {
                break;
            }
            let _ = store.ping_now().await;
            wait = (wait * 2).min(PROBE_INTERVAL);
        }
    }
}

impl RedisStore {
    /// Readiness runs what requests need, not PING: check-and-count (FCALL on a single
    /// node, through the coalescing queue, loading the library when the server has not got
    /// it; EVALSHA on a Cluster, reloaded on NOSCRIPT; either may be refused by an ACL) with
    /// a write that changes nothing (refused when Redis refuses writes, at `maxmemory` with
    /// `noeviction`).
    async fn ping_now(&self) -> Result<(), StoreError> {
        self.run_script(&[], Mode::Probe).await.map(|_| ())
    }
}

impl CounterStore for RedisStore {
    fn apply<'a>(&'a self, ops: &'a [CounterOp], dry_run: bool) -> StoreFuture<'a, BatchOutcome> {
        Box::pin(async move {
            if self.breaker.is_open() {
                return Err(self.open_circuit());
            }
            match &self.connection {
                Connection::Single(_) => {
                    let all: Vec<&CounterOp> = ops.iter().collect();
                    self.run_script(&all, Mode::of(dry_run)).await
                }
                Connection::Cluster(_) => self.apply_cluster(ops, dry_run).await,
            }
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if self.breaker.is_open() {
                return Err(self.open_circuit());
            }
            self.ping_now().await
        })
    }

    fn kind(&self) -> &'static str {
        self.kind
    }
}
