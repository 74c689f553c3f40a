//! The scaling advisor: turns the node's own measurements over a window into a verdict —
//! `STAY`, `PLAN MIGRATION` or `MIGRATE NOW` — with a justification naming every metric, its
//! measured value and its threshold. [`evaluate`] is pure (tested on synthetic measurements);
//! the loop evaluates on a schedule (daily by default), logs each verdict, and keeps a decision
//! history in `<data_dir>/advice-history.jsonl` (the newest `history_max` kept).
//!
//! On SQLite the advice is about moving to PostgreSQL (`ferry migrate`); on PostgreSQL the
//! same rules speak of adding ferry nodes or database capacity.

use ferry_core::wire::{Advice, Finding, Measurements, Verdict};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Mutex;

/// Thresholds and schedule (`[advisor]` in `ferry.toml`); the README explains the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvisorConfig {
    /// Time between scheduled evaluations (default daily); 0 turns the schedule off.
    pub interval_ms: u64,
    /// Window of measurements an evaluation looks at.
    pub window_ms: u64,
    /// Share of failed store writes that means MIGRATE NOW.
    pub write_error_rate: f64,
    /// Writer utilization that means PLAN MIGRATION.
    pub writer_utilization_plan: f64,
    /// Writer utilization that means MIGRATE NOW.
    pub writer_utilization_now: f64,
    /// Most distinct hosts claiming from one node before more than one node is needed.
    pub max_claim_hosts: u64,
    /// Share of writes that waited for the writer or a connection (PLAN MIGRATION above).
    pub busy_wait_share: f64,
    /// Database size (PLAN MIGRATION above).
    pub db_bytes: u64,
    /// Dead-letter queue growth over the window, in jobs (PLAN MIGRATION above).
    pub dlq_growth: i64,
    /// Age of the oldest ready job, seconds (PLAN MIGRATION above).
    pub oldest_ready_age_s: f64,
    /// Registered hosts probed (PLAN MIGRATION above).
    pub max_hosts: u64,
    /// Checkpoint puts and put_writes per second one node sustains (BENCHMARKS.md, "Run
    /// checkpoints"): their rate over this capacity is judged as writer utilization is.
    pub checkpoint_capacity_per_s: f64,
    /// The seed teams' line: checkpoint writes per second...
    pub checkpoint_writes_per_s: f64,
    /// ...and their error share, both exceeded: MIGRATE NOW on SQLite.
    pub checkpoint_write_error_rate: f64,
    /// Decisions kept in the history.
    pub history_max: usize,
}

impl Default for AdvisorConfig {
    fn default() -> Self {
        AdvisorConfig {
            interval_ms: 86_400_000,
            window_ms: 3_600_000,
            write_error_rate: 0.01,
            writer_utilization_plan: 0.70,
            writer_utilization_now: 0.90,
            max_claim_hosts: 1,
            busy_wait_share: 0.05,
            db_bytes: 20 << 30,
            dlq_growth: 1_000,
            oldest_ready_age_s: 300.0,
            max_hosts: 10,
            checkpoint_capacity_per_s: 2_000.0,
            checkpoint_writes_per_s: 100.0,
            checkpoint_write_error_rate: 0.01,
            history_max: 1_000,
        }
    }
}

fn pct(v: f64) -> String {
    let p = v * 100.0;
    if p == p.trunc() { format!("{p:.0}%") } else { format!("{p:.1}%") }
}

fn bytes(v: f64) -> String {
    let gib = v / (1u64 << 30) as f64;
    if gib >= 1.0 { format!("{gib:.1} GiB") } else { format!("{:.1} MiB", v / (1u64 << 20) as f64) }
}

/// Applies every rule to `m`; pure.
pub fn evaluate(m: &Measurements, c: &AdvisorConfig) -> (Verdict, String, String, Vec<Finding>) {
    let w = &m.window;
    let mut f: Vec<Finding> = Vec::new();
    let mut rule =
        |metric: &str, value: f64, threshold: f64, over: Verdict, text: &dyn Fn(bool) -> String| {
            let hit = value > threshold;
            f.push(Finding {
                metric: metric.into(),
                value,
                threshold,
                verdict: if hit { over } else { Verdict::Stay },
                text: text(hit),
            });
        };
    let cmp = |hit: bool| if hit { ">" } else { "<=" };
    rule("write_error_rate", w.write_error_rate, c.write_error_rate, Verdict::MigrateNow, &|h| {
        format!("write errors {} {} {}", pct(w.write_error_rate), cmp(h), pct(c.write_error_rate))
    });
    let u = w.writer_utilization;
    let u_verdict = if u > c.writer_utilization_now { Verdict::MigrateNow } else { Verdict::PlanMigration };
    let u_threshold =
        if u > c.writer_utilization_now { c.writer_utilization_now } else { c.writer_utilization_plan };
    rule("writer_utilization", u, u_threshold, u_verdict, &|h| {
        format!("writer utilization {} {} {}", pct(u), cmp(h), pct(u_threshold))
    });
    let hosts = w.claim_hosts as f64;
    rule("claim_hosts", hosts, c.max_claim_hosts as f64, Verdict::PlanMigration, &|h| {
        format!("hosts claiming {} {} {}", w.claim_hosts, cmp(h), c.max_claim_hosts)
    });
    rule("busy_wait_share", w.busy_wait_share, c.busy_wait_share, Verdict::PlanMigration, &|h| {
        format!("lock/busy waits {} of writes {} {}", pct(w.busy_wait_share), cmp(h), pct(c.busy_wait_share))
    });
    let db = m.now.db_bytes as f64;
    rule("db_bytes", db, c.db_bytes as f64, Verdict::PlanMigration, &|h| {
        format!("database {} {} {}", bytes(db), cmp(h), bytes(c.db_bytes as f64))
    });
    rule("dlq_growth", w.dlq_growth as f64, c.dlq_growth as f64, Verdict::PlanMigration, &|h| {
        format!("DLQ growth {} jobs {} {}", w.dlq_growth, cmp(h), c.dlq_growth)
    });
    let age = m.now.oldest_ready_age_s;
    rule("oldest_ready_age_s", age, c.oldest_ready_age_s, Verdict::PlanMigration, &|h| {
        format!("oldest ready job {age:.0} s {} {:.0} s", cmp(h), c.oldest_ready_age_s)
    });
    let probed = m.now.hosts as f64;
    rule("hosts", probed, c.max_hosts as f64, Verdict::PlanMigration, &|h| {
        format!("registered hosts {} {} {}", m.now.hosts, cmp(h), c.max_hosts)
    });
    let load = if c.checkpoint_capacity_per_s > 0.0 {
        w.checkpoint_writes_per_sec / c.checkpoint_capacity_per_s
    } else {
        0.0
    };
    let (l_verdict, l_threshold) = if load > c.writer_utilization_now {
        (Verdict::MigrateNow, c.writer_utilization_now)
    } else {
        (Verdict::PlanMigration, c.writer_utilization_plan)
    };
    rule("checkpoint_load", load, l_threshold, l_verdict, &|h| {
        format!(
            "checkpoint writes {:.0}/s = {} of capacity {:.0}/s {} {}",
            w.checkpoint_writes_per_sec,
            pct(load),
            c.checkpoint_capacity_per_s,
            cmp(h),
            pct(l_threshold)
        )
    });
    // The seed's trigger: writes over its rate with errors over its share, both (SQLite only:
    // on PostgreSQL the other rules speak).
    let (rate, errs) = (w.checkpoint_writes_per_sec, w.checkpoint_write_error_rate);
    let both = rate > c.checkpoint_writes_per_s && errs > c.checkpoint_write_error_rate;
    let sqlite = m.backend != "postgres";
    f.push(Finding {
        metric: "checkpoint_write_errors".into(),
        value: errs,
        threshold: c.checkpoint_write_error_rate,
        verdict: if both && sqlite { Verdict::MigrateNow } else { Verdict::Stay },
        text: format!(
            "checkpoint writes {rate:.0}/s {} {:.0}/s with errors {} {} {}",
            if rate > c.checkpoint_writes_per_s { ">" } else { "<=" },
            c.checkpoint_writes_per_s,
            pct(errs),
            if errs > c.checkpoint_write_error_rate { ">" } else { "<=" },
            pct(c.checkpoint_write_error_rate)
        ),
    });
    let verdict = f.iter().map(|x| x.verdict).max().unwrap_or(Verdict::Stay);
    // The findings that decided first, then the others, so the text reads as a reason.
    let mut order: Vec<&Finding> = f.iter().filter(|x| x.verdict == verdict).collect();
    order.extend(f.iter().filter(|x| x.verdict != verdict));
    let justification = format!(
        "{} - {}",
        verdict.as_str(),
        order.iter().map(|x| x.text.as_str()).collect::<Vec<_>>().join("; ")
    );
    let postgres = m.backend == "postgres";
    let action = match (verdict, postgres) {
        (Verdict::Stay, _) => "no change needed".to_string(),
        (Verdict::PlanMigration, false) => {
            "plan the move to PostgreSQL (ferry migrate --from <sqlite> --to postgres://...)".to_string()
        }
        (Verdict::MigrateNow, false) => {
            "move to PostgreSQL now (ferry migrate --from <sqlite> --to postgres://...)".to_string()
        }
        (Verdict::PlanMigration, true) => "plan more ferry nodes or more database capacity".to_string(),
        (Verdict::MigrateNow, true) => "add ferry nodes or database capacity now".to_string(),
    };
    (verdict, justification, action, f)
}

/// The decision history of this node.
pub struct Advisor {
    cfg: AdvisorConfig,
    path: Option<PathBuf>,
    history: Mutex<std::collections::VecDeque<Advice>>,
}

impl Advisor {
    /// An advisor keeping its history in `path` (loaded now, if present).
    pub fn new(cfg: AdvisorConfig, path: Option<PathBuf>) -> Advisor {
        let mut history = std::collections::VecDeque::new();
        if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            history.extend(text.lines().filter_map(|l| serde_json::from_str::<Advice>(l).ok()));
        }
        while history.len() > cfg.history_max.max(1) {
            history.pop_front();
        }
        Advisor { cfg, path, history: Mutex::new(history) }
    }

    /// Evaluates the node's measurements now, logs and records the decision.
    pub async fn advise(&self, st: &crate::AppState, trigger: &str) -> Advice {
        let window = st.stats.window(st, std::time::Duration::from_millis(self.cfg.window_ms)).await;
        let now = crate::stats::gauges(st).await;
        let m = Measurements { backend: st.store.backend().to_string(), window, now };
        let (verdict, justification, action, findings) = evaluate(&m, &self.cfg);
        let advice = Advice {
            verdict,
            justification,
            action,
            findings,
            backend: m.backend,
            at_ms: st.store.clock().now_ms(),
            window_s: m.window.seconds,
            trigger: trigger.into(),
        };
        tracing::info!(
            target: "ferry::advisor",
            verdict = advice.verdict.as_str(),
            justification = %advice.justification,
            action = %advice.action,
            "scaling advice"
        );
        self.record(&advice);
        advice
    }

    fn record(&self, advice: &Advice) {
        let mut h = self.history.lock().expect("history lock");
        h.push_back(advice.clone());
        let trimmed = h.len() > self.cfg.history_max.max(1);
        while h.len() > self.cfg.history_max.max(1) {
            h.pop_front();
        }
        let Some(path) = &self.path else { return };
        let result = if trimmed {
            let text: String =
                h.iter().filter_map(|a| serde_json::to_string(a).ok()).map(|l| l + "\n").collect();
            std::fs::write(path, text)
        } else {
            use std::io::Write;
            std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| {
                writeln!(f, "{}", serde_json::to_string(advice).expect("advice serializes"))
            })
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, path = %path.display(), "cannot record advice history");
        }
    }

    /// Decisions, oldest first.
    pub fn history(&self) -> Vec<Advice> {
        self.history.lock().expect("history lock").iter().cloned().collect()
    }

    /// Evaluates every `interval_ms` until `stop` (the first after one interval).
    pub async fn run(
        self: std::sync::Arc<Self>,
        st: crate::AppState,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.cfg.interval_ms == 0 {
            return;
        }
        let every = std::time::Duration::from_millis(self.cfg.interval_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            self.advise(&st, "schedule").await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_writes_with_errors_over_the_seed_line_mean_migrate_now_on_sqlite() {
        let cfg = AdvisorConfig::default();
        let mut m = Measurements { backend: "sqlite".into(), ..Default::default() };
        m.window.checkpoint_writes_per_sec = 150.0;
        m.window.checkpoint_write_error_rate = 0.02;
        let (v, text, _, _) = evaluate(&m, &cfg);
        assert_eq!(v, Verdict::MigrateNow, "{text}");
        assert!(text.contains("checkpoint writes 150/s > 100/s with errors 2% > 1%"), "{text}");
        // One past the line on one side only: no verdict from it.
        m.window.checkpoint_write_error_rate = 0.01;
        assert_eq!(evaluate(&m, &cfg).0, Verdict::Stay);
        m.window.checkpoint_write_error_rate = 0.02;
        m.window.checkpoint_writes_per_sec = 100.0;
        assert_eq!(evaluate(&m, &cfg).0, Verdict::Stay);
        // On PostgreSQL the seed's SQLite trigger does not apply.
        m.window.checkpoint_writes_per_sec = 150.0;
        m.backend = "postgres".into();
        assert_eq!(evaluate(&m, &cfg).0, Verdict::Stay);
        // Load against the benchmarked capacity: plan above 70%, now above 90%.
        m.window.checkpoint_write_error_rate = 0.0;
        m.window.checkpoint_writes_per_sec = 1_500.0;
        assert_eq!(evaluate(&m, &cfg).0, Verdict::PlanMigration);
        m.window.checkpoint_writes_per_sec = 1_900.0;
        assert_eq!(evaluate(&m, &cfg).0, Verdict::MigrateNow);
    }

    fn base() -> Measurements {
        Measurements { backend: "sqlite".into(), ..Default::default() }
    }

    fn verdict_of(m: &Measurements) -> (Verdict, String) {
        let (v, text, _, findings) = evaluate(m, &AdvisorConfig::default());
        assert_eq!(findings.len(), 10, "every rule reports");
        (v, text)
    }

    #[test]
    fn healthy_is_stay_and_names_every_metric() {
        let (v, text) = verdict_of(&base());
        assert_eq!(v, Verdict::Stay);
        for part in [
            "write errors 0% <= 1%",
            "writer utilization 0% <= 70%",
            "hosts claiming 0 <= 1",
            "lock/busy waits 0% of writes <= 5%",
            "database 0.0 MiB <= 20.0 GiB",
            "DLQ growth 0 jobs <= 1000",
            "oldest ready job 0 s <= 300 s",
            "registered hosts 0 <= 10",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        assert!(text.starts_with("STAY - "));
    }

    #[test]
    fn each_rule_on_both_sides_of_its_threshold() {
        type Set = fn(&mut Measurements, bool);
        let rules: [(&str, Set, Verdict); 8] = [
            (
                "write errors",
                |m, over| m.window.write_error_rate = if over { 0.018 } else { 0.01 },
                Verdict::MigrateNow,
            ),
            (
                "writer utilization",
                |m, over| m.window.writer_utilization = if over { 0.75 } else { 0.70 },
                Verdict::PlanMigration,
            ),
            (
                "hosts claiming",
                |m, over| m.window.claim_hosts = if over { 2 } else { 1 },
                Verdict::PlanMigration,
            ),
            (
                "lock/busy waits",
                |m, over| m.window.busy_wait_share = if over { 0.051 } else { 0.05 },
                Verdict::PlanMigration,
            ),
            (
                "database",
                |m, over| m.now.db_bytes = if over { (20 << 30) + 1 } else { 20 << 30 },
                Verdict::PlanMigration,
            ),
            (
                "DLQ growth",
                |m, over| m.window.dlq_growth = if over { 1001 } else { 1000 },
                Verdict::PlanMigration,
            ),
            (
                "oldest ready job",
                |m, over| m.now.oldest_ready_age_s = if over { 301.0 } else { 300.0 },
                Verdict::PlanMigration,
            ),
            ("registered hosts", |m, over| m.now.hosts = if over { 11 } else { 10 }, Verdict::PlanMigration),
        ];
        for (name, set, verdict) in rules {
            let mut m = base();
            set(&mut m, false);
            let (v, text) = verdict_of(&m);
            assert_eq!(v, Verdict::Stay, "{name} at its threshold: {text}");
            set(&mut m, true);
            let (v, text) = verdict_of(&m);
            assert_eq!(v, verdict, "{name} over its threshold: {text}");
            let first = text.split(" - ").nth(1).unwrap();
            assert!(first.starts_with(name), "the deciding finding comes first: {text}");
            assert!(text.contains(" > "), "{text}");
        }
    }

    #[test]
    fn writer_utilization_has_two_levels_and_the_example_reads_right() {
        let mut m = base();
        m.window.writer_utilization = 0.95;
        let (v, text) = verdict_of(&m);
        assert_eq!(v, Verdict::MigrateNow);
        assert!(text.contains("writer utilization 95% > 90%"), "{text}");
        let mut m = base();
        m.window.write_error_rate = 0.018;
        let (_, text) = verdict_of(&m);
        assert!(text.starts_with("MIGRATE NOW - write errors 1.8% > 1%"), "{text}");
    }

    #[test]
    fn postgres_advice_speaks_of_nodes_and_capacity() {
        let mut m = base();
        m.backend = "postgres".into();
        m.window.writer_utilization = 0.8;
        let (v, _, action, _) = evaluate(&m, &AdvisorConfig::default());
        assert_eq!(v, Verdict::PlanMigration);
        assert!(action.contains("nodes"), "{action}");
        m.backend = "sqlite".into();
        let (_, _, action, _) = evaluate(&m, &AdvisorConfig::default());
        assert!(action.contains("PostgreSQL"), "{action}");
    }

    #[test]
    fn history_survives_a_restart_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let cfg = AdvisorConfig { history_max: 3, ..Default::default() };
        let a = Advisor::new(cfg.clone(), Some(path.clone()));
        for i in 0..5 {
            a.record(&Advice {
                verdict: Verdict::Stay,
                justification: format!("STAY - {i}"),
                action: String::new(),
                findings: vec![],
                backend: "sqlite".into(),
                at_ms: i,
                window_s: 1.0,
                trigger: "request".into(),
            });
        }
        let b = Advisor::new(cfg, Some(path));
        let at: Vec<i64> = b.history().iter().map(|a| a.at_ms).collect();
        assert_eq!(at, vec![2, 3, 4]);
    }
}
