//! How long one decision takes in-process: resolving a descriptor into counters, and the
//! whole `should_rate_limit` on the memory store, for a request that touches three counters
//! (overall, a general prefix and a nested one, as in the seed's full example). Limits are
//! high so every request is admitted and counted: the slowest path.
//! Run with `cargo bench --bench decide`; figures are in the README.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use ironclad_rls::config::{Source, load_sources};
use ironclad_rls::descriptor::{Entry, RuleSet};
use ironclad_rls::limiter::{
    Descriptor, LimiterOptions, MemoryStore, RateLimiter, Request, SystemClock,
};

const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: kcse-endpoint
      shortname: kcserl
      overall_limit: 4000000000
      uri_prefixes:
        - {prefix: /auth, value: 4000000000}
        - {prefix: /auth/admin/realms/API-TEST/, value: 4000000000, anon_value: 100}
        - {prefix: /auth/realms/API-TEST/protocol/openid-connect/token, anon_value: 10}
        - {prefix: /auth/resources/, anon_value: 2000000}
";

fn rules() -> Arc<RuleSet> {
    let source = Source {
        name: "bench.yaml".into(),
        text: LIMITS.into(),
    };
    let loaded = load_sources(&[source]).expect("the bench limits load");
    Arc::new(RuleSet::compile(&loaded.config))
}

fn entries(consumer: &str) -> Vec<Entry> {
    [
        ("endpoint", "kcserl"),
        (
            "path",
            "/auth/admin/realms/API-TEST/users/42?briefRepresentation=true",
        ),
        ("consumer", consumer),
    ]
    .into_iter()
    .map(|(k, v)| Entry {
        key: k.into(),
        value: v.into(),
    })
    .collect()
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let e = entries("client-17");
    c.bench_function("resolve: 3 counters, nested prefixes", |b| {
        b.iter(|| black_box(rules.resolve("kcse", black_box(&e), None)))
    });

    // 10 000 distinct consumers, so the store holds a realistic number of live counters.
    let requests: Vec<Request> = (0..10_000)
        .map(|i| Request {
            domain: "kcse".into(),
            descriptors: vec![Descriptor {
                entries: entries(&format!("client-{i}")),
                ..Descriptor::default()
            }],
            hits_addend: 0,
        })
        .collect();
    let clock = Arc::new(SystemClock);
    let limiter = RateLimiter::new(
        rules,
        Arc::new(MemoryStore::new(clock.clone())),
        clock,
        LimiterOptions::default(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut i = 0usize;
    c.bench_function("should_rate_limit: memory store, 3 counters", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            black_box(
                rt.block_on(limiter.should_rate_limit(&requests[i]))
                    .expect("decided"),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
