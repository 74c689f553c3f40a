//! Bodies of the scaling advisor's endpoints (`/v1/advice`, `/v1/advice/history`): its
//! verdicts, their findings, and the measurements they are drawn from. The rules themselves
//! live in the server.

use super::stats::{Gauges, WindowStats};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The verdicts, mildest first: only rules a migration fixes say migrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Verdict {
    /// The current setup has room.
    #[serde(rename = "STAY")]
    Stay,
    /// Start planning: a limit is near.
    #[serde(rename = "PLAN MIGRATION")]
    PlanMigration,
    /// Something other than a migration needs doing now (a full disk, a queue nobody
    /// consumes, failing jobs): the remedy names it.
    #[serde(rename = "ACT")]
    Act,
    /// A limit is reached or data is at risk.
    #[serde(rename = "MIGRATE NOW")]
    MigrateNow,
}

impl Verdict {
    /// Wire and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Stay => "STAY",
            Verdict::PlanMigration => "PLAN MIGRATION",
            Verdict::Act => "ACT",
            Verdict::MigrateNow => "MIGRATE NOW",
        }
    }
}

/// What the advisor measured (the window's figures and the current readings).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurements {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Window figures.
    pub window: WindowStats,
    /// Readings now.
    pub now: Gauges,
}

/// One rule's finding.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Finding {
    /// Metric name, e.g. `write_error_rate`.
    pub metric: String,
    /// Measured value.
    pub value: f64,
    /// The threshold it is compared with.
    pub threshold: f64,
    /// This rule's verdict (`STAY` when within the threshold).
    pub verdict: Verdict,
    /// The finding in words, e.g. `write errors 1.8% > 1%`.
    pub text: String,
    /// What the measurement means, when over its threshold (empty otherwise).
    #[serde(default)]
    pub cause: String,
    /// What fixes that cause, when over its threshold (empty otherwise).
    #[serde(default)]
    pub remedy: String,
}

/// One evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Advice {
    /// The overall verdict: the most severe finding.
    pub verdict: Verdict,
    /// `MIGRATE NOW - write errors 1.8% > 1%; ...`: every metric, value and threshold.
    pub justification: String,
    /// Why: the causes of the deciding findings (or that every measurement is within bounds).
    #[serde(default)]
    pub cause: String,
    /// What fixes those causes on this backend.
    #[serde(default)]
    pub remedy: String,
    /// Every remedy of every finding over its threshold, the deciding ones first.
    pub action: String,
    /// Every rule's finding.
    pub findings: Vec<Finding>,
    /// Storage backend evaluated.
    pub backend: String,
    /// When it was evaluated, epoch ms.
    pub at_ms: i64,
    /// Seconds of measurements the window covered.
    pub window_s: f64,
    /// `schedule` or `request`.
    pub trigger: String,
}

/// `GET /v1/advice/history` answer.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AdviceHistory {
    /// Past decisions, oldest first.
    pub decisions: Vec<Advice>,
}

/// `GET /v1/advice` query.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdviceQuery {
    /// Keep this verdict in the history (`GET /v1/advice/history`); by default a requested
    /// verdict is only returned and logged, so asking does not push scheduled ones out.
    pub record: Option<bool>,
}
