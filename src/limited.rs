//! Who is being limited (docs/observability.md §3): a per-replica, fixed-size summary of the
//! counters that rejected the most hits over the last few minutes, served as JSON at
//! `GET /limited` and merged across replicas by `ironclad-rls top`.
//!
//! Why not metric labels: the subject of a rejection is a consumer id or a descriptor value,
//! which is request data without a bound; as a label it would grow the metrics without end.
//! Here it lives in a table of at most [`Limited::capacity`] rows that forgets what has not
//! rejected for [`WINDOW_MS`].
//!
//! Each row counts its rejected hits in [`BUCKETS`] time buckets, so the total it reports is
//! a sliding sum over the window rather than a count since start-up. When the table is full,
//! a new counter takes the place of a row with nothing left in its window, or else of the row
//! with the fewest rejected hits (the oldest of those): heavy hitters stay while a stream of
//! one-off ids competes for the bottom rows only. The view is per replica and approximate
//! in that one way: a counter evicted and seen again starts from zero.
//!
//! Cost: a decision with no counter over its limit takes no lock and allocates nothing
//! ([`Limited::record`] returns at the first look); a rejection takes one short lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::descriptor::{ANONYMOUS, CounterRule};
use crate::limiter::Decision;

/// How far back the summary looks (5 minutes).
pub const WINDOW_MS: u64 = 5 * 60 * 1000;
/// Buckets of the window: the sum slides by one bucket (1 minute) at a time.
pub const BUCKETS: usize = 5;
/// Rows kept by default.
pub const DEFAULT_CAPACITY: usize = 128;

const BUCKET_MS: u64 = WINDOW_MS / BUCKETS as u64;

/// The subject written for an endpoint's overall counter, which belongs to no consumer.
pub const OVERALL: &str = "_overall";

/// The bounded top-k of recently rejecting counters.
#[derive(Debug)]
pub struct Limited {
    capacity: usize,
    rows: Mutex<Rows>,
}

#[derive(Debug, Default)]
struct Rows {
    /// Counter key → index in `slots`.
    index: HashMap<Arc<str>, usize>,
    slots: Vec<Slot>,
}

#[derive(Debug)]
struct Slot {
    key: Arc<str>,
    domain: Arc<str>,
    rule: Arc<str>,
    subject: Arc<str>,
    shadow: bool,
    /// Rejected hits per bucket; `buckets[b % BUCKETS]` holds bucket number `b`.
    buckets: [u64; BUCKETS],
    /// The bucket number (`now_ms / BUCKET_MS`) of the newest write.
    newest: u64,
    last_ms: u64,
}

impl Slot {
    /// Rejected hits in the window ending at bucket `now_bucket`.
    fn total(&self, now_bucket: u64) -> u64 {
        if now_bucket >= self.newest + BUCKETS as u64 {
            return 0;
        }
        // Buckets older than the window still hold counts until overwritten; skip them.
        (0..BUCKETS as u64)
            .filter(|age| self.newest >= *age && self.newest - age + (BUCKETS as u64) > now_bucket)
            .map(|age| self.buckets[((self.newest - age) % BUCKETS as u64) as usize])
            .sum()
    }

    fn add(&mut self, hits: u64, now_ms: u64) {
        let bucket = now_ms / BUCKET_MS;
        if bucket > self.newest {
            // Clear the buckets skipped since the last write (all of them after a long quiet).
            let gap = (bucket - self.newest).min(BUCKETS as u64);
            for b in 0..gap {
                self.buckets[((bucket - b) % BUCKETS as u64) as usize] = 0;
            }
            self.newest = bucket;
        }
        // A write stamped in an older bucket (a clock step back) lands in the newest one.
        self.buckets[(self.newest % BUCKETS as u64) as usize] += hits;
        self.last_ms = self.last_ms.max(now_ms);
    }
}

/// One row of `GET /limited`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitedCounter {
    /// The request's domain.
    pub domain: String,
    /// The rule's name (as in `current_limit.name` and the `rule` metric label).
    pub rule: String,
    /// Who: the consumer id, `_anonymous`, `_overall`, or the descriptor's entries.
    pub subject: String,
    /// The counter key (docs/counter-store.md), which tells counters apart exactly.
    pub key: String,
    /// Hits rejected in the window (over limit but allowed, under shadow mode).
    pub rejected: u64,
    /// Unix time in ms of the last rejection.
    pub last_ms: u64,
    /// Over limit but allowed: the rule or the service is in shadow mode.
    pub shadow: bool,
}

/// The body of `GET /limited`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitedView {
    /// The replica's clock when it answered (Unix ms).
    pub now_ms: u64,
    /// How far back `rejected` looks, in seconds.
    pub window_secs: u64,
    /// Most rows the replica keeps.
    pub capacity: usize,
    /// The rows, most rejected hits first, then the most recent.
    pub counters: Vec<LimitedCounter>,
}

impl Default for Limited {
    fn default() -> Self {
        Limited::new(DEFAULT_CAPACITY)
    }
}

impl Limited {
    /// An empty summary of at most `capacity` rows (at least 1).
    pub fn new(capacity: usize) -> Self {
        Limited {
            capacity: capacity.max(1),
            rows: Mutex::new(Rows::default()),
        }
    }

    /// Most rows kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records the counters of `decision` that were over their limit, at Unix time
    /// `now_ms()` (only read when there is something to record). `global_shadow` marks
    /// rejections that the service's shadow mode let through.
    pub fn record(
        &self,
        domain: &str,
        decision: &Decision,
        global_shadow: bool,
        now_ms: impl FnOnce() -> u64,
    ) {
        // The common case, every admitted request, stops here: no clock, no lock, no
        // allocation.
        if !decision.counters.iter().any(|c| c.state.over && c.hits > 0) {
            return;
        }
        let now_ms = now_ms();
        let Ok(mut rows) = self.rows.lock() else {
            // A panic while holding the lock left it poisoned; the summary is only advice,
            // so it stops recording rather than fail requests.
            return;
        };
        for c in decision
            .counters
            .iter()
            .filter(|c| c.state.over && c.hits > 0)
        {
            rows.add(
                self.capacity,
                domain,
                &c.rule,
                c.hits,
                c.rule.shadow || global_shadow,
                now_ms,
            );
        }
    }

    /// The rows with rejections in the window ending at `now_ms`, most rejected first;
    /// at most `limit` of them.
    pub fn view(&self, now_ms: u64, limit: usize) -> LimitedView {
        let now_bucket = now_ms / BUCKET_MS;
        let mut counters: Vec<LimitedCounter> = match self.rows.lock() {
            Ok(rows) => rows
                .slots
                .iter()
                .filter_map(|s| {
                    let rejected = s.total(now_bucket);
                    (rejected > 0).then(|| LimitedCounter {
                        domain: s.domain.to_string(),
                        rule: s.rule.to_string(),
                        subject: s.subject.to_string(),
                        key: s.key.to_string(),
                        rejected,
                        last_ms: s.last_ms,
                        shadow: s.shadow,
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        sort_rows(&mut counters);
        counters.truncate(limit);
        LimitedView {
            now_ms,
            window_secs: WINDOW_MS / 1000,
            capacity: self.capacity,
            counters,
        }
    }
}

/// Orders rows as `/limited` and `top` show them: most rejected hits first, then the most
/// recent, then by key so the order is total.
pub fn sort_rows(rows: &mut [LimitedCounter]) {
    rows.sort_by(|a, b| {
        b.rejected
            .cmp(&a.rejected)
            .then(b.last_ms.cmp(&a.last_ms))
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// Merges several replicas' views (`top`): rows of one counter add their rejected hits
/// (each replica counts the requests it decided) and keep the latest time.
pub fn merge(views: &[LimitedView]) -> Vec<LimitedCounter> {
    let mut by_key: HashMap<(&str, &str), LimitedCounter> = HashMap::new();
    for row in views.iter().flat_map(|v| &v.counters) {
        by_key
            .entry((&row.domain, &row.key))
            .and_modify(|m| {
                m.rejected += row.rejected;
                m.last_ms = m.last_ms.max(row.last_ms);
                m.shadow &= row.shadow;
            })
            .or_insert_with(|| row.clone());
    }
    let mut rows: Vec<LimitedCounter> = by_key.into_values().collect();
    sort_rows(&mut rows);
    rows
}

impl Rows {
    fn add(
        &mut self,
        capacity: usize,
        domain: &str,
        rule: &CounterRule,
        hits: u64,
        shadow: bool,
        now_ms: u64,
    ) {
        let key = rule.key.as_str();
        if let Some(&i) = self.index.get(key) {
            let slot = &mut self.slots[i];
            slot.add(hits, now_ms);
            slot.shadow = shadow;
            return;
        }
        let mut slot = Slot {
            key: key.into(),
            domain: domain.into(),
            rule: rule.name.clone(),
            subject: subject_of(rule).into(),
            shadow,
            buckets: [0; BUCKETS],
            newest: now_ms / BUCKET_MS,
            last_ms: now_ms,
        };
        slot.add(hits, now_ms);
        if self.slots.len() < capacity {
            self.index.insert(slot.key.clone(), self.slots.len());
            self.slots.push(slot);
            return;
        }
        let now_bucket = now_ms / BUCKET_MS;
        // The victim: nothing left in the window, else the fewest rejected, the oldest of those.
        let Some(victim) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (s.total(now_bucket), s.last_ms))
            .map(|(i, _)| i)
        else {
            return;
        };
        self.index.remove(&self.slots[victim].key);
        self.index.insert(slot.key.clone(), victim);
        self.slots[victim] = slot;
    }
}

/// Who a counter belongs to, for people: the consumer, the anonymous share, the endpoint as
/// a whole, or (envoyproxy/ratelimit format) the descriptor's entries as the key spells them.
fn subject_of(rule: &CounterRule) -> String {
    match (&rule.labels.consumer, &rule.labels.prefix) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => ANONYMOUS.to_owned(),
        (None, None) => {
            let key = rule.key.as_str();
            match key.strip_suffix("}:d") {
                // `{domain:k=v:k=v}:d` → `k=v:k=v`
                Some(inner) => inner
                    .trim_start_matches('{')
                    .split_once(':')
                    .map_or(inner, |(_, entries)| entries)
                    .to_owned(),
                None => OVERALL.to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Source, load_sources};
    use crate::descriptor::{Entry, RuleSet};
    use crate::limiter::{Code, CounterOutcome, CounterState};

    fn rules() -> RuleSet {
        let text = "kcse_rate_limits:\n  endpoints:\n    - name: n\n      shortname: s\n      overall_limit: 100\n      uri_prefixes: [{prefix: /a, value: 5, anon_value: 2}]\n";
        let loaded = load_sources(&[Source {
            name: "t.yaml".into(),
            text: text.into(),
        }])
        .unwrap();
        RuleSet::compile(&loaded.config)
    }

    fn rule(rs: &RuleSet, consumer: &str, overall: bool) -> CounterRule {
        let entries =
            [("endpoint", "s"), ("path", "/a/x"), ("consumer", consumer)].map(|(k, v)| Entry {
                key: k.into(),
                value: v.into(),
            });
        let r = rs.resolve("kcse", &entries, None);
        r.counters[usize::from(!overall)].clone()
    }

    fn decision(rules: &[(CounterRule, bool)], hits: u64) -> Decision {
        Decision {
            overall_code: Code::OverLimit,
            statuses: Vec::new(),
            counters: rules
                .iter()
                .map(|(rule, over)| CounterOutcome {
                    descriptor: 0,
                    rule: rule.clone(),
                    hits,
                    state: CounterState {
                        before: 5,
                        after: 5,
                        over: *over,
                        reset_ms: 1000,
                        remaining: 0,
                    },
                })
                .collect(),
            unmatched: Vec::new(),
            committed: false,
            dynamic_metadata: None,
        }
    }

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn ranks_by_rejected_hits_then_recency() {
        let rs = rules();
        let l = Limited::new(8);
        for _ in 0..3 {
            l.record(
                "kcse",
                &decision(&[(rule(&rs, "a", false), true)], 1),
                false,
                || T0,
            );
        }
        l.record(
            "kcse",
            &decision(&[(rule(&rs, "b", false), true)], 1),
            false,
            || T0 + 5,
        );
        l.record(
            "kcse",
            &decision(&[(rule(&rs, "c", false), true)], 1),
            false,
            || T0 + 9,
        );
        // Admitted counters are not listed.
        l.record(
            "kcse",
            &decision(&[(rule(&rs, "d", false), false)], 1),
            false,
            || T0,
        );
        let v = l.view(T0 + 10, 10);
        let who: Vec<(&str, u64)> = v
            .counters
            .iter()
            .map(|c| (c.subject.as_str(), c.rejected))
            .collect();
        assert_eq!(who, vec![("a", 3), ("c", 1), ("b", 1)]);
        assert_eq!(v.counters[0].rule, "s /a client");
        assert_eq!(v.counters[0].last_ms, T0);
        assert_eq!(l.view(T0 + 10, 1).counters.len(), 1);
    }

    #[test]
    fn subjects_name_anonymous_and_overall() {
        let rs = rules();
        let l = Limited::new(8);
        let d = decision(
            &[(rule(&rs, "", true), true), (rule(&rs, "", false), true)],
            2,
        );
        l.record("kcse", &d, true, || T0);
        let mut subjects: Vec<String> = l
            .view(T0, 10)
            .counters
            .into_iter()
            .inspect(|c| assert!(c.shadow && c.rejected == 2))
            .map(|c| c.subject)
            .collect();
        subjects.sort();
        assert_eq!(subjects, vec![ANONYMOUS, OVERALL]);
    }

    #[test]
    fn the_window_slides_and_forgets() {
        let rs = rules();
        let l = Limited::new(8);
        let a = decision(&[(rule(&rs, "a", false), true)], 1);
        l.record("kcse", &a, false, || T0);
        l.record("kcse", &a, false, || T0 + BUCKET_MS);
        l.record("kcse", &a, false, || T0 + 2 * BUCKET_MS);
        assert_eq!(l.view(T0 + 2 * BUCKET_MS, 10).counters[0].rejected, 3);
        // The first bucket leaves the window.
        let later = T0 + WINDOW_MS + BUCKET_MS / 2;
        let first_left = l.view(later, 10).counters[0].rejected;
        assert!(first_left < 3, "{first_left}");
        assert!(l.view(T0 + 4 * WINDOW_MS, 10).counters.is_empty());
        // A write after a long quiet starts afresh.
        l.record("kcse", &a, false, || T0 + 4 * WINDOW_MS);
        assert_eq!(l.view(T0 + 4 * WINDOW_MS, 10).counters[0].rejected, 1);
    }

    #[test]
    fn stays_within_its_bound_and_keeps_heavy_hitters() {
        let rs = rules();
        let l = Limited::new(16);
        let heavy = decision(&[(rule(&rs, "heavy", false), true)], 50);
        l.record("kcse", &heavy, false, || T0);
        for i in 0..10_000u64 {
            let d = decision(&[(rule(&rs, &format!("id{i}"), false), true)], 1);
            l.record("kcse", &d, false, || T0 + i);
        }
        let v = l.view(T0 + 10_000, usize::MAX);
        assert_eq!(v.counters.len(), 16);
        assert_eq!(l.rows.lock().unwrap().index.len(), 16);
        assert_eq!(v.counters[0].subject, "heavy");
        assert_eq!(v.counters[0].rejected, 50);
        // The newest one-off ids are the ones kept beside it.
        assert!(v.counters.iter().any(|c| c.subject == "id9999"));
    }

    #[test]
    fn merge_adds_replicas() {
        let row = |key: &str, rejected, last_ms| LimitedCounter {
            domain: "d".into(),
            rule: "r".into(),
            subject: key.into(),
            key: key.into(),
            rejected,
            last_ms,
            shadow: false,
        };
        let view = |counters| LimitedView {
            now_ms: 0,
            window_secs: 300,
            capacity: 8,
            counters,
        };
        let merged = merge(&[
            view(vec![row("a", 3, 10), row("b", 4, 1)]),
            view(vec![row("a", 2, 20), row("c", 1, 5)]),
        ]);
        let got: Vec<(&str, u64, u64)> = merged
            .iter()
            .map(|r| (r.key.as_str(), r.rejected, r.last_ms))
            .collect();
        assert_eq!(got, vec![("a", 5, 20), ("b", 4, 1), ("c", 1, 5)]);
    }
}
