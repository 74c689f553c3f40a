//! Turning untrusted input into validated values, with a field path on every error.
//!
//! Shapes (JSON types) are checked by serde and answered with 400; everything here is a
//! semantic check answered with 422, or a size check answered with 413.

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::job::{NewJob, RunAt};
use crate::limits::Limits;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A job as a producer writes it (the body of `POST /v1/jobs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Queue name: 1–128 of `[A-Za-z0-9._:-]`.
    pub queue: String,
    /// Any JSON; `null` when absent.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Box<RawValue>>,
    /// Higher first (an i32); default 0.
    #[serde(default, deserialize_with = "opt_int")]
    pub priority: Option<i64>,
    /// RFC 3339 time when the job becomes due.
    #[serde(default)]
    pub run_at: Option<String>,
    /// Milliseconds from now until the job becomes due (exclusive with `run_at`).
    #[serde(default, deserialize_with = "opt_int")]
    pub delay_ms: Option<i64>,
    /// Attempts before the job is dead; default 5.
    #[serde(default, deserialize_with = "opt_int")]
    pub max_attempts: Option<i64>,
    /// Retry spacing; defaults documented on [`Backoff`].
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Lease per claim; default 30,000.
    #[serde(default, deserialize_with = "opt_int")]
    pub lease_ms: Option<i64>,
    /// Deduplication key while a job with it is unfinished.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// Ids of jobs that must complete first.
    #[serde(default)]
    pub depends_on: Option<Vec<String>>,
    /// Labels.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// An optional integer where `-0` (which JSON parsers read as a float) means 0.
fn opt_int<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<i64>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Option<i64>, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Option<i64>, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Option<i64>, E> {
            if v == 0.0 { Ok(Some(0)) } else { Err(E::invalid_type(serde::de::Unexpected::Float(v), &self)) }
        }
        fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Option<i64>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// Default attempts before a job is dead.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default lease length.
pub const DEFAULT_LEASE_MS: i64 = 30_000;

/// Checks a queue name: 1..=limit characters of `[A-Za-z0-9._:-]`.
pub fn queue_name(name: &str, limits: &Limits, field: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "queue name must not be empty"));
    }
    if name.len() > limits.max_queue_name_len {
        return Err(Error::invalid(
            field,
            format!("queue name is {} bytes; the limit is {}", name.len(), limits.max_queue_name_len),
        ));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(Error::invalid(
            field,
            format!("queue name may use only A-Z a-z 0-9 . _ : - (found {c:?})"),
        ));
    }
    Ok(())
}

/// Checks a worker name: 1..=limit printable characters.
pub fn worker_name(name: &str, limits: &Limits, field: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "worker name must not be empty"));
    }
    if name.len() > limits.max_worker_name_len {
        return Err(Error::invalid(
            field,
            format!("worker name is {} bytes; the limit is {}", name.len(), limits.max_worker_name_len),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "worker name must not contain control characters"));
    }
    Ok(())
}

/// Checks a lease length against the limits.
pub fn lease_ms(ms: i64, limits: &Limits, field: &str) -> Result<i64> {
    if ms < limits.min_lease_ms || ms > limits.max_lease_ms {
        return Err(Error::invalid(
            field,
            format!("lease must be {}..={} ms, got {ms}", limits.min_lease_ms, limits.max_lease_ms),
        ));
    }
    Ok(ms)
}

/// Parses a job id.
pub fn job_id(text: &str, field: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| Error::invalid(field, format!("{text:?} is not a job id (a UUID)")))
}

/// Truncates an error message to the limit at a character boundary, marking the cut.
pub fn truncate_error(mut message: String, limits: &Limits) -> String {
    if message.len() > limits.max_error_len {
        let mut cut = limits.max_error_len;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("…[truncated]");
    }
    message
}

/// Checks a JSON value's size, for payloads and results.
pub fn json_size(value: &RawValue, max: usize, field: &str) -> Result<()> {
    let len = value.get().len();
    if len > max {
        return Err(Error::too_large(field, format!("{field} is {len} bytes; the limit is {max}")));
    }
    Ok(())
}

impl JobSpec {
    /// Validates every field and returns the job the store accepts.
    pub fn validate(self, limits: &Limits) -> Result<NewJob> {
        queue_name(&self.queue, limits, "queue")?;
        let payload = match self.payload {
            Some(p) => {
                json_size(&p, limits.max_payload_bytes, "payload")?;
                p
            }
            None => RawValue::from_string("null".into()).expect("null is valid JSON"),
        };
        let priority = match self.priority {
            None => 0,
            Some(p) => i32::try_from(p)
                .map_err(|_| Error::invalid("priority", format!("priority must fit in an i32, got {p}")))?,
        };
        let run_at = match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid("delay_ms", "give run_at or delay_ms, not both"));
            }
            (Some(text), None) => RunAt::At(crate::time::parse_rfc3339_ms(&text, "run_at")?),
            (None, Some(d)) if d < 0 => {
                return Err(Error::invalid("delay_ms", format!("delay_ms must be ≥ 0, got {d}")));
            }
            (None, Some(d)) if d > limits.max_delay_ms => {
                return Err(Error::invalid(
                    "delay_ms",
                    format!("delay_ms is {d}; the limit is {}", limits.max_delay_ms),
                ));
            }
            (None, Some(0)) | (None, None) => RunAt::Now,
            (None, Some(d)) => RunAt::Delay(d),
        };
        let max_attempts = match self.max_attempts {
            None => DEFAULT_MAX_ATTEMPTS,
            Some(n) if n >= 1 && n <= i64::from(limits.max_attempts) => n as u32,
            Some(n) => {
                return Err(Error::invalid(
                    "max_attempts",
                    format!("max_attempts must be 1..={}, got {n}", limits.max_attempts),
                ));
            }
        };
        let backoff = self.backoff.unwrap_or_default();
        if backoff.base_ms < 0 {
            return Err(Error::invalid("backoff.base_ms", "base_ms must be ≥ 0"));
        }
        if backoff.max_ms < 0 || backoff.max_ms > limits.max_delay_ms {
            return Err(Error::invalid(
                "backoff.max_ms",
                format!("max_ms must be 0..={}", limits.max_delay_ms),
            ));
        }
        if !(backoff.factor.is_finite() && (1.0..=100.0).contains(&backoff.factor)) {
            return Err(Error::invalid("backoff.factor", "factor must be in 1..=100"));
        }
        if !(backoff.jitter.0.is_finite() && (0.0..=1.0).contains(&backoff.jitter.0)) {
            return Err(Error::invalid("backoff.jitter", "jitter must be in 0..=1"));
        }
        let lease = lease_ms(self.lease_ms.unwrap_or(DEFAULT_LEASE_MS), limits, "lease_ms")?;
        let unique_key = match self.unique_key {
            Some(k) if k.is_empty() => {
                return Err(Error::invalid("unique_key", "unique_key must not be empty"));
            }
            Some(k) if k.len() > limits.max_unique_key_len => {
                return Err(Error::invalid(
                    "unique_key",
                    format!("unique_key is {} bytes; the limit is {}", k.len(), limits.max_unique_key_len),
                ));
            }
            other => other,
        };
        let deps_text = self.depends_on.unwrap_or_default();
        if deps_text.len() > limits.max_depends_on {
            return Err(Error::invalid(
                "depends_on",
                format!("{} dependencies; the limit is {}", deps_text.len(), limits.max_depends_on),
            ));
        }
        let mut depends_on = Vec::with_capacity(deps_text.len());
        for (i, text) in deps_text.iter().enumerate() {
            let id = job_id(text, &format!("depends_on[{i}]"))?;
            if !depends_on.contains(&id) {
                depends_on.push(id);
            }
        }
        let tags = self.tags.unwrap_or_default();
        if tags.len() > limits.max_tags {
            return Err(Error::invalid(
                "tags",
                format!("{} tags; the limit is {}", tags.len(), limits.max_tags),
            ));
        }
        for (i, tag) in tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > limits.max_tag_len || tag.chars().any(char::is_control) {
                return Err(Error::invalid(
                    format!("tags[{i}]"),
                    format!("a tag is 1..={} bytes without control characters", limits.max_tag_len),
                ));
            }
        }
        Ok(NewJob {
            queue: self.queue,
            payload,
            priority,
            run_at,
            max_attempts,
            backoff,
            lease_ms: lease,
            unique_key,
            depends_on,
            tags,
            import: None,
        })
    }
}

/// Validates a batch: all or nothing, with the index in the field path.
pub fn batch(specs: Vec<JobSpec>, limits: &Limits) -> Result<Vec<NewJob>> {
    if specs.is_empty() {
        return Err(Error::invalid("jobs", "a batch needs at least one job"));
    }
    if specs.len() > limits.max_batch {
        return Err(Error::too_large(
            "jobs",
            format!("{} jobs; the batch limit is {}", specs.len(), limits.max_batch),
        ));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.validate(limits).map_err(|e| e.within(&format!("jobs[{i}]"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> JobSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn negative_zero_is_zero_and_fractions_are_refused() {
        let j = spec(r#"{"queue":"q","priority":-0,"delay_ms":-0.0}"#);
        assert_eq!((j.priority, j.delay_ms), (Some(0), Some(0)));
        assert!(serde_json::from_str::<JobSpec>(r#"{"queue":"q","priority":1.5}"#).is_err());
        assert!(
            serde_json::from_str::<JobSpec>(r#"{"queue":"q","priority":null}"#).unwrap().priority.is_none()
        );
    }

    #[test]
    fn defaults() {
        let j = spec(r#"{"queue":"q"}"#).validate(&Limits::default()).unwrap();
        assert_eq!(j.payload.get(), "null");
        assert_eq!((j.priority, j.max_attempts, j.lease_ms), (0, 5, 30_000));
        assert_eq!(j.run_at, RunAt::Now);
    }

    #[test]
    fn rejects_with_field_paths() {
        let l = Limits::default();
        let cases = [
            (r#"{"queue":""}"#, "queue"),
            (r#"{"queue":"a b"}"#, "queue"),
            (r#"{"queue":"q","delay_ms":-1}"#, "delay_ms"),
            (r#"{"queue":"q","priority":3000000000}"#, "priority"),
            (r#"{"queue":"q","max_attempts":0}"#, "max_attempts"),
            (r#"{"queue":"q","lease_ms":1}"#, "lease_ms"),
            (r#"{"queue":"q","depends_on":["nope"]}"#, "depends_on[0]"),
            (r#"{"queue":"q","tags":["ok",""]}"#, "tags[1]"),
            (r#"{"queue":"q","backoff":{"factor":0.5}}"#, "backoff.factor"),
            (r#"{"queue":"q","run_at":"2024-01-01T00:00:00Z","delay_ms":5}"#, "delay_ms"),
        ];
        for (json, field) in cases {
            let e = spec(json).validate(&l).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{json}");
            assert_eq!(e.code.http_status(), 422, "{json}");
        }
        let long = format!(r#"{{"queue":"{}"}}"#, "q".repeat(129));
        assert_eq!(spec(&long).validate(&l).unwrap_err().field.as_deref(), Some("queue"));
        let ok = format!(r#"{{"queue":"{}"}}"#, "q".repeat(128));
        assert!(spec(&ok).validate(&l).is_ok());
    }

    #[test]
    fn payload_limit_is_413() {
        let l = Limits { max_payload_bytes: 10, ..Limits::default() };
        let e = spec(r#"{"queue":"q","payload":"0123456789"}"#).validate(&l).unwrap_err();
        assert_eq!(e.code.http_status(), 413);
        assert!(spec(r#"{"queue":"q","payload":"01234567"}"#).validate(&l).is_ok());
    }

    #[test]
    fn batch_is_all_or_nothing_with_index() {
        let l = Limits { max_batch: 2, ..Limits::default() };
        let e = batch(vec![spec(r#"{"queue":"q"}"#), spec(r#"{"queue":"!"}"#)], &l).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("jobs[1].queue"));
        let three = vec![spec(r#"{"queue":"q"}"#); 3];
        assert_eq!(batch(three, &l).unwrap_err().code.http_status(), 413);
    }

    #[test]
    fn truncates_errors_at_char_boundary() {
        let l = Limits { max_error_len: 4, ..Limits::default() };
        assert_eq!(truncate_error("ééé".into(), &l), "éé…[truncated]");
        assert_eq!(truncate_error("abc".into(), &l), "abc");
    }
}
