//! The counter store contract: one atomic check-then-count over all of a request's counters.

use std::future::Future;
use std::pin::Pin;

use crate::config::Algorithm;
use crate::descriptor::CounterKey;

/// A boxed future, so stores can be chosen at run time (`Arc<dyn CounterStore>`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One counter of a request.
#[derive(Debug, Clone)]
pub struct CounterOp {
    /// Which counter.
    pub key: CounterKey,
    /// Window length, seconds (`unit × unit_multiplier`). Fixed windows are aligned to the
    /// epoch; a sliding window ends now; a bucket refills `limit` tokens per window.
    pub window_secs: u64,
    /// How the counter counts. Part of the counter's identity in the store, with the window:
    /// changing a rule's algorithm never reads another algorithm's state.
    pub algorithm: Algorithm,
    /// Hits allowed per window. 0 rejects every request, even a check-only one.
    pub limit: u64,
    /// A token bucket's capacity (ignored by the other algorithms).
    pub capacity: u64,
    /// Hits to add (0: check only).
    pub hits: u64,
    /// Give `hits` back instead of taking them: a fixed window's count never goes below
    /// zero, a sliding window drops its newest logged hits, a bucket gets tokens back up to
    /// its capacity.
    pub negative: bool,
    /// When false (shadow mode) this counter being over limit does not stop the others
    /// from being counted.
    pub enforce: bool,
    /// Quota mode (docs/envoy-compat.md §4): this counter being over limit does not block
    /// the request by itself; the request is blocked only if an enforcing non-quota op is
    /// over, or if every quota op of it is over (a shadow quota op never is: it passed). A
    /// quota op counts its hits whether or not the request is blocked (past its limit too,
    /// stopping at [`MAX_EXACT`] as a shadow count does), except on a dry run.
    pub quota: bool,
}

/// Lua numbers are doubles: the Redis store counts exactly below 2^53, and both stores bound
/// what they count by it so they give the same answers.
pub const MAX_EXACT: u64 = (1 << 53) - 1;

impl CounterOp {
    /// The window in ms, at most [`MAX_EXACT`] (285 000 years: only a limit override can
    /// ask for more).
    pub fn window_ms(&self) -> u64 {
        self.window_secs.max(1).saturating_mul(1000).min(MAX_EXACT)
    }

    /// A token bucket's capacity, bounded so that `capacity × window ms` (its state when
    /// empty, docs/algorithms.md) stays below 2^53. The loader refuses a `burst` past it; a
    /// limit override (whose limit sizes the bucket, over the override's window) is held to
    /// it here: a bucket of more than 104 million tokens per day holds 104 million.
    pub fn bucket_capacity(&self) -> u64 {
        self.capacity.min(MAX_EXACT / self.window_ms())
    }
}

/// A counter's state as one batch saw it.
///
/// `before` and `after` are hits counted against the limit: a fixed window's count, the hits
/// a sliding window holds in its last window length, the tokens a bucket is missing (capacity
/// minus whole tokens left).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterState {
    /// The count before this request (including earlier counters of the same batch that
    /// share its key).
    pub before: u64,
    /// The count after this request: `before` when the batch was not committed.
    pub after: u64,
    /// `limit == 0`, or the request's hits do not fit (a positive request).
    pub over: bool,
    /// Fixed window: ms until the window ends. Sliding window: over, ms until the request
    /// could be admitted; else until the oldest counted hit leaves the window (0 for an
    /// empty log). Bucket: over, ms until the request's tokens are there; else until the
    /// next token (0 for a full bucket).
    pub reset_ms: u64,
    /// Hits that could be admitted now, after this request (a bucket's whole tokens).
    pub remaining: u64,
}

/// What a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The store's clock when it decided (the Redis store uses the server's clock).
    pub now_ms: u64,
    /// True when every counter was incremented (the batch was not blocked and not a dry
    /// run). A blocked batch still counts its quota ops: their states show it.
    pub committed: bool,
    /// One state per op, in op order.
    pub states: Vec<CounterState>,
}

/// Why a store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend did not answer in time (or, on Redis, the call reached the server after
    /// its deadline and changed nothing: docs/counter-store.md §10).
    #[error("counter store timed out")]
    Timeout,
    /// The backend is unreachable or refused.
    #[error("counter store unavailable: {0}")]
    Unavailable(String),
    /// The store holds as many counters as it may (`--memory-max-counters`) and the request
    /// needed a new one; no counter is evicted to make room.
    #[error("counter store full: {0}")]
    Capacity(String),
    /// The queue of requests waiting for a Redis connection is full (docs/counter-store.md,
    /// "Coalescing"): refused at once, without waiting, and counted.
    #[error("counter store overloaded: {0}")]
    QueueFull(String),
}

impl StoreError {
    /// The `kind` label of `ratelimit_backend_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Capacity(_) => "capacity",
            StoreError::QueueFull(_) => "queue_full",
        }
    }
}

/// Where counters live. Implementations must make [`CounterStore::apply`] atomic with
/// respect to every other call, on every replica sharing the store.
pub trait CounterStore: Send + Sync + std::fmt::Debug {
    /// Checks every op; if the batch is not blocked (no enforcing non-quota op is over its
    /// limit, and not every enforcing quota op is over) and `dry_run` is false, increments
    /// (or, for negative ops, decrements) every counter, creating it with its expiry;
    /// otherwise changes nothing, except that a blocked batch still counts its quota ops
    /// (not on a dry run). Ops sharing a key and window are applied in order within the
    /// batch.
    fn apply<'a>(&'a self, ops: &'a [CounterOp], dry_run: bool) -> StoreFuture<'a, BatchOutcome>;

    /// Answers when the store is usable (readiness).
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// A short name for logs and `/config`.
    fn kind(&self) -> &'static str;

    /// For a store with a counter bound (the memory store's `--memory-max-counters`): the
    /// counters held now and the bound, so an operator sees the bound coming. `None` for a
    /// store whose memory lives elsewhere (Redis).
    fn occupancy(&self) -> Option<(usize, usize)> {
        None
    }
}
