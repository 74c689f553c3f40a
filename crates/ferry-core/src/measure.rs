//! Measurement primitives shared by the store and the server: lock-free counters and
//! fixed-bucket histograms whose cumulative values can be both exported (Prometheus) and
//! differenced over time windows (`/v1/stats`, the advisor). Recording is a few relaxed atomic
//! adds, so hot paths can afford it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A histogram with fixed upper bounds (plus +Inf), recording values in seconds or counts.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    /// Sum of observations, in micro-units (so it can be an integer atomic).
    sum_micros: AtomicU64,
}

/// Bucket bounds for latencies in seconds: 100 µs to 60 s.
pub const LATENCY_BOUNDS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

/// Bucket bounds for job waits and run times in seconds: 1 ms to 1 day.
pub const JOB_BOUNDS_SECONDS: &[f64] =
    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0];

/// Bucket bounds for batch sizes (commands per group commit).
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// A point-in-time copy of a histogram: cumulative counts per bound (+Inf last) and the sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds; the last bucket (+Inf) has none.
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative), `bounds.len() + 1` entries.
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Observations in total.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was observed after `earlier` (same histogram, taken before this one).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        if earlier.counts.len() != self.counts.len() {
            return self.clone();
        }
        HistogramSnapshot {
            bounds: self.bounds.clone(),
            counts: self.counts.iter().zip(&earlier.counts).map(|(a, b)| a.saturating_sub(*b)).collect(),
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// Adds another snapshot of the same buckets.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    /// The `q` quantile (0..=1), interpolated within its bucket; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let lo = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let Some(&hi) = self.bounds.get(i) else { return Some(lo) };
                let within = (rank - seen as f64) / *c as f64;
                return Some(lo + (hi - lo) * within);
            }
            seen += c;
        }
        self.bounds.last().copied()
    }

    /// Mean observation.
    pub fn mean(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum / n as f64)
    }
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records `n` observations of the same value.
    pub fn observe_n(&self, v: f64, n: u64) {
        if n == 0 {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_micros.fetch_add((v.max(0.0) * 1e6) as u64 * n, Ordering::Relaxed);
    }

    /// The bounds.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// A copy of the current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Counters keyed by a label value (a queue, a route), created on first use and bounded in
/// number: past `max_keys`, new keys are counted under `"(other)"`.
#[derive(Debug)]
pub struct CounterVec<const N: usize> {
    map: RwLock<BTreeMap<String, Arc<[AtomicU64; N]>>>,
    max_keys: usize,
}

impl<const N: usize> CounterVec<N> {
    /// An empty vector of counters, `N` per key.
    pub fn new(max_keys: usize) -> Self {
        CounterVec { map: RwLock::new(BTreeMap::new()), max_keys: max_keys.max(1) }
    }

    /// The counters of `key`.
    pub fn get(&self, key: &str) -> Arc<[AtomicU64; N]> {
        if let Some(c) = self.map.read().expect("counter lock").get(key) {
            return c.clone();
        }
        let mut w = self.map.write().expect("counter lock");
        let key = if w.len() >= self.max_keys && !w.contains_key(key) { "(other)" } else { key };
        w.entry(key.to_string())
            .or_insert_with(|| Arc::new(std::array::from_fn(|_| AtomicU64::new(0))))
            .clone()
    }

    /// Adds `n` to counter `i` of `key`.
    pub fn add(&self, key: &str, i: usize, n: u64) {
        if n > 0 {
            self.get(key)[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Every key with its values.
    pub fn snapshot(&self) -> Vec<(String, [u64; N])> {
        self.map
            .read()
            .expect("counter lock")
            .iter()
            .map(|(k, v)| (k.clone(), std::array::from_fn(|i| v[i].load(Ordering::Relaxed))))
            .collect()
    }

    /// Totals over every key.
    pub fn totals(&self) -> [u64; N] {
        let mut t = [0u64; N];
        for (_, v) in self.snapshot() {
            for i in 0..N {
                t[i] += v[i];
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_and_windows() {
        let h = Histogram::new(LATENCY_BOUNDS_SECONDS);
        for _ in 0..99 {
            h.observe(0.0007);
        }
        let before = h.snapshot();
        h.observe(3.0);
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        let p50 = s.quantile(0.5).unwrap();
        assert!((0.0005..=0.001).contains(&p50), "{p50}");
        let p100 = s.quantile(1.0).unwrap();
        assert!((2.5..=5.0).contains(&p100), "{p100}");
        let window = s.since(&before);
        assert_eq!(window.count(), 1);
        assert!((window.sum - 3.0).abs() < 1e-3);
        assert_eq!(Histogram::new(BATCH_BOUNDS).snapshot().quantile(0.9), None);
        let big = Histogram::new(BATCH_BOUNDS);
        big.observe(5000.0);
        assert_eq!(big.snapshot().quantile(0.5), Some(1024.0), "the +Inf bucket reports its lower bound");
    }

    #[test]
    fn counter_vec_is_bounded() {
        let c: CounterVec<2> = CounterVec::new(2);
        c.add("a", 0, 1);
        c.add("b", 1, 2);
        c.add("c", 1, 5);
        c.add("d", 0, 1);
        let keys: Vec<String> = c.snapshot().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["(other)", "a", "b"]);
        assert_eq!(c.totals(), [2, 7]);
    }
}
