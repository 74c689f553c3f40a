//! Cron schedules: parsing (with the position of an error), the ticks of a time zone, and
//! the pure decision of which ticks to enqueue after the scheduler (or the whole server) was
//! away for a while.
//!
//! Daylight-saving time follows croner's rules (vixie-cron's): a tick whose wall time is
//! skipped by a spring-forward gap runs at the first valid time after the gap for fixed-time
//! expressions (so a daily 02:30 job still runs that day), and not at all for interval
//! expressions (`*/15 2 * * *` has no 02:xx that day); a wall time repeated by a fall-back
//! overlap runs once for fixed-time expressions, and for every real occurrence for interval
//! expressions. Ticks are instants: two ticks are never the same instant, so nothing runs
//! twice for one tick.

use crate::validate::{self, JobSpec};
use crate::{Error, Limits, NewJob, Result, Timestamp};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How late a tick may be enqueued under `skip` before it counts as missed.
pub const MISFIRE_GRACE_MS: i64 = 30_000;

/// What to do with ticks missed while ferry (or its scheduler) was not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Drop missed ticks; run only a tick that is due within the grace period.
    Skip,
    /// Run once for all the missed ticks (the latest one).
    RunOnce,
    /// Run every missed tick, the newest `catch_up_max` of them, oldest first.
    CatchUp,
}

impl Misfire {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::RunOnce => "run_once",
            Misfire::CatchUp => "catch_up",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Misfire> {
        [Misfire::Skip, Misfire::RunOnce, Misfire::CatchUp].into_iter().find(|m| m.as_str() == s)
    }
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: TimeZone,
}

const FIELDS_5: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];
const FIELDS_6: [&str; 6] = ["second", "minute", "hour", "day of month", "month", "day of week"];

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build()
}

/// Parses `expr` (5 or 6 fields, or `@hourly`, `@daily`...); a 422 on field `cron` names the
/// offending field and its character position.
pub fn parse_cron(expr: &str) -> Result<Cron> {
    let err = |pos: usize, msg: String| Err(Error::invalid("cron", msg).at(pos));
    let trimmed = expr.trim_start();
    let lead = expr.len() - trimmed.len();
    if trimmed.is_empty() {
        return err(0, "the cron expression is empty".into());
    }
    if trimmed.starts_with('@') {
        return parser().parse(trimmed).or_else(|e| {
            err(
                lead,
                format!(
                    "unknown cron nickname at position {lead}: {e} (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
                ),
            )
        });
    }
    // Tokens with their offsets.
    let mut tokens: Vec<(usize, &str)> = Vec::new();
    let mut start = None;
    for (i, c) in expr.char_indices().chain(std::iter::once((expr.len(), ' '))) {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                tokens.push((s, &expr[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if tokens.len() < 5 {
        return err(
            expr.len(),
            format!("expected 5 or 6 fields, found {} (at position {})", tokens.len(), expr.len()),
        );
    }
    if tokens.len() > 6 {
        let pos = tokens[6].0;
        return err(
            pos,
            format!(
                "expected 5 or 6 fields, found {}; the extra field starts at position {pos}",
                tokens.len()
            ),
        );
    }
    let names: &[&str] = if tokens.len() == 5 { &FIELDS_5 } else { &FIELDS_6 };
    match parser().parse(expr.trim()) {
        Ok(c) => Ok(c),
        Err(whole) => {
            // Find the first field that is wrong on its own.
            for i in 0..tokens.len() {
                let probe: Vec<&str> =
                    tokens.iter().enumerate().map(|(j, t)| if i == j { t.1 } else { "*" }).collect();
                if let Err(e) = parser().parse(&probe.join(" ")) {
                    let (pos, text) = tokens[i];
                    return err(pos, format!("invalid {} field {text:?} at position {pos}: {e}", names[i]));
                }
            }
            err(lead, format!("invalid cron expression: {whole}"))
        }
    }
}

/// Looks up an IANA time zone; a 422 on field `timezone` otherwise.
pub fn parse_timezone(name: &str) -> Result<TimeZone> {
    // Names whose meaning is the host's setting, not a zone: a schedule would fire at
    // different instants on different nodes.
    let host_dependent = ["localtime", "posixrules", "factory"].contains(&name.to_ascii_lowercase().as_str())
        || name.starts_with("posix/")
        || name.starts_with("right/");
    if host_dependent {
        return Err(Error::invalid(
            "timezone",
            format!(
                "{name:?} depends on the host's configuration; use an IANA name such as Europe/Paris or UTC"
            ),
        )
        .at(0));
    }
    if name.is_empty() || name.len() > 64 {
        return Err(
            Error::invalid("timezone", "a time zone is an IANA name such as Europe/Paris or UTC").at(0)
        );
    }
    TimeZone::get(name).map_err(|_| {
        Error::invalid(
            "timezone",
            format!("unknown time zone {name:?} (use an IANA name such as Europe/Paris)"),
        )
        .at(0)
    })
}

impl CronSpec {
    /// Parses an expression and a zone.
    pub fn parse(expr: &str, timezone: &str) -> Result<CronSpec> {
        let spec = CronSpec { cron: parse_cron(expr)?, tz: parse_timezone(timezone)? };
        if spec.next_after(jiff::Timestamp::now().as_millisecond()).is_none() {
            return Err(Error::invalid(
                "cron",
                format!("{expr:?} never fires (no such date, e.g. February 30)"),
            )
            .at(0));
        }
        Ok(spec)
    }

    fn zoned(&self, ms: i64) -> Option<jiff::Zoned> {
        Some(jiff::Timestamp::from_millisecond(ms).ok()?.to_zoned(self.tz.clone()))
    }

    /// The first tick strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let z = self.zoned(ms)?;
        let next = self.cron.find_next_occurrence(&z, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The latest tick at or before `ms`.
    pub fn latest_at_or_before(&self, ms: i64) -> Option<i64> {
        let z = self.zoned(ms)?;
        let prev = self.cron.find_previous_occurrence(&z, true).ok()?;
        Some(prev.timestamp().as_millisecond())
    }

    /// The next `n` ticks after `ms`.
    pub fn upcoming(&self, ms: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut at = ms;
        while out.len() < n {
            match self.next_after(at) {
                Some(t) => {
                    out.push(t);
                    at = t;
                }
                None => break,
            }
        }
        out
    }

    /// Which ticks to enqueue now and the next tick to wait for, given the tick the schedule
    /// was waiting for (`next_run_at`, already due).
    pub fn plan(
        &self,
        next_run_at: i64,
        now: i64,
        misfire: Misfire,
        catch_up_max: u32,
    ) -> (Vec<i64>, Option<i64>) {
        let next = self.next_after(now);
        if next_run_at > now {
            return (Vec::new(), Some(next_run_at));
        }
        let want = match misfire {
            Misfire::CatchUp => catch_up_max.max(1) as usize,
            _ => 1,
        };
        // Walk back from now: only the newest `want` ticks can matter.
        let mut ticks = Vec::with_capacity(want);
        let mut at = now;
        while ticks.len() < want {
            match self.latest_at_or_before(at) {
                Some(t) if t >= next_run_at => {
                    ticks.push(t);
                    at = t - 1;
                }
                _ => break,
            }
        }
        ticks.reverse();
        if misfire == Misfire::Skip {
            ticks.retain(|t| now - t <= MISFIRE_GRACE_MS);
        }
        (ticks, next)
    }
}

/// A schedule as a client writes it (`POST /v1/schedules`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique name (same rules as a queue name).
    #[schema(value_type = crate::validate::names::QueueName)]
    pub name: String,
    /// Cron expression: 5 fields (minute first), 6 (second first), or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`. An invalid one is 422 with `position`.
    #[schema(example = "*/15 9-17 * * MON-FRI")]
    pub cron: String,
    /// IANA time zone the expression is read in; default `UTC`. An unknown one is 422.
    #[serde(default)]
    #[schema(example = "Europe/Paris")]
    pub timezone: Option<String>,
    /// The job each tick enqueues (no `run_at`, `delay_ms`, `unique_key` or `depends_on`:
    /// ferry sets the unique key to `schedule:<name>:<tick ms>`).
    #[schema(schema_with = job_template_ref)]
    pub job: JobSpec,
    /// `skip`, `run_once` (default) or `catch_up`.
    #[serde(default)]
    #[schema(value_type = Option<Misfire>)]
    pub misfire: Option<String>,
    /// Most missed ticks `catch_up` enqueues, at most `limits.max_catch_up` (default 100).
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub catch_up_max: Option<u32>,
    /// Create it paused.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// A change to a schedule (`PATCH /v1/schedules/{name}`); absent fields stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulePatch {
    /// New cron expression.
    #[serde(default)]
    pub cron: Option<String>,
    /// New time zone.
    #[serde(default)]
    pub timezone: Option<String>,
    /// New job template.
    #[serde(default)]
    #[schema(schema_with = optional_job_template_ref)]
    pub job: Option<JobSpec>,
    /// New misfire policy.
    #[serde(default)]
    #[schema(value_type = Option<Misfire>)]
    pub misfire: Option<String>,
    /// New catch-up cap, at most `limits.max_catch_up`.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub catch_up_max: Option<u32>,
    /// Pause or resume.
    #[serde(default)]
    pub paused: Option<bool>,
}

/// Name of the `JobTemplate` schema: a [`JobSpec`] without the fields ferry sets per tick
/// ([`check_template`]). The server's OpenAPI document derives it from `JobSpec`.
pub const JOB_TEMPLATE_SCHEMA: &str = "JobTemplate";

fn job_template_ref() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name(JOB_TEMPLATE_SCHEMA)
}

fn optional_job_template_ref() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(job_template_ref())
        .item(utoipa::openapi::schema::Object::with_type(utoipa::openapi::schema::Type::Null))
        .into()
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    /// Unique name.
    pub name: String,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// The job template.
    #[schema(value_type = Object)]
    pub job: serde_json::Value,
    /// Misfire policy.
    pub misfire: Misfire,
    /// Catch-up cap.
    pub catch_up_max: u32,
    /// Whether ticks are ignored.
    pub paused: bool,
    /// The next tick it waits for (none when paused or when the expression has no more).
    #[schema(value_type = Option<String>)]
    pub next_run_at: Option<Timestamp>,
    /// The last tick it enqueued.
    #[schema(value_type = Option<String>)]
    pub last_run_at: Option<Timestamp>,
    /// When it was created.
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
    /// The next runs (only on `GET /v1/schedules/{name}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub next_runs: Vec<Timestamp>,
}

/// A job template as stored: absent fields left out.
fn template_json(job: &JobSpec) -> Result<serde_json::Value> {
    // Reading the payload back can fail (it nests too deep for the parser): the request's
    // error, never a panic.
    let mut v = serde_json::to_value(job)
        .map_err(|e| Error::invalid("job.payload", format!("the job template cannot be stored: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    Ok(v)
}

/// `GET /v1/schedules` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SchedulesResponse {
    /// Every schedule, by name.
    pub schedules: Vec<Schedule>,
}

/// `DELETE /v1/schedules/{name}` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeletedResponse {
    /// The schedule's name.
    pub name: String,
    /// Always true.
    pub deleted: bool,
}

/// Default catch-up cap.
pub const DEFAULT_CATCH_UP_MAX: u32 = 100;

/// Checks a job template: valid as a job, and without the fields ferry sets per tick.
pub fn check_template(job: &JobSpec, limits: &Limits) -> Result<()> {
    let field = |f: &str| {
        Err(Error::invalid(
            format!("job.{f}"),
            format!("a schedule's job cannot set {f}; ferry sets it per tick"),
        ))
    };
    if job.run_at.is_some() {
        return field("run_at");
    }
    if job.delay_ms.is_some() {
        return field("delay_ms");
    }
    if job.unique_key.is_some() {
        return field("unique_key");
    }
    if job.depends_on.as_ref().is_some_and(|d| !d.is_empty()) {
        return field("depends_on");
    }
    if job.payment.is_some() {
        return Err(Error::invalid("job.payment", "a schedule's jobs cannot be paid jobs"));
    }
    job.clone().validate(limits).map(|_| ()).map_err(|e| e.within("job"))
}

fn misfire_of(m: &str) -> Result<Misfire> {
    Misfire::parse(m)
        .ok_or_else(|| Error::invalid("misfire", format!("misfire is skip, run_once or catch_up, not {m:?}")))
}

fn catch_up_of(n: u32, limits: &Limits) -> Result<u32> {
    if n == 0 || n > limits.max_catch_up {
        return Err(Error::invalid(
            "catch_up_max",
            format!("catch_up_max must be 1..={}", limits.max_catch_up),
        ));
    }
    Ok(n)
}

/// Builds a full schedule from a spec, validated, waiting for its first tick after `now`.
pub fn from_spec(spec: ScheduleSpec, now: i64, limits: &Limits) -> Result<Schedule> {
    validate::queue_name(&spec.name, limits, "name")?;
    let timezone = spec.timezone.unwrap_or_else(|| "UTC".into());
    let cron = CronSpec::parse(&spec.cron, &timezone)?;
    check_template(&spec.job, limits)?;
    let misfire = spec.misfire.as_deref().map_or(Ok(Misfire::RunOnce), misfire_of)?;
    let catch_up_max = catch_up_of(spec.catch_up_max.unwrap_or(DEFAULT_CATCH_UP_MAX), limits)?;
    let paused = spec.paused.unwrap_or(false);
    Ok(Schedule {
        name: spec.name,
        cron: spec.cron,
        timezone,
        job: template_json(&spec.job)?,
        misfire,
        catch_up_max,
        paused,
        next_run_at: if paused { None } else { cron.next_after(now).map(Timestamp) },
        last_run_at: None,
        created_at: Timestamp(now),
        updated_at: Timestamp(now),
        next_runs: Vec::new(),
    })
}

/// Applies a patch; the next tick is recomputed from `now` when the timing changes or the
/// schedule resumes (a paused period is not caught up).
pub fn apply_patch(mut s: Schedule, p: SchedulePatch, now: i64, limits: &Limits) -> Result<Schedule> {
    let retime = p.cron.is_some() || p.timezone.is_some() || (p.paused == Some(false) && s.paused);
    if let Some(c) = p.cron {
        s.cron = c;
    }
    if let Some(tz) = p.timezone {
        s.timezone = tz;
    }
    let cron = CronSpec::parse(&s.cron, &s.timezone)?;
    if let Some(job) = p.job {
        check_template(&job, limits)?;
        s.job = template_json(&job)?;
    }
    if let Some(m) = p.misfire {
        s.misfire = misfire_of(&m)?;
    }
    if let Some(n) = p.catch_up_max {
        s.catch_up_max = catch_up_of(n, limits)?;
    }
    if let Some(paused) = p.paused {
        s.paused = paused;
    }
    if s.paused {
        s.next_run_at = None;
    } else if retime || s.next_run_at.is_none() {
        s.next_run_at = cron.next_after(now).map(Timestamp);
    }
    s.updated_at = Timestamp(now);
    Ok(s)
}

/// Jobs to enqueue with their ticks, and the next tick to wait for.
pub type FirePlan = (Vec<(i64, NewJob)>, Option<i64>);

/// The jobs a due schedule enqueues now (each with its tick's unique key) and its next tick.
pub fn plan_fire(s: &Schedule, now: i64, limits: &Limits) -> Result<FirePlan> {
    let Some(next_run_at) = s.next_run_at else { return Ok((Vec::new(), None)) };
    let cron = CronSpec::parse(&s.cron, &s.timezone)?;
    let (ticks, next) = cron.plan(next_run_at.0, now, s.misfire, s.catch_up_max);
    let template: JobSpec = serde_json::from_value(s.job.clone()).map_err(|e| {
        Error::internal(format!("stored job template of schedule {} is unreadable: {e}", s.name))
    })?;
    let mut jobs = Vec::with_capacity(ticks.len());
    for t in ticks {
        let mut spec = template.clone();
        spec.unique_key = Some(format!("schedule:{}:{t}", s.name));
        jobs.push((t, spec.validate(limits)?));
    }
    Ok((jobs, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn parses_five_six_fields_and_nicknames() {
        for e in ["*/5 * * * *", "0 30 2 * * *", "@hourly", "@daily", "0 9 * * MON-FRI"] {
            parse_cron(e).unwrap_or_else(|err| panic!("{e}: {err}"));
        }
    }

    #[test]
    fn expressions_that_never_fire_and_host_zones_are_refused() {
        let e = CronSpec::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cron"));
        assert!(CronSpec::parse("0 0 29 2 *", "UTC").is_ok(), "leap days come");
        for tz in ["localtime", "posixrules", "posix/Europe/Paris", "right/UTC"] {
            assert_eq!(parse_timezone(tz).unwrap_err().field.as_deref(), Some("timezone"), "{tz}");
        }
        assert!(parse_timezone("Etc/UTC").is_ok());
    }

    #[test]
    fn errors_name_the_position() {
        let e = parse_cron("0 25 * * *").unwrap_err();
        assert_eq!((e.field.as_deref(), e.position), (Some("cron"), Some(2)), "{e}");
        assert!(e.message.contains("hour"), "{}", e.message);
        let e = parse_cron("* * * *").unwrap_err();
        assert_eq!(e.position, Some(7));
        let e = parse_cron("* * * * * * *").unwrap_err();
        assert_eq!(e.position, Some(12));
        let e = parse_cron("@fortnightly").unwrap_err();
        assert_eq!(e.position, Some(0));
        let e = parse_timezone("Mars/Olympus").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timezone"));
    }

    #[test]
    fn spring_forward_runs_fixed_time_once_after_the_gap() {
        // Europe/Paris jumps from 02:00 to 03:00 on 2025-03-30.
        let c = CronSpec::parse("30 2 * * *", "Europe/Paris").unwrap();
        let t = c.next_after(ms("2025-03-29T12:00:00Z")).unwrap();
        assert_eq!(t, ms("2025-03-30T01:00:00Z"), "03:00 local, right after the gap");
        let t2 = c.next_after(t).unwrap();
        assert_eq!(t2, ms("2025-03-31T00:30:00Z"), "then 02:30 local again");
    }

    #[test]
    fn fall_back_runs_fixed_time_once() {
        // Europe/Paris repeats 02:00-03:00 on 2025-10-26.
        let c = CronSpec::parse("30 2 * * *", "Europe/Paris").unwrap();
        let t = c.next_after(ms("2025-10-25T12:00:00Z")).unwrap();
        assert_eq!(t, ms("2025-10-26T00:30:00Z"), "first 02:30 (CEST)");
        let t2 = c.next_after(t).unwrap();
        assert_eq!(t2, ms("2025-10-27T01:30:00Z"), "not again at 02:30 CET; next day");
    }

    #[test]
    fn misfire_policies() {
        let c = CronSpec::parse("0 * * * *", "UTC").unwrap();
        let first = ms("2025-01-01T00:00:00Z");
        let now = ms("2025-01-01T05:30:00Z");
        let (t, next) = c.plan(first, now, Misfire::Skip, 100);
        assert!(t.is_empty(), "all missed ticks are older than the grace period");
        assert_eq!(next, Some(ms("2025-01-01T06:00:00Z")));
        let (t, _) = c.plan(first, now, Misfire::RunOnce, 100);
        assert_eq!(t, vec![ms("2025-01-01T05:00:00Z")]);
        let (t, _) = c.plan(first, now, Misfire::CatchUp, 100);
        assert_eq!(t.len(), 6, "00:00 through 05:00");
        assert_eq!(t[0], first);
        let (t, _) = c.plan(first, now, Misfire::CatchUp, 2);
        assert_eq!(t, vec![ms("2025-01-01T04:00:00Z"), ms("2025-01-01T05:00:00Z")], "newest two");
        // On time: skip runs the tick.
        let (t, _) = c.plan(first, first + 10, Misfire::Skip, 1);
        assert_eq!(t, vec![first]);
    }
}
