//! Redis Cluster: a request whose counters span hash slots.
//!
//! Counters are grouped by hash tag (`{domain:endpoint}`): every key of a group is on one
//! slot, so one check-and-count script sees them all, and the groups run concurrently.
//! Each group is atomic on its own; when some groups counted and another was over limit (or
//! failed), the groups that counted get their hits back with the give-back script (an exact
//! inverse per algorithm), so a rejected request still consumes nothing. Between the two
//! calls other callers may see those hits: the README's Redis Cluster section says what
//! atomicity holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use arc_swap::ArcSwapOption;
use futures_util::future::join_all;

use super::script::{self, Mode};
use super::{PROBE_INTERVAL, RedisStore};
use crate::limiter::{BatchOutcome, CounterOp, StoreError};

impl RedisStore {
    /// One script per hash tag, concurrently; a request rejected (or failed) on one slot is
    /// given back on the others.
    pub(super) async fn apply_cluster(
        &self,
        ops: &[CounterOp],
        dry_run: bool,
    ) -> Result<BatchOutcome, StoreError> {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            groups.entry(hash_tag(op.key.as_str())).or_default().push(i);
        }
        if groups.len() == 1 {
            let all: Vec<&CounterOp> = ops.iter().collect();
            return self.run_script(&all, Mode::of(dry_run)).await;
        }
        let groups: Vec<Vec<usize>> = groups.into_values().collect();
        // Quota ops block together, across slots (docs/envoy-compat.md "Quota mode"): each
        // slot counts them without letting them block (enforce off, quota on: counted even
        // when the slot's request is blocked), and the request decides here.
        let sent: Vec<CounterOp> = ops
            .iter()
            .map(|op| CounterOp {
                enforce: op.enforce && !op.quota,
                ..op.clone()
            })
            .collect();
        let results = join_all(groups.iter().map(|idx| {
            let group: Vec<&CounterOp> = idx.iter().map(|&i| &sent[i]).collect();
            async move { self.run_script(&group, Mode::of(dry_run)).await }
        }))
        .await;

        let mut states = vec![None; ops.len()];
        let mut now_ms = 0;
        let mut all_committed = !dry_run;
        let mut failure = None;
        for (idx, r) in groups.iter().zip(&results) {
            match r {
                Ok(out) => {
                    now_ms = now_ms.max(out.now_ms);
                    all_committed &= out.committed;
                    for (&i, s) in idx.iter().zip(&out.states) {
                        states[i] = Some(*s);
                    }
                }
                Err(e) => failure = Some(e.clone()),
            }
        }
        let quotas: Vec<bool> = ops
            .iter()
            .zip(&states)
            .filter(|(op, _)| op.quota)
            .map(|(op, s)| op.enforce && s.is_some_and(|s| s.over))
            .collect();
        let quota_blocked = !quotas.is_empty() && quotas.iter().all(|&over| over);
        if failure.is_some() || !all_committed || quota_blocked {
            self.give_back(&groups, &results, ops).await;
            for (s, op) in states.iter_mut().zip(ops) {
                // Quota ops stay counted; the others as if nothing had been counted: what is
                // left before this request.
                if let Some(s) = s.as_mut().filter(|_| !op.quota) {
                    s.remaining = (s.remaining + s.after).saturating_sub(s.before);
                    s.after = s.before;
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(BatchOutcome {
            now_ms,
            committed: all_committed && !quota_blocked,
            states: states.into_iter().map(Option::unwrap_or_default).collect(),
        })
    }

    /// Undoes what the groups that counted did. Hits taken go back through the give-back
    /// script at the time they were taken (a fixed window's count goes down in the window
    /// the hits went into, a sliding log loses the entries logged at that call's time, a
    /// bucket gets back the tokens it has not refilled since, never more, so it never runs
    /// ahead of its real history). Hits given back are taken again, at now, without a limit
    /// (as a shadow-mode counter counts).
    async fn give_back(
        &self,
        groups: &[Vec<usize>],
        results: &[Result<BatchOutcome, StoreError>],
        ops: &[CounterOp],
    ) {
        for (idx, r) in groups.iter().zip(results) {
            let Ok(out) = r else { continue };
            if !out.committed {
                continue;
            }
            // Quota ops stay counted: they count whether or not the request is blocked.
            let taken: Vec<&CounterOp> = idx
                .iter()
                .map(|&i| &ops[i])
                .filter(|op| !op.negative && !op.quota)
                .collect();
            let retaken: Vec<CounterOp> = idx
                .iter()
                .map(|&i| &ops[i])
                .filter(|op| op.negative && !op.quota)
                .map(|op| CounterOp {
                    negative: false,
                    enforce: false,
                    quota: false,
                    ..op.clone()
                })
                .collect();
            if !taken.is_empty() {
                let inv = script::give_back_invocation(&self.key_prefix, &taken, out.now_ms);
                self.undo(inv).await;
            }
            if !retaken.is_empty() {
                let retaken: Vec<&CounterOp> = retaken.iter().collect();
                // No deadline: an undo is right whenever it runs.
                let encoded = script::encode(&self.key_prefix, &retaken, Mode::Count, None);
                let inv = script::invocation(std::iter::once(&encoded));
                self.undo(inv).await;
            }
        }
    }

    /// Runs one undo call; a failure is logged (the request is answered already).
    async fn undo(&self, inv: ::redis::ScriptInvocation<'_>) {
        let result: Result<::redis::Value, StoreError> = match self.cluster() {
            Ok(calls) => calls.invoke(inv).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not give back the hits of a rejected cross-slot request");
        }
    }
}

/// The Redis Cluster hash tag of a key: the text between its first `{` and the next `}`.
pub(super) fn hash_tag(key: &str) -> &str {
    key.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or(key, |(tag, _)| tag)
}

/// Connects to the cluster in the background (the service starts while it is down) and
/// publishes the connection in `slot` once it answers.
pub(super) async fn connect(
    client: ClusterClient,
    slot: Arc<ArcSwapOption<ClusterConnection>>,
    described: String,
) {
    let mut logged = false;
    loop {
        match client.get_async_connection().await {
            Ok(conn) => {
                slot.store(Some(Arc::new(conn)));
                tracing::info!(redis = %described, "connected to the Redis Cluster");
                return;
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(redis = %described, error = %e, "cannot reach the Redis Cluster yet; retrying");
                    logged = true;
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags() {
        assert_eq!(hash_tag("rls:{kcse:ep}:p:/a:c:x"), "kcse:ep");
        assert_eq!(hash_tag("{a}"), "a");
        assert_eq!(hash_tag("plain"), "plain");
    }
}
