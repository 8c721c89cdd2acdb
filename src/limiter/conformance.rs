//! The store conformance suite: the behaviour every [`CounterStore`] must show, run against
//! the memory store here and against every other store in its own tests.
//!
//! Each check uses keys under `namespace`, so suites can share one backend. Checks only rely
//! on windows of an hour or more, so they hold with a real clock.

use std::sync::Arc;

use super::store::{CounterOp, CounterStore};
use crate::descriptor::{CounterKey, CounterScope};

fn op(namespace: &str, name: &str, limit: u64, hits: u64) -> CounterOp {
    CounterOp {
        key: CounterKey::new(namespace, name, &CounterScope::Overall),
        window_secs: 86_400,
        limit,
        hits,
        negative: false,
        enforce: true,
    }
}

/// Runs every check; panics with a description on the first failure.
pub async fn run_all(store: Arc<dyn CounterStore>, namespace: &str) {
    admits_exactly_the_limit(&*store, namespace).await;
    rejected_requests_consume_nothing(&*store, namespace).await;
    check_only_and_zero_limits(&*store, namespace).await;
    negative_hits_give_quota_back(&*store, namespace).await;
    shadow_counters_never_block(&*store, namespace).await;
    ops_sharing_a_key_add_up(&*store, namespace).await;
    concurrent_callers_get_exactly_the_limit(store, namespace).await;
}

async fn apply(
    store: &dyn CounterStore,
    ops: &[CounterOp],
    dry_run: bool,
) -> super::store::BatchOutcome {
    store.apply(ops, dry_run).await.expect("store call failed")
}

async fn admits_exactly_the_limit(store: &dyn CounterStore, ns: &str) {
    for i in 1..=3 {
        let out = apply(store, &[op(ns, "exact", 3, 1)], false).await;
        assert!(out.committed, "request {i} of 3 must be admitted");
        assert_eq!(out.states[0].after, i);
        assert!(out.states[0].reset_ms > 0 && out.states[0].reset_ms <= 86_400_000);
    }
    let out = apply(store, &[op(ns, "exact", 3, 1)], false).await;
    assert!(
        !out.committed && out.states[0].over,
        "the 4th request must be over limit"
    );
    assert_eq!((out.states[0].before, out.states[0].after), (3, 3));
    // A request larger than what is left is over limit as a whole.
    let out = apply(store, &[op(ns, "big", 10, 11)], false).await;
    assert!(!out.committed);
    let out = apply(store, &[op(ns, "big", 10, 10)], false).await;
    assert!(out.committed);
}

async fn rejected_requests_consume_nothing(store: &dyn CounterStore, ns: &str) {
    apply(store, &[op(ns, "full", 1, 1)], false).await;
    let out = apply(
        store,
        &[op(ns, "roomy", 100, 1), op(ns, "full", 1, 1)],
        false,
    )
    .await;
    assert!(!out.committed);
    assert!(!out.states[0].over && out.states[1].over);
    assert_eq!(
        out.states[0].after, 0,
        "the roomy counter must not be counted"
    );
    let out = apply(store, &[op(ns, "roomy", 100, 0)], false).await;
    assert_eq!(out.states[0].before, 0);
    // A dry run counts nothing either.
    let out = apply(store, &[op(ns, "dry", 100, 5)], true).await;
    assert!(!out.committed);
    assert_eq!(
        apply(store, &[op(ns, "dry", 100, 0)], false).await.states[0].before,
        0
    );
}

async fn check_only_and_zero_limits(store: &dyn CounterStore, ns: &str) {
    apply(store, &[op(ns, "at", 2, 2)], false).await;
    let out = apply(store, &[op(ns, "at", 2, 0)], false).await;
    assert!(
        out.committed && !out.states[0].over,
        "a check at exactly the limit is OK"
    );
    assert_eq!(out.states[0].after, 2);
    let out = apply(store, &[op(ns, "zero", 0, 0)], false).await;
    assert!(
        out.states[0].over && !out.committed,
        "a limit of 0 rejects even a check"
    );
}

async fn negative_hits_give_quota_back(store: &dyn CounterStore, ns: &str) {
    apply(store, &[op(ns, "neg", 10, 4)], false).await;
    let mut give_back = op(ns, "neg", 10, 3);
    give_back.negative = true;
    let out = apply(store, &[give_back.clone()], false).await;
    assert!(out.committed);
    assert_eq!((out.states[0].before, out.states[0].after), (4, 1));
    let out = apply(store, &[give_back], false).await;
    assert_eq!(out.states[0].after, 0, "never below zero");
}

async fn shadow_counters_never_block(store: &dyn CounterStore, ns: &str) {
    let mut shadow = op(ns, "shadow", 1, 1);
    shadow.enforce = false;
    apply(store, &[shadow.clone()], false).await;
    let out = apply(store, &[shadow.clone(), op(ns, "enforced", 10, 1)], false).await;
    assert!(out.committed && out.states[0].over);
    assert_eq!(
        out.states[0].after, 2,
        "shadow counters count past their limit"
    );
    assert_eq!(out.states[1].after, 1);
}

async fn ops_sharing_a_key_add_up(store: &dyn CounterStore, ns: &str) {
    let out = apply(
        store,
        &[op(ns, "twice", 3, 2), op(ns, "twice", 3, 2)],
        false,
    )
    .await;
    assert!(!out.committed, "2 + 2 > 3 even within one batch");
    assert!(out.states[1].over);
    let out = apply(
        store,
        &[op(ns, "twice", 4, 2), op(ns, "twice", 4, 2)],
        false,
    )
    .await;
    assert!(out.committed);
    assert_eq!(out.states[1].after, 4);
}

async fn concurrent_callers_get_exactly_the_limit(store: Arc<dyn CounterStore>, ns: &str) {
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            let ns = ns.to_owned();
            tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..20 {
                    let ops = [op(&ns, "race", 250, 1), op(&ns, "race-b", 1_000, 1)];
                    if store
                        .apply(&ops, false)
                        .await
                        .expect("store call failed")
                        .committed
                    {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task panicked");
    }
    assert_eq!(total, 250, "exactly the limit must be admitted");
    let out = apply(&*store, &[op(ns, "race-b", 1_000, 0)], false).await;
    assert_eq!(
        out.states[0].before, 250,
        "rejected requests consumed nothing"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{MemoryStore, SystemClock};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_store_conforms() {
        run_all(
            Arc::new(MemoryStore::new(Arc::new(SystemClock))),
            "conformance",
        )
        .await;
    }
}
