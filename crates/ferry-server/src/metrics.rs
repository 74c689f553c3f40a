//! `GET /metrics`: the node's measurements in the Prometheus text format (prometheus-client).
//!
//! Values that already live elsewhere (breaker state, refusal counts, pending writes) are read
//! at scrape time by a collector rather than copied on every change, so the hot path pays
//! nothing for them.

use crate::observe::HttpMetrics;
use crate::protect::{BreakerState, Protection, REJECTION_REASONS};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The node's metric registry.
pub struct Metrics {
    registry: Registry,
}

struct ProtectionCollector(Arc<Protection>);

struct HttpCollector(Arc<HttpMetrics>);

impl std::fmt::Debug for HttpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpCollector")
    }
}

/// Encodes a histogram snapshot under `name` (in the family opened by the caller).
pub fn encode_histogram(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    h: &ferry_core::measure::HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    // prometheus-client accumulates the per-bucket counts itself, and writes the bound
    // f64::MAX as +Inf.
    let buckets: Vec<(f64, u64)> = h
        .counts
        .iter()
        .enumerate()
        .map(|(i, c)| (h.bounds.get(i).copied().unwrap_or(f64::MAX), *c))
        .collect();
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count(), &buckets, None)
}

impl prometheus_client::collector::Collector for HttpCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let http = &self.0;
        let c = ConstCounter::new(0u64);
        let mut m = enc.encode_descriptor(
            "ferry_http_requests",
            "HTTP requests by route and status",
            None,
            c.metric_type(),
        )?;
        for (key, [n]) in http.requests.snapshot() {
            let mut parts = key.splitn(3, ' ');
            let (method, route, status) =
                (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            ConstCounter::new(n).encode(m.encode_family(&[
                ("method", method),
                ("route", route),
                ("status", status),
            ])?)?;
        }
        let mut m = enc.encode_descriptor(
            "ferry_http_request_duration_seconds",
            "HTTP request duration by route",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (key, h) in http.durations() {
            let (method, route) = key.split_once(' ').unwrap_or(("", &key));
            let labels = [("method", method), ("route", route)];
            let mut f = m.encode_family(&labels)?;
            encode_histogram(&mut f, &h)?;
        }
        let g = ConstGauge::new(http.in_flight.load(Ordering::Relaxed));
        g.encode(enc.encode_descriptor(
            "ferry_http_requests_in_flight",
            "HTTP requests being served (connections in use)",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

impl std::fmt::Debug for ProtectionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProtectionCollector")
    }
}

impl prometheus_client::collector::Collector for ProtectionCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = &self.0;
        let rejected = ConstCounter::new(0u64);
        let mut m = enc.encode_descriptor(
            "ferry_rejections",
            "Requests refused by protection, by reason",
            None,
            rejected.metric_type(),
        )?;
        for (i, reason) in REJECTION_REASONS.iter().enumerate() {
            let c = ConstCounter::new(p.rejected[i].load(Ordering::Relaxed));
            c.encode(m.encode_family(&[("reason", *reason)])?)?;
        }
        let state = p.breaker.state();
        let g = ConstGauge::new(0i64);
        let mut m = enc.encode_descriptor(
            "ferry_circuit_state",
            "Circuit breaker around the database: 1 for the current state",
            None,
            g.metric_type(),
        )?;
        for s in [BreakerState::Closed, BreakerState::HalfOpen, BreakerState::Open] {
            ConstGauge::new(i64::from(s == state)).encode(m.encode_family(&[("state", s.as_str())])?)?;
        }
        let opened = ConstCounter::new(p.breaker.opened_total.load(Ordering::Relaxed));
        opened.encode(enc.encode_descriptor(
            "ferry_circuit_opened",
            "Times the circuit breaker opened",
            None,
            opened.metric_type(),
        )?)?;
        let pending = ConstGauge::new(p.pending_writes() as i64);
        pending.encode(enc.encode_descriptor(
            "ferry_pending_writes",
            "Job writes admitted and not yet answered by the store",
            None,
            pending.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Metrics {
    /// A registry with this node's collectors.
    pub fn new(protection: Arc<Protection>, http: Arc<HttpMetrics>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProtectionCollector(protection)));
        registry.register_collector(Box::new(HttpCollector(http)));
        Metrics { registry }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode to a String");
        out
    }
}
