//! Coalescing on a Redis Cluster (docs/counter-store.md §11). The counters of one hash tag
//! live on one slot, so on one master, and one script call may carry several requests of
//! that tag. Up to [`CALLS_PER_TAG`] calls of a tag are on the wire at once; a request that
//! finds them all out waits, and the requests of that tag waiting when a call returns go
//! together in the next one. Nothing waits for more requests: the first request of a quiet
//! tag is sent at once, alone, and tags never wait for one another. So a hot tag (a busy
//! endpoint, whose consumers all share `{domain:endpoint}`) costs its master a call per round
//! trip instead of one per request, while requests spread over many tags go out as before.
//!
//! Inside a call each request is decided and counted on its own, in arrival order, with its
//! own deadline on the server's clock, exactly as on a single node (`batch.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::batch::{self, Answer, Job, MAX_BATCH_COUNTERS, QUEUE_CAPACITY};
use super::breaker::Breaker;
use super::deadline::ServerClock;
use super::script::{self, Encoded, Reply};
use crate::limiter::StoreError;
use ::redis::cluster_async::ClusterConnection;
use arc_swap::ArcSwapOption;

/// Calls of one tag on the wire at once: two, as a single node's connection carries
/// (`DEFAULT_CALLS_PER_CONNECTION`), so the next call is already sent when one returns.
pub const CALLS_PER_TAG: usize = 2;

/// A tag with calls on the wire.
#[derive(Default)]
struct Tag {
    calls: usize,
    waiting: Vec<Job>,
}

/// The cluster connection and its calls, per tag.
pub struct Calls {
    /// The connection, once the cluster has answered.
    conn: Arc<ArcSwapOption<ClusterConnection>>,
    timeout: Duration,
    breaker: Arc<Breaker>,
    clock: Arc<ServerClock>,
    /// Tags with at least one call on the wire.
    tags: Mutex<HashMap<String, Tag>>,
}

/// What a request does on arrival.
enum Turn {
    /// Send a call now, this request first.
    Lead(Encoded),
    /// Wait for the answer of a later call.
    Follow(Answer),
}

impl Calls {
    /// Calls over `conn`, each within `timeout`, feeding `breaker` and `clock`.
    pub fn new(
        conn: Arc<ArcSwapOption<ClusterConnection>>,
        timeout: Duration,
        breaker: Arc<Breaker>,
        clock: Arc<ServerClock>,
    ) -> Self {
        Calls {
            conn,
            timeout,
            breaker,
            clock,
            tags: Mutex::new(HashMap::new()),
        }
    }

    fn tags(&self) -> MutexGuard<'_, HashMap<String, Tag>> {
        // Nothing under the lock can panic half-way through a change.
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle on the cluster connection (cheap: a multiplexed handle).
    fn live(&self) -> Result<ClusterConnection, StoreError> {
        self.conn
            .load_full()
            .map(|c| (*c).clone())
            .ok_or_else(|| StoreError::Unavailable("not connected to the Redis Cluster yet".into()))
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

    /// Runs `inv` on the cluster within the deadline, feeding the breaker.
    pub async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        inv: ::redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.live()?;
        self.guarded(async move { inv.invoke_async(&mut conn).await })
            .await
    }

    /// One script call for `batch` (all of one tag, or a probe): the replies in order.
    async fn call(&self, batch: &[&Encoded]) -> Result<Vec<Reply>, StoreError> {
        let values: Vec<i64> = self
            .invoke(script::invocation(batch.iter().copied()))
            .await?;
        let (now_ms, replies) =
            script::parse_reply(&values, batch.iter().copied()).map_err(StoreError::Unavailable)?;
        self.clock.observe(now_ms);
        Ok(replies)
    }

    /// One script call for one request: its reply.
    pub async fn call_one(&self, encoded: &Encoded) -> Result<Reply, StoreError> {
        self.call(&[encoded])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Unavailable("the script's reply holds no request".into()))
    }

    /// One request whose counters all carry `tag`: sent now when its tag has a call to
    /// spare, else with the tag's next call.
    pub async fn submit(
        self: &Arc<Self>,
        tag: &str,
        encoded: Encoded,
    ) -> Result<Reply, StoreError> {
        let turn = {
            let mut tags = self.tags();
            let entry = tags.entry(tag.to_owned()).or_default();
            if entry.calls < CALLS_PER_TAG {
                entry.calls += 1;
                Turn::Lead(encoded)
            } else if entry.waiting.len() >= QUEUE_CAPACITY {
                return Err(StoreError::QueueFull(format!(
                    "{QUEUE_CAPACITY} requests already wait for one Redis Cluster hash tag"
                )));
            } else {
                let (job, answer) = Job::new(encoded);
                entry.waiting.push(job);
                Turn::Follow(answer)
            }
        };
        match turn {
            Turn::Lead(encoded) => {
                // Dropped however this ends (answered, failed, or the caller gone): the
                // requests that queued behind this call are then sent.
                let _next = Next {
                    calls: self.clone(),
                    tag: tag.to_owned(),
                };
                self.call_one(&encoded).await
            }
            Turn::Follow(answer) => {
                let gone = "the Redis Cluster call this request waited for was dropped";
                batch::wait(answer, self.timeout, gone).await
            }
        }
    }

    /// The next batch of `tag` (its waiting requests up to [`MAX_BATCH_COUNTERS`]
    /// counters), or `None` after giving the call back when nothing waits.
    fn next_batch(&self, tag: &str) -> Option<Vec<Job>> {
        let mut tags = self.tags();
        let entry = tags.get_mut(tag)?;
        entry.waiting.retain(|j| !j.abandoned());
        if entry.waiting.is_empty() {
            give_back(&mut tags, tag);
            return None;
        }
        let mut counters = 0;
        let take = entry
            .waiting
            .iter()
            .position(|j| {
                counters += j.encoded.counters.max(1);
                counters > MAX_BATCH_COUNTERS
            })
            .unwrap_or(entry.waiting.len())
            .max(1);
        Some(entry.waiting.drain(..take).collect())
    }
}

/// Sends the requests of `tag` that wait, batch after batch, on the call a leader gives up.
async fn follow_on(calls: Arc<Calls>, tag: String) {
    while let Some(batch) = calls.next_batch(&tag) {
        let encoded: Vec<&Encoded> = batch.iter().map(|j| &j.encoded).collect();
        let replies = calls.call(&encoded).await;
        batch::answer_all(batch, replies);
    }
}

/// Gives one call slot of `tag` back; the tag is forgotten when it has none left.
fn give_back(tags: &mut HashMap<String, Tag>, tag: &str) {
    if let Some(entry) = tags.get_mut(tag) {
        entry.calls = entry.calls.saturating_sub(1);
        if entry.calls == 0 {
            tags.remove(tag);
        }
    }
}

/// A leader's call slot, handed on when it is dropped.
struct Next {
    calls: Arc<Calls>,
    tag: String,
}

impl Drop for Next {
    fn drop(&mut self) {
        let runtime = tokio::runtime::Handle::try_current().ok();
        {
            let mut tags = self.calls.tags();
            let Some(entry) = tags.get_mut(&self.tag) else {
                return;
            };
            // Without a runtime (shutting down) the slot is given back, and requests left
            // waiting are answered by their dropped senders.
            if entry.waiting.is_empty() || runtime.is_none() {
                give_back(&mut tags, &self.tag);
                return;
            }
        }
        // Requests wait: this call slot carries them on, on a task of its own, since the
        // leader's caller has its answer.
        if let Some(rt) = runtime {
            rt.spawn(follow_on(self.calls.clone(), std::mem::take(&mut self.tag)));
        }
    }
}
