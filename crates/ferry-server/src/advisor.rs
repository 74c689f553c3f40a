//! The scaling advisor: turns the node's own measurements over a window into a verdict —
//! `STAY`, `PLAN MIGRATION`, `ACT` or `MIGRATE NOW` — with a justification naming every
//! metric, its measured value and its threshold, and the cause and remedy of what it found. [`evaluate`] is pure (tested on synthetic measurements);
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
    /// Share of store writes failing for one cause that is acted on: MIGRATE NOW when the
    /// writer is busy, ACT on the storage when the disk is full, read-only or failing.
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
    /// Dead-letter queue growth over the window, in jobs (ACT above: fix the failing jobs).
    pub dlq_growth: i64,
    /// Age of the oldest ready job, seconds (ACT above: add workers; PLAN MIGRATION only when
    /// the writer is busy too).
    pub oldest_ready_age_s: f64,
    /// Free share of the volume holding the SQLite database (ACT below: free or grow it).
    pub disk_free_share: f64,
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
            disk_free_share: 0.10,
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

/// The outcome of [`evaluate`]: the verdict, why, and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The most severe finding's verdict.
    pub verdict: Verdict,
    /// `VERDICT - finding; finding; ...`, the deciding findings first.
    pub justification: String,
    /// The deciding findings' causes.
    pub cause: String,
    /// The deciding findings' remedies.
    pub remedy: String,
    /// Every remedy of every finding over its threshold, most severe first.
    pub action: String,
    /// Every rule's finding.
    pub findings: Vec<Finding>,
}

/// Collects findings; each knows its verdict, cause and remedy when over its threshold.
struct Rules<'a> {
    c: &'a AdvisorConfig,
    postgres: bool,
    found: Vec<Finding>,
}

impl Rules<'_> {
    /// A rule that fires when `value > threshold` (or `<` with `below`).
    #[allow(clippy::too_many_arguments)]
    fn rule(
        &mut self,
        metric: &str,
        value: f64,
        threshold: f64,
        below: bool,
        verdict: Verdict,
        text: impl Fn(&str) -> String,
        why: impl FnOnce() -> (String, String),
    ) {
        let hit = if below { value < threshold } else { value > threshold };
        let cmp = match (hit, below) {
            (true, false) => ">",
            (false, false) => "<=",
            (true, true) => "<",
            (false, true) => ">=",
        };
        self.judged(metric, value, threshold, hit, verdict, text(cmp), why);
    }

    /// A rule whose firing was decided by the caller (from more than one value).
    #[allow(clippy::too_many_arguments)]
    fn judged(
        &mut self,
        metric: &str,
        value: f64,
        threshold: f64,
        hit: bool,
        verdict: Verdict,
        text: String,
        why: impl FnOnce() -> (String, String),
    ) {
        let (cause, remedy) = if hit { why() } else { (String::new(), String::new()) };
        self.found.push(Finding {
            metric: metric.into(),
            value,
            threshold,
            verdict: if hit { verdict } else { Verdict::Stay },
            text,
            cause,
            remedy,
        });
    }

    /// The remedy of a rule a migration fixes, on this backend.
    fn migrate(&self, verdict: Verdict) -> String {
        match (verdict, self.postgres) {
            (Verdict::MigrateNow, false) => {
                "move to PostgreSQL now (ferry migrate --from <data-dir>/ferry.db --to postgres://...)".into()
            }
            (_, false) => {
                "plan the move to PostgreSQL (ferry migrate --from <data-dir>/ferry.db --to postgres://...)"
                    .into()
            }
            (Verdict::MigrateNow, true) => "add ferry nodes or database capacity now".into(),
            (_, true) => "plan more ferry nodes or more database capacity".into(),
        }
    }
}

/// Two levels of one load: PLAN MIGRATION over `plan`, MIGRATE NOW over `now`.
fn level(load: f64, c: &AdvisorConfig) -> (Verdict, f64) {
    if load > c.writer_utilization_now {
        (Verdict::MigrateNow, c.writer_utilization_now)
    } else {
        (Verdict::PlanMigration, c.writer_utilization_plan)
    }
}

/// Applies every rule to `m`; pure.
pub fn evaluate(m: &Measurements, c: &AdvisorConfig) -> Evaluation {
    let mut r = Rules { c, postgres: m.backend == "postgres", found: Vec::new() };
    write_error_rules(&mut r, m);
    storage_rules(&mut r, m);
    load_rules(&mut r, m);
    backlog_rules(&mut r, m);
    checkpoint_rules(&mut r, m);
    summarize(r.found)
}

/// Failed writes, told apart by what the database said: only a busy writer wants a migration.
fn write_error_rules(r: &mut Rules, m: &Measurements) {
    let rates = &m.window.write_fault_rates;
    let rate = |names: &[&str]| names.iter().map(|n| rates.get(*n).copied().unwrap_or(0.0)).sum::<f64>();
    let limit = r.c.write_error_rate;
    let storage = rate(&["disk_full", "read_only", "io_error"]);
    // The commonest storage fault names the cause.
    let worst = ["disk_full", "read_only", "io_error"]
        .into_iter()
        .max_by(|a, b| rate(&[a]).total_cmp(&rate(&[b])))
        .expect("three faults");
    let postgres = r.postgres;
    r.rule(
        "storage_error_rate",
        storage,
        limit,
        false,
        Verdict::Act,
        |cmp| format!("storage write errors {} {cmp} {}", pct(storage), pct(limit)),
        || match (worst, postgres) {
            ("disk_full", false) => (
                format!("{} of writes fail because the disk holding the database is full", pct(storage)),
                "free or grow the volume holding the data directory, and shorten retention \
                 ([maintenance] retention_ms, events_retention_ms); a migration does not fix a full disk"
                    .into(),
            ),
            ("disk_full", true) => (
                format!("{} of writes fail because PostgreSQL's disk is full", pct(storage)),
                "free or grow PostgreSQL's volume, and shorten retention ([maintenance] retention_ms, \
                 events_retention_ms)"
                    .into(),
            ),
            ("read_only", false) => (
                format!("{} of writes fail because the database file is read-only", pct(storage)),
                "make the data directory and its files writable by ferry, and check the volume is not \
                 mounted read-only"
                    .into(),
            ),
            ("read_only", true) => (
                format!("{} of writes fail because PostgreSQL is read-only (a standby?)", pct(storage)),
                "point ferry at the PostgreSQL primary (SELECT pg_is_in_recovery() is false there)".into(),
            ),
            _ => (
                format!("{} of writes fail with I/O errors from the storage", pct(storage)),
                "check the volume (dmesg, the filesystem's health) and restore from a backup if the \
                 database is damaged (ferry restore)"
                    .into(),
            ),
        },
    );
    let busy = rate(&["busy"]);
    let verdict = Verdict::MigrateNow;
    let remedy = r.migrate(verdict);
    r.rule(
        "busy_error_rate",
        busy,
        limit,
        false,
        verdict,
        |cmp| format!("write errors from a busy writer {} {cmp} {}", pct(busy), pct(limit)),
        || {
            let who = if postgres { "the database's locks or connections" } else { "the single writer" };
            (format!("{} of writes time out waiting for {who}", pct(busy)), remedy)
        },
    );
    let gone = rate(&["unreachable"]);
    r.rule(
        "unreachable_error_rate",
        gone,
        limit,
        false,
        Verdict::Act,
        |cmp| format!("writes failing on an unreachable database {} {cmp} {}", pct(gone), pct(limit)),
        || {
            (
                format!("{} of writes fail because the database cannot be reached", pct(gone)),
                "check PostgreSQL is up and reachable (pg_isready -h <host> -p <port>) or finish its \
                 failover; ferry retries on its own through the circuit breaker"
                    .into(),
            )
        },
    );
    let other = rate(&["other"]);
    r.rule(
        "other_error_rate",
        other,
        limit,
        false,
        Verdict::Act,
        |cmp| format!("other write errors {} {cmp} {}", pct(other), pct(limit)),
        || {
            (
                format!("{} of writes fail with unexpected database errors", pct(other)),
                "read the server log for `storage error` / `database error` lines and report them; a \
                 migration does not fix them"
                    .into(),
            )
        },
    );
}

/// The volume and the database's size.
fn storage_rules(r: &mut Rules, m: &Measurements) {
    if let (Some(free), Some(total)) = (m.now.disk_free_bytes, m.now.disk_total_bytes) {
        let share = if total > 0 { free as f64 / total as f64 } else { 1.0 };
        let limit = r.c.disk_free_share;
        let postgres = r.postgres;
        r.rule(
            "disk_free_share",
            share,
            limit,
            true,
            Verdict::Act,
            |cmp| format!("disk free {} {cmp} {}", pct(share), pct(limit)),
            || {
                let whose = if postgres { "ferry's data directory" } else { "the database" };
                (
                    format!(
                        "the volume holding {whose} has {} free of {}",
                        bytes(free as f64),
                        bytes(total as f64)
                    ),
                    "free or grow the volume, and shorten retention ([maintenance] retention_ms, \
                     events_retention_ms); a migration does not fix a full disk"
                        .into(),
                )
            },
        );
    }
    let db = m.now.db_bytes as f64;
    let limit = r.c.db_bytes as f64;
    let remedy = r.migrate(Verdict::PlanMigration);
    r.rule(
        "db_bytes",
        db,
        limit,
        false,
        Verdict::PlanMigration,
        |cmp| format!("database {} {cmp} {}", bytes(db), bytes(limit)),
        || (format!("the database has grown to {}", bytes(db)), remedy),
    );
}

/// How busy the writers are, and how many hosts lean on this node.
fn load_rules(r: &mut Rules, m: &Measurements) {
    let w = &m.window;
    let u = w.writer_utilization;
    let (verdict, threshold) = level(u, r.c);
    let remedy = r.migrate(verdict);
    let who = if r.postgres { "the database connections are" } else { "the single writer is" };
    r.rule(
        "writer_utilization",
        u,
        threshold,
        false,
        verdict,
        |cmp| format!("writer utilization {} {cmp} {}", pct(u), pct(threshold)),
        || (format!("{who} busy {} of the time", pct(u)), remedy),
    );
    let hosts = w.claim_hosts;
    let max = r.c.max_claim_hosts;
    let remedy = r.migrate(Verdict::PlanMigration);
    r.rule(
        "claim_hosts",
        hosts as f64,
        max as f64,
        false,
        Verdict::PlanMigration,
        |cmp| format!("hosts claiming {hosts} {cmp} {max}"),
        || (format!("workers on {hosts} hosts claim from this one node"), remedy.clone()),
    );
    let share = w.busy_wait_share;
    let limit = r.c.busy_wait_share;
    r.rule(
        "busy_wait_share",
        share,
        limit,
        false,
        Verdict::PlanMigration,
        |cmp| format!("lock/busy waits {} of writes {cmp} {}", pct(share), pct(limit)),
        || (format!("{} of writes waited for the writer or a connection", pct(share)), remedy.clone()),
    );
    let probed = m.now.hosts;
    let max = r.c.max_hosts;
    r.rule(
        "hosts",
        probed as f64,
        max as f64,
        false,
        Verdict::PlanMigration,
        |cmp| format!("registered hosts {probed} {cmp} {max}"),
        || (format!("{probed} hosts are registered for probing"), remedy),
    );
}

/// Jobs that wait or die: workers and handlers fix these, not a migration.
fn backlog_rules(r: &mut Rules, m: &Measurements) {
    let (w, now) = (&m.window, &m.now);
    let growth = w.dlq_growth;
    let limit = r.c.dlq_growth;
    r.rule(
        "dlq_growth",
        growth as f64,
        limit as f64,
        false,
        Verdict::Act,
        |cmp| format!("DLQ growth {growth} jobs {cmp} {limit}"),
        || {
            (
                format!("{growth} jobs failed past their retries in the window"),
                "see why with ferry dlq list (each job's last error), fix the handler or its input, \
                 then ferry dlq replay; a migration does not fix failing jobs"
                    .into(),
            )
        },
    );
    let age = now.oldest_ready_age_s;
    let limit = r.c.oldest_ready_age_s;
    let queue = now.oldest_ready_queue.as_deref().unwrap_or("?");
    let writer_busy = w.writer_utilization > r.c.writer_utilization_plan;
    let no_consumer = now.workers_active == 0 || w.started_per_sec == 0.0;
    let verdict = if writer_busy && !no_consumer { Verdict::PlanMigration } else { Verdict::Act };
    let migrate = r.migrate(verdict);
    r.rule(
        "oldest_ready_age_s",
        age,
        limit,
        false,
        verdict,
        |cmp| format!("oldest ready job {age:.0} s {cmp} {limit:.0} s"),
        || {
            if no_consumer {
                (
                    format!(
                        "no worker is consuming: queue {queue:?} has waited {age:.0} s with {} active \
                         workers and {:.1} jobs started/s",
                        now.workers_active, w.started_per_sec
                    ),
                    format!(
                        "start workers for queue {queue:?} (a ferry.Worker in Python, ferry_client::Worker in \
                         Rust), and check their queue names and token scopes; check the queue is not paused \
                         (ferry queues list)"
                    ),
                )
            } else if writer_busy {
                (
                    format!(
                        "jobs in queue {queue:?} wait {age:.0} s while the writer is busy {}: more workers \
                         would not drain them",
                        pct(w.writer_utilization)
                    ),
                    migrate,
                )
            } else {
                (
                    format!(
                        "too few consumers: queue {queue:?} has waited {age:.0} s while {} workers start \
                         {:.1} jobs/s ({:.1}/s enqueued) and the writer is busy only {}",
                        now.workers_active,
                        w.started_per_sec,
                        w.enqueued_per_sec,
                        pct(w.writer_utilization)
                    ),
                    format!(
                        "add workers for queue {queue:?} or raise their concurrency, and check the queue's \
                         limits and pause (ferry queues list, ferry queues limit)"
                    ),
                )
            }
        },
    );
}

/// LangGraph checkpoint writes against one node's measured capacity, and the seed's trigger.
fn checkpoint_rules(r: &mut Rules, m: &Measurements) {
    let w = &m.window;
    let cap = r.c.checkpoint_capacity_per_s;
    let rate = w.checkpoint_writes_per_sec;
    let load = if cap > 0.0 { rate / cap } else { 0.0 };
    let (verdict, threshold) = level(load, r.c);
    let remedy = r.migrate(verdict);
    r.rule(
        "checkpoint_load",
        load,
        threshold,
        false,
        verdict,
        |cmp| {
            format!(
                "checkpoint writes {rate:.0}/s = {} of capacity {cap:.0}/s {cmp} {}",
                pct(load),
                pct(threshold)
            )
        },
        || (format!("checkpoint writes run at {} of what one node sustains", pct(load)), remedy),
    );
    // The seed's trigger: writes over its rate with errors over its share, both (SQLite only:
    // on PostgreSQL the other rules speak).
    let errs = w.checkpoint_write_error_rate;
    let (line, err_line) = (r.c.checkpoint_writes_per_s, r.c.checkpoint_write_error_rate);
    let both = rate > line && errs > err_line;
    let sqlite = !r.postgres;
    let remedy = r.migrate(Verdict::MigrateNow);
    let text = format!(
        "checkpoint writes {rate:.0}/s {} {line:.0}/s with errors {} {} {}",
        if rate > line { ">" } else { "<=" },
        pct(errs),
        if errs > err_line { ">" } else { "<=" },
        pct(err_line)
    );
    r.judged("checkpoint_write_errors", errs, err_line, both && sqlite, Verdict::MigrateNow, text, || {
        (format!("checkpoint writes run at {rate:.0}/s and {} of them fail", pct(errs)), remedy)
    });
}

/// The verdict is the most severe finding; its findings come first in every text.
fn summarize(found: Vec<Finding>) -> Evaluation {
    let verdict = found.iter().map(|x| x.verdict).max().unwrap_or(Verdict::Stay);
    let mut order: Vec<&Finding> = found.iter().collect();
    // Stable: rules keep their order within a verdict.
    order.sort_by_key(|x| std::cmp::Reverse(x.verdict));
    let justification = format!(
        "{} - {}",
        verdict.as_str(),
        order.iter().map(|x| x.text.as_str()).collect::<Vec<_>>().join("; ")
    );
    let distinct = |pick: &dyn Fn(&Finding) -> &str, only: Option<Verdict>| {
        let mut seen: Vec<&str> = Vec::new();
        for x in order.iter().filter(|x| x.verdict != Verdict::Stay && only.is_none_or(|v| x.verdict == v)) {
            if !seen.contains(&pick(x)) {
                seen.push(pick(x));
            }
        }
        seen.join("; ")
    };
    // What only an operator fixes (a full disk, no workers) is said even when a migration
    // decides the verdict: first, since a migration would not fix it.
    let both = |pick: &dyn Fn(&Finding) -> &str| {
        let act = if verdict == Verdict::Act { String::new() } else { distinct(pick, Some(Verdict::Act)) };
        let decided = distinct(pick, Some(verdict));
        [act, decided].into_iter().filter(|x| !x.is_empty()).collect::<Vec<_>>().join("; ")
    };
    let (cause, remedy, action) = if verdict == Verdict::Stay {
        let all = "every measurement is within its threshold".to_string();
        (all, "no change needed".to_string(), "no change needed".to_string())
    } else {
        (both(&|x| &x.cause), both(&|x| &x.remedy), distinct(&|x| &x.remedy, None))
    };
    Evaluation { verdict, justification, cause, remedy, action, findings: found }
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

    /// Evaluates the node's measurements now and logs the decision; `record` keeps it in the
    /// history (scheduled ones always, requested ones only when asked, so that asking does not
    /// push the schedule's decisions out).
    pub async fn advise(&self, st: &crate::AppState, trigger: &str, record: bool) -> Advice {
        let window = st.stats.window(st, std::time::Duration::from_millis(self.cfg.window_ms)).await;
        let now = crate::stats::gauges(st).await;
        let m = Measurements { backend: st.store.backend().to_string(), window, now };
        let e = evaluate(&m, &self.cfg);
        let advice = Advice {
            verdict: e.verdict,
            justification: e.justification,
            cause: e.cause,
            remedy: e.remedy,
            action: e.action,
            findings: e.findings,
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
        if record {
            self.record(&advice);
        }
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
            self.advise(&st, "schedule", true).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(backend: &str) -> Measurements {
        Measurements { backend: backend.into(), ..Default::default() }
    }

    fn eval(m: &Measurements) -> Evaluation {
        evaluate(m, &AdvisorConfig::default())
    }

    fn finding<'a>(e: &'a Evaluation, metric: &str) -> &'a Finding {
        e.findings.iter().find(|f| f.metric == metric).unwrap_or_else(|| panic!("no {metric}: {e:?}"))
    }

    fn fault(m: &mut Measurements, name: &str, share: f64) {
        m.window.write_fault_rates.insert(name.into(), share);
    }

    /// One rule on both sides of its threshold: at it, STAY with no cause; one step past it,
    /// the rule's verdict, decided by it, with the expected cause and remedy.
    struct Case {
        metric: &'static str,
        backend: &'static str,
        set: fn(&mut Measurements, bool),
        verdict: Verdict,
        cause: &'static str,
        remedy: &'static str,
    }

    fn cases() -> Vec<Case> {
        let c = |metric, backend, set, verdict, cause, remedy| Case {
            metric,
            backend,
            set,
            verdict,
            cause,
            remedy,
        };
        vec![
            c(
                "storage_error_rate",
                "sqlite",
                |m, over| fault(m, "disk_full", if over { 0.02 } else { 0.01 }),
                Verdict::Act,
                "2% of writes fail because the disk holding the database is full",
                "free or grow the volume holding the data directory",
            ),
            c(
                "storage_error_rate",
                "postgres",
                |m, over| fault(m, "disk_full", if over { 0.02 } else { 0.01 }),
                Verdict::Act,
                "PostgreSQL's disk is full",
                "free or grow PostgreSQL's volume",
            ),
            c(
                "storage_error_rate",
                "sqlite",
                |m, over| fault(m, "read_only", if over { 0.5 } else { 0.01 }),
                Verdict::Act,
                "50% of writes fail because the database file is read-only",
                "make the data directory and its files writable",
            ),
            c(
                "storage_error_rate",
                "postgres",
                |m, over| fault(m, "read_only", if over { 0.5 } else { 0.01 }),
                Verdict::Act,
                "PostgreSQL is read-only (a standby?)",
                "point ferry at the PostgreSQL primary",
            ),
            c(
                "storage_error_rate",
                "sqlite",
                |m, over| fault(m, "io_error", if over { 0.011 } else { 0.01 }),
                Verdict::Act,
                "1.1% of writes fail with I/O errors",
                "check the volume",
            ),
            c(
                "busy_error_rate",
                "sqlite",
                |m, over| fault(m, "busy", if over { 0.018 } else { 0.01 }),
                Verdict::MigrateNow,
                "1.8% of writes time out waiting for the single writer",
                "move to PostgreSQL now (ferry migrate",
            ),
            c(
                "busy_error_rate",
                "postgres",
                |m, over| fault(m, "busy", if over { 0.018 } else { 0.01 }),
                Verdict::MigrateNow,
                "waiting for the database's locks or connections",
                "add ferry nodes or database capacity now",
            ),
            c(
                "unreachable_error_rate",
                "postgres",
                |m, over| fault(m, "unreachable", if over { 0.3 } else { 0.01 }),
                Verdict::Act,
                "30% of writes fail because the database cannot be reached",
                "check PostgreSQL is up and reachable (pg_isready",
            ),
            c(
                "other_error_rate",
                "sqlite",
                |m, over| fault(m, "other", if over { 0.02 } else { 0.01 }),
                Verdict::Act,
                "2% of writes fail with unexpected database errors",
                "read the server log",
            ),
            c(
                "disk_free_share",
                "sqlite",
                |m, over| {
                    m.now.disk_total_bytes = Some(100 << 30);
                    m.now.disk_free_bytes = Some(if over { (10 << 30) - 1 } else { 10 << 30 });
                },
                Verdict::Act,
                "the volume holding the database has 10.0 GiB free of 100.0 GiB",
                "free or grow the volume, and shorten retention",
            ),
            c(
                "db_bytes",
                "sqlite",
                |m, over| m.now.db_bytes = if over { (20 << 30) + 1 } else { 20 << 30 },
                Verdict::PlanMigration,
                "the database has grown to 20.0 GiB",
                "plan the move to PostgreSQL",
            ),
            c(
                "db_bytes",
                "postgres",
                |m, over| m.now.db_bytes = if over { (20 << 30) + 1 } else { 20 << 30 },
                Verdict::PlanMigration,
                "the database has grown to 20.0 GiB",
                "plan more ferry nodes or more database capacity",
            ),
            c(
                "writer_utilization",
                "sqlite",
                |m, over| m.window.writer_utilization = if over { 0.75 } else { 0.70 },
                Verdict::PlanMigration,
                "the single writer is busy 75% of the time",
                "plan the move to PostgreSQL",
            ),
            c(
                "writer_utilization",
                "sqlite",
                |m, over| m.window.writer_utilization = if over { 0.95 } else { 0.70 },
                Verdict::MigrateNow,
                "the single writer is busy 95% of the time",
                "move to PostgreSQL now",
            ),
            c(
                "claim_hosts",
                "sqlite",
                |m, over| m.window.claim_hosts = if over { 2 } else { 1 },
                Verdict::PlanMigration,
                "workers on 2 hosts claim from this one node",
                "plan the move to PostgreSQL",
            ),
            c(
                "busy_wait_share",
                "sqlite",
                |m, over| m.window.busy_wait_share = if over { 0.051 } else { 0.05 },
                Verdict::PlanMigration,
                "5.1% of writes waited for the writer or a connection",
                "plan the move to PostgreSQL",
            ),
            c(
                "hosts",
                "sqlite",
                |m, over| m.now.hosts = if over { 11 } else { 10 },
                Verdict::PlanMigration,
                "11 hosts are registered for probing",
                "plan the move to PostgreSQL",
            ),
            c(
                "dlq_growth",
                "sqlite",
                |m, over| m.window.dlq_growth = if over { 1001 } else { 1000 },
                Verdict::Act,
                "1001 jobs failed past their retries in the window",
                "see why with ferry dlq list",
            ),
            // The issue's case: a queue nobody consumes, the writer 1% busy.
            c(
                "oldest_ready_age_s",
                "sqlite",
                |m, over| {
                    m.now.oldest_ready_age_s = if over { 301.0 } else { 300.0 };
                    m.now.oldest_ready_queue = Some("emails".into());
                    m.window.writer_utilization = 0.01;
                },
                Verdict::Act,
                "no worker is consuming: queue \"emails\" has waited 301 s with 0 active workers",
                "start workers for queue \"emails\"",
            ),
            c(
                "oldest_ready_age_s",
                "postgres",
                |m, over| {
                    m.now.oldest_ready_age_s = if over { 301.0 } else { 300.0 };
                    m.now.oldest_ready_queue = Some("emails".into());
                    (m.now.workers_active, m.window.started_per_sec, m.window.enqueued_per_sec) =
                        (2, 3.0, 9.0);
                    m.window.writer_utilization = 0.2;
                },
                Verdict::Act,
                "too few consumers: queue \"emails\" has waited 301 s while 2 workers start 3.0 jobs/s (9.0/s enqueued)",
                "add workers for queue \"emails\" or raise their concurrency",
            ),
            c(
                "checkpoint_load",
                "sqlite",
                |m, over| m.window.checkpoint_writes_per_sec = if over { 1_500.0 } else { 1_400.0 },
                Verdict::PlanMigration,
                "checkpoint writes run at 75% of what one node sustains",
                "plan the move to PostgreSQL",
            ),
            c(
                "checkpoint_write_errors",
                "sqlite",
                |m, over| {
                    m.window.checkpoint_writes_per_sec = 150.0;
                    m.window.checkpoint_write_error_rate = if over { 0.02 } else { 0.01 };
                },
                Verdict::MigrateNow,
                "checkpoint writes run at 150/s and 2% of them fail",
                "move to PostgreSQL now",
            ),
        ]
    }

    #[test]
    fn each_rule_on_both_sides_of_its_threshold_with_its_cause_and_remedy() {
        for case in cases() {
            let name = format!("{} on {}", case.metric, case.backend);
            let mut m = base(case.backend);
            (case.set)(&mut m, false);
            let e = eval(&m);
            assert_eq!(e.verdict, Verdict::Stay, "{name} at its threshold: {}", e.justification);
            let f = finding(&e, case.metric);
            assert_eq!((f.verdict, f.cause.as_str(), f.remedy.as_str()), (Verdict::Stay, "", ""), "{name}");
            assert_eq!(e.remedy, "no change needed");
            (case.set)(&mut m, true);
            let e = eval(&m);
            assert_eq!(e.verdict, case.verdict, "{name} past its threshold: {}", e.justification);
            let f = finding(&e, case.metric);
            assert!(f.cause.contains(case.cause), "{name}: cause {:?} lacks {:?}", f.cause, case.cause);
            assert!(f.remedy.contains(case.remedy), "{name}: remedy {:?} lacks {:?}", f.remedy, case.remedy);
            assert!(
                e.justification.split(" - ").nth(1).unwrap().starts_with(&f.text),
                "{name}: decides first"
            );
            assert_eq!(
                (e.cause.as_str(), e.remedy.as_str()),
                (f.cause.as_str(), f.remedy.as_str()),
                "{name}"
            );
            // Only rules a migration fixes speak of migrating.
            let migrates = e.remedy.contains("ferry migrate") || e.remedy.contains("capacity");
            let by_migration = matches!(case.verdict, Verdict::PlanMigration | Verdict::MigrateNow);
            assert_eq!(migrates, by_migration, "{name}: {}", e.remedy);
        }
    }

    #[test]
    fn a_full_disk_is_acted_on_not_migrated() {
        let mut m = base("sqlite");
        (m.now.disk_free_bytes, m.now.disk_total_bytes) = (Some(1 << 20), Some(50 << 30));
        fault(&mut m, "disk_full", 0.4);
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Act, "{}", e.justification);
        assert!(!e.action.contains("PostgreSQL"), "{}", e.action);
        assert!(e.remedy.contains("free or grow the volume"), "{}", e.remedy);
        assert!(e.cause.contains("disk holding the database is full"), "{}", e.cause);
        assert!(e.cause.contains("1.0 MiB free of 50.0 GiB"), "{}", e.cause);
    }

    #[test]
    fn a_full_disk_is_named_first_even_when_a_migration_decides() {
        let mut m = base("sqlite");
        fault(&mut m, "disk_full", 0.05);
        m.window.writer_utilization = 0.95;
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::MigrateNow);
        assert!(
            e.cause.starts_with("5% of writes fail because the disk holding the database is full; "),
            "{}",
            e.cause
        );
        assert!(e.remedy.starts_with("free or grow the volume"), "{}", e.remedy);
        assert!(e.remedy.contains("move to PostgreSQL now"), "{}", e.remedy);
    }

    #[test]
    fn a_backlog_behind_a_busy_writer_plans_the_migration() {
        let mut m = base("sqlite");
        m.now.oldest_ready_age_s = 400.0;
        m.now.oldest_ready_queue = Some("q".into());
        (m.now.workers_active, m.window.started_per_sec) = (8, 500.0);
        m.window.writer_utilization = 0.8;
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::PlanMigration);
        let f = finding(&e, "oldest_ready_age_s");
        assert_eq!(f.verdict, Verdict::PlanMigration);
        assert!(f.cause.contains("more workers would not drain them"), "{}", f.cause);
        // Remedies are not repeated, and the action holds every remedy.
        assert_eq!(
            e.remedy,
            "plan the move to PostgreSQL (ferry migrate --from <data-dir>/ferry.db --to postgres://...)"
        );
        m.window.dlq_growth = 5_000;
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Act);
        assert!(e.action.starts_with("see why with ferry dlq list"), "{}", e.action);
        assert!(e.action.contains("then ferry dlq replay"), "{}", e.action);
        assert!(e.action.contains("plan the move to PostgreSQL"), "{}", e.action);
    }

    #[test]
    fn healthy_is_stay_and_names_every_metric() {
        let mut m = base("sqlite");
        (m.now.disk_free_bytes, m.now.disk_total_bytes) = (Some(90 << 30), Some(100 << 30));
        let e = eval(&m);
        assert_eq!(e.verdict, Verdict::Stay);
        assert_eq!(e.findings.len(), 14, "every rule reports");
        assert_eq!(eval(&base("postgres")).findings.len(), 13, "no data-directory disk on PostgreSQL");
        for part in [
            "storage write errors 0% <= 1%",
            "write errors from a busy writer 0% <= 1%",
            "writer utilization 0% <= 70%",
            "hosts claiming 0 <= 1",
            "lock/busy waits 0% of writes <= 5%",
            "disk free 90% >= 10%",
            "database 0.0 MiB <= 20.0 GiB",
            "DLQ growth 0 jobs <= 1000",
            "oldest ready job 0 s <= 300 s",
            "registered hosts 0 <= 10",
            "checkpoint writes 0/s <= 100/s with errors 0% <= 1%",
        ] {
            assert!(e.justification.contains(part), "{part:?} missing from {}", e.justification);
        }
        assert!(e.justification.starts_with("STAY - "));
        assert_eq!(e.cause, "every measurement is within its threshold");
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
                cause: String::new(),
                remedy: String::new(),
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

    #[test]
    fn history_written_before_causes_existed_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let old = r#"{"verdict":"PLAN MIGRATION","justification":"PLAN MIGRATION - x","action":"plan","findings":[{"metric":"db_bytes","value":1.0,"threshold":0.0,"verdict":"PLAN MIGRATION","text":"x"}],"backend":"sqlite","at_ms":7,"window_s":1.0,"trigger":"schedule"}"#;
        std::fs::write(&path, format!("{old}\n")).unwrap();
        let a = Advisor::new(AdvisorConfig::default(), Some(path));
        assert_eq!(a.history().len(), 1);
        assert_eq!(a.history()[0].cause, "");
    }
}
