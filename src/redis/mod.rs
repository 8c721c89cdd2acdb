//! `RedisStore`: counters shared by every replica in one Redis or one Redis Cluster.
//!
//! Owns the scripts (`script.rs` and the Lua beside it), connections (multiplexed and
//! pipelined: concurrent requests share them), per-call deadlines, both the local one and
//! the one each script call carries on the server's clock (`deadline.rs`: a call answered
//! as failed never counts later), the circuit breaker, and readiness (a probe run of the
//! script, not PING). Implements [`CounterStore`] and passes the same conformance suite as
//! the memory store, and the differential test against it.
//!
//! Single node: one script call per request, whatever the number of counters (one round
//! trip). Redis Cluster: one script per hash tag, concurrently, and a give-back where a
//! request rejected on one slot was counted on another (`cluster.rs`).

mod breaker;
mod cluster;
mod deadline;
mod script;
pub mod sentinel;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, IntoConnectionInfo, TlsCertificates};
use arc_swap::ArcSwapOption;

use crate::limiter::{BatchOutcome, CounterOp, CounterStore, StoreError, StoreFuture};
use breaker::Breaker;
use deadline::ServerClock;
use script::{Mode, Reply};

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

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(Arc<ArcSwapOption<ClusterConnection>>),
    Sentinel(Arc<sentinel::Follower>),
}

/// One connection handle of either kind, so calls are written once.
enum Live {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ::redis::aio::ConnectionLike for Live {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a ::redis::Cmd,
    ) -> ::redis::RedisFuture<'a, ::redis::Value> {
        match self {
            Live::Single(c) => c.req_packed_command(cmd),
            Live::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<::redis::Value>> {
        match self {
            Live::Single(c) => c.req_packed_commands(cmd, offset, count),
            Live::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Live::Single(c) => c.get_db(),
            Live::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis [`CounterStore`].
pub struct RedisStore {
    connection: Connection,
    timeout: Duration,
    key_prefix: String,
    breaker: Arc<Breaker>,
    server_clock: ServerClock,
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
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.timeout.max(Duration::from_millis(250))))
                    .set_response_timeout(Some(options.timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(200));
                Connection::Single(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?,
                )
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
                Connection::Cluster(slot)
            }
            RedisTarget::Sentinel(target) => Connection::Sentinel(
                sentinel::Follower::start(sentinel::SentinelOptions {
                    target: target.clone(),
                    password: options.password.clone(),
                    ca_pem: options.ca_pem.clone(),
                    timeout: options.timeout,
                })
                .map_err(|e| RedisConfigError(format!("{described}: {e}")))?,
            ),
        };
        let store = Arc::new(RedisStore {
            connection,
            timeout: options.timeout,
            key_prefix: options.key_prefix,
            breaker: Arc::new(Breaker::default()),
            server_clock: ServerClock::default(),
            described,
        });
        tokio::spawn(probe(Arc::downgrade(&store)));
        Ok(store)
    }

    /// A handle on the live connection (cheap: both kinds are multiplexed handles).
    fn live(&self) -> Result<Live, StoreError> {
        match &self.connection {
            Connection::Single(m) => Ok(Live::Single(m.clone())),
            Connection::Cluster(slot) => slot
                .load_full()
                .map(|c| Live::Cluster((*c).clone()))
                .ok_or_else(|| {
                    StoreError::Unavailable("not connected to the Redis Cluster yet".into())
                }),
            Connection::Sentinel(f) => f.live().map(Live::Single).ok_or_else(|| {
                StoreError::Unavailable("no master from the Redis Sentinels yet".into())
            }),
        }
    }

    /// The target, credentials redacted.
    pub fn described(&self) -> &str {
        &self.described
    }

    /// Runs `call` with the deadline, feeding the breaker.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, ::redis::RedisError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                return Ok(v);
            }
            Ok(Err(e)) => StoreError::Unavailable(e.to_string()),
            Err(_) => StoreError::Timeout,
        };
        self.breaker.failure(&result.to_string());
        Err(result)
    }

    fn open_circuit(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "circuit open after repeated failures (last: {})",
            self.breaker.last_error()
        ))
    }

    /// One check-and-count call, carrying its deadline on the server's clock; every reply
    /// teaches the store that clock's offset (`deadline.rs`).
    async fn run_script(&self, ops: &[&CounterOp], mode: Mode) -> Result<BatchOutcome, StoreError> {
        let deadline = self
            .server_clock
            .deadline(self.server_clock.local_ms(), self.timeout);
        let inv = script::invocation(&self.key_prefix, ops, mode, deadline);
        let mut conn = self.live()?;
        let reply: Vec<i64> = self
            .guarded(async move { inv.invoke_async(&mut conn).await })
            .await?;
        match script::parse_reply(&reply, ops.len()).map_err(StoreError::Unavailable)? {
            Reply::Ran(out) => {
                self.server_clock.observe(out.now_ms);
                Ok(out)
            }
            Reply::Expired { now_ms } => {
                // It sat in Redis past the moment the service gave up on it: answered as a
                // timeout, and nothing was counted.
                self.server_clock.observe(now_ms);
                self.breaker
                    .failure("a call reached Redis after its deadline and changed nothing");
                Err(StoreError::Timeout)
            }
        }
    }
}

/// While the circuit is open, pings Redis every [`PROBE_INTERVAL`]; the first answer closes
/// it. Ends when the store is dropped.
async fn probe(store: std::sync::Weak<RedisStore>) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(store) = store.upgrade() else { return };
        if store.breaker.is_open() {
            let _ = store.ping_now().await;
        }
    }
}

impl RedisStore {
    /// Readiness runs what requests need, not PING: the check-and-count script (EVALSHA,
    /// which an ACL may refuse; reloaded on NOSCRIPT) with a write that changes nothing
    /// (refused when Redis refuses writes, at `maxmemory` with `noeviction`).
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
                Connection::Single(_) | Connection::Sentinel(_) => {
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
        match self.connection {
            Connection::Single(_) => "redis",
            Connection::Cluster(_) => "redis-cluster",
            Connection::Sentinel(_) => "redis-sentinel",
        }
    }
}
