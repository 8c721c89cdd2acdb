//! Coalescing (docs/counter-store.md §11): concurrent requests on a single node share one
//! call. Requests wait in one bounded queue; each connection has a few workers, and a free
//! worker takes every request waiting (up to [`MAX_BATCH_COUNTERS`] counters), sends them as
//! one FCALL and hands each request its own reply. A worker never waits for more requests:
//! it sends what is there as soon as it is free, so an idle service sends each request at
//! once, alone, and a busy one sends as many per call as arrived during the last call.
//!
//! Inside the call each request is decided and counted on its own, in arrival order
//! (`check_and_count.lua`), with its own deadline on the server's clock: one that the call
//! reaches too late changes nothing and is answered as expired, the others run.
//!
//! The connections and workers run on a thread of their own by default (a current-thread
//! runtime): a reply is read and handed out without waiting behind the request tasks of the
//! main runtime. Measured with compare.sh on the shared 2-core machine, side by side: about
//! 14 000 req/s with it against 10 000-11 000 without.
//!
//! A request's local deadline and its server deadline start at the same instant, when it
//! joins the queue: time spent queued counts against both, so a request answered as timed
//! out has also expired on the server. A full queue (Redis far slower than the traffic) is
//! a refusal at once ([`StoreError::QueueFull`], counted in
//! `ratelimit_backend_errors_total{kind="queue_full"}`, logged at most every 10 s, answered
//! per `--on-backend-error`), never an unbounded wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::sentinel::Follower;

use super::breaker::Breaker;
use super::deadline::ServerClock;
use super::script::{self, Encoded, Reply};
use crate::limiter::StoreError;

/// Requests that may wait for a worker. Past it the service refuses at once: that many
/// requests waiting means Redis is far behind, and more would only wait past their deadline.
pub const QUEUE_CAPACITY: usize = 4096;

/// Counters one call carries at most (a request larger than that goes alone): one call
/// stays short, so the requests behind it on Redis do not wait long.
pub const MAX_BATCH_COUNTERS: usize = 256;

/// How often, at most, a full queue is logged.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A request waiting for a call, and where its answer goes (here and on a cluster's tags,
/// `tags.rs`).
pub(super) struct Job {
    pub(super) encoded: Encoded,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// Where a [`Job`]'s answer arrives.
pub(super) type Answer = oneshot::Receiver<Result<Reply, StoreError>>;

impl Job {
    /// A job for `encoded`, and where its answer will arrive.
    pub(super) fn new(encoded: Encoded) -> (Job, Answer) {
        let (reply, rx) = oneshot::channel();
        (Job { encoded, reply }, rx)
    }

    /// Whether its caller gave up (timed out): then it is not sent, it would expire anyway.
    pub(super) fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Hands each job of a call its own reply, in order, or every one of them the call's error.
pub(super) fn answer_all(
    batch: impl IntoIterator<Item = Job>,
    replies: Result<Vec<Reply>, StoreError>,
) {
    match replies {
        Ok(replies) => {
            for (j, r) in batch.into_iter().zip(replies) {
                let _ = j.reply.send(Ok(r));
            }
        }
        Err(e) => {
            for j in batch {
                let _ = j.reply.send(Err(e.clone()));
            }
        }
    }
}

/// A job's answer, waited for at most `timeout` from now; `gone` says what was dropped when
/// the answer can never come.
pub(super) async fn wait(
    answer: Answer,
    timeout: Duration,
    gone: &str,
) -> Result<Reply, StoreError> {
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(StoreError::Unavailable(gone.into())),
        // Not a breaker failure by itself: the call reports its own failure once (a call
        // that timed out, or whose requests had all expired), so a burst of late replies
        // (one slow call carries many requests) counts as one failure, not as many, and
        // does not open the circuit on its own.
        Err(_) => Err(StoreError::Timeout),
    }
}

/// What the workers share with the store.
pub struct Shared {
    /// Deadline of a call (and of a request's wait).
    pub timeout: Duration,
    /// Fed by every call.
    pub breaker: Arc<Breaker>,
    /// Taught by every reply.
    pub clock: Arc<ServerClock>,
}

/// The queue in front of the workers.
pub struct Queue {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    started: Instant,
    /// Refusals since the last log line, and when (ms since `started`) it was written.
    refused: AtomicU64,
    logged_ms: AtomicU64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

/// Where a worker takes the connection of each call.
#[derive(Clone)]
pub enum Source {
    /// A connection of its own, to a single node.
    Fixed(ConnectionManager),
    /// The master the sentinels name now (`sentinel.rs`): after a failover, the next call
    /// goes to the new one.
    Sentinel(Arc<Follower>),
}

impl Source {
    fn connection(&self) -> Option<ConnectionManager> {
        match self {
            Source::Fixed(c) => Some(c.clone()),
            Source::Sentinel(f) => f.live(),
        }
    }
}

impl Queue {
    /// Starts `per_connection` workers on each connection `connect` opens, on a thread of
    /// their own when `own_thread` (else on the current runtime). Workers end when the queue
    /// is dropped. Must be called inside a Tokio runtime.
    pub fn start(
        connect: impl FnOnce() -> Result<Vec<Source>, ::redis::RedisError> + Send + 'static,
        per_connection: usize,
        own_thread: bool,
        shared: Arc<Shared>,
    ) -> Result<Queue, ::redis::RedisError> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        let spawn_all = {
            let shared = shared.clone();
            move |connections: Vec<Source>| {
                let mut handles = Vec::new();
                for conn in connections {
                    for _ in 0..per_connection.max(1) {
                        handles.push(tokio::spawn(worker(
                            rx.clone(),
                            conn.clone(),
                            shared.clone(),
                        )));
                    }
                }
                handles
            }
        };
        if own_thread {
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(::redis::RedisError::from)?;
            std::thread::Builder::new()
                .name("redis-io".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        match connect() {
                            Ok(c) => {
                                let _ = ready_tx.send(Ok(()));
                                for h in spawn_all(c) {
                                    let _ = h.await;
                                }
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                            }
                        }
                    });
                })
                .map_err(::redis::RedisError::from)?;
            ready_rx.recv().map_err(|_| {
                ::redis::RedisError::from(std::io::Error::other("the Redis I/O thread stopped"))
            })??;
        } else {
            spawn_all(connect()?);
        }
        Ok(Queue {
            tx,
            shared,
            started: Instant::now(),
            refused: AtomicU64::new(0),
            logged_ms: AtomicU64::new(0),
        })
    }

    /// Queues one request and waits for its reply, at most the timeout from now (the instant
    /// its server deadline was built from).
    pub async fn submit(&self, encoded: Encoded) -> Result<Reply, StoreError> {
        let (job, answer) = Job::new(encoded);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(self.refuse()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(StoreError::Unavailable(
                    "the Redis connection workers stopped".into(),
                ));
            }
        }
        wait(
            answer,
            self.shared.timeout,
            "the Redis connection workers stopped",
        )
        .await
    }

    /// A full queue: the refusal, logged at most every [`FULL_LOG_INTERVAL`].
    fn refuse(&self) -> StoreError {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.logged_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(FULL_LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= interval)
            && self
                .logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refused.store(0, Ordering::Relaxed);
            tracing::warn!(
                refused,
                queue = QUEUE_CAPACITY,
                "requests refused: {QUEUE_CAPACITY} requests already wait for Redis \
                 (answered per --on-backend-error; counted in \
                 ratelimit_backend_errors_total{{kind=\"queue_full\"}})"
            );
        }
        StoreError::QueueFull(format!("{QUEUE_CAPACITY} requests already wait for Redis"))
    }
}

/// Takes every request waiting (up to the cap), sends them as one call, hands out the
/// replies; again, until the queue is dropped.
async fn worker(rx: Arc<Mutex<mpsc::Receiver<Job>>>, source: Source, shared: Arc<Shared>) {
    let mut batch: Vec<Job> = Vec::new();
    loop {
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut counters = first.encoded.counters.max(1);
            batch.push(first);
            while counters < MAX_BATCH_COUNTERS {
                let Ok(job) = rx.try_recv() else { break };
                counters += job.encoded.counters.max(1);
                batch.push(job);
            }
        }
        batch.retain(|j| !j.abandoned());
        if batch.is_empty() {
            continue;
        }
        match source.connection() {
            Some(mut conn) => run(&mut conn, &mut batch, &shared).await,
            None => {
                let e = StoreError::Unavailable("no master from the Redis Sentinels yet".into());
                shared.breaker.failure(&e.to_string());
                answer_all(batch.drain(..), Err(e));
            }
        }
        batch.clear();
    }
}

/// One call for `batch`; every job gets its answer.
async fn run(conn: &mut ConnectionManager, batch: &mut Vec<Job>, shared: &Shared) {
    let cmd = script::fcall(batch.iter().map(|j| &j.encoded));
    let sent = Instant::now();
    let mut result = call(conn, &cmd, shared.timeout).await;
    if matches!(&result, Err(Failure::NoFunction)) {
        // A server that has not got the library (new, restarted without persistence, or
        // flushed): load it, and send the call again if there is time left.
        let load = ::redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(script::LIBRARY.code.as_str())
            .to_owned();
        let left = shared.timeout.saturating_sub(sent.elapsed());
        result = match tokio::time::timeout(left, load.query_async::<::redis::Value>(conn)).await {
            Ok(Ok(_)) => {
                let left = shared.timeout.saturating_sub(sent.elapsed());
                call(conn, &cmd, left).await
            }
            Ok(Err(e)) => Err(Failure::Store(StoreError::Unavailable(format!(
                "could not load the Redis Functions library: {e}"
            )))),
            Err(_) => Err(Failure::Store(StoreError::Timeout)),
        };
    }
    let values = match result {
        Ok(v) => v,
        Err(f) => {
            let e = match f {
                Failure::Store(e) => e,
                Failure::NoFunction => {
                    StoreError::Unavailable("Redis lost the Functions library again".into())
                }
            };
            shared.breaker.failure(&e.to_string());
            answer_all(batch.drain(..), Err(e));
            return;
        }
    };
    match script::parse_reply(&values, batch.iter().map(|j| &j.encoded)) {
        Ok((now_ms, replies)) => {
            // A reply later than the timeout is not a bound the estimate may trust
            // (deadline.rs).
            if sent.elapsed() <= shared.timeout {
                shared.clock.observe(now_ms);
            }
            // A reply, even one whose requests had all expired (they waited too long, here
            // or in Redis's input buffer), shows Redis answering: not a failure of Redis.
            // Each expired request is answered as timed out; the deadline already bounds
            // how long it waited.
            shared.breaker.success();
            answer_all(batch.drain(..), Ok(replies));
        }
        Err(msg) => {
            let e = StoreError::Unavailable(msg);
            shared.breaker.failure(&e.to_string());
            answer_all(batch.drain(..), Err(e));
        }
    }
}

/// Why a call failed.
enum Failure {
    /// The server has not got the library.
    NoFunction,
    Store(StoreError),
}

async fn call(
    conn: &mut ConnectionManager,
    cmd: &::redis::Cmd,
    timeout: Duration,
) -> Result<Vec<i64>, Failure> {
    match tokio::time::timeout(timeout, cmd.query_async::<Vec<i64>>(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.to_string().contains("Function not found") => Err(Failure::NoFunction),
        Ok(Err(e)) => Err(Failure::Store(StoreError::Unavailable(e.to_string()))),
        Err(_) => Err(Failure::Store(StoreError::Timeout)),
    }
}
