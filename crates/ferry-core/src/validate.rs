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

/// A job as a producer writes it (the body of `POST /v1/jobs`). Absent and `null` fields take
/// their defaults. The bounds in the schema are the default `[limits]`; the served document
/// states the configured ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Queue name: 1–128 of `[A-Za-z0-9._:-]`.
    #[schema(value_type = names::QueueName)]
    pub queue: String,
    /// Any JSON; `null` when absent. At most `limits.max_payload_bytes` serialized (else 413).
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Box<RawValue>>,
    /// Higher first (an i32); default 0.
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = -2_147_483_648_i64, maximum = 2_147_483_647_i64)]
    pub priority: Option<i64>,
    /// RFC 3339 time when the job becomes due (not with `delay_ms`).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Milliseconds from now until the job becomes due (not with `run_at`); at most
    /// `limits.max_delay_ms`.
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = 0, maximum = 31_622_400_000_i64)]
    pub delay_ms: Option<i64>,
    /// Attempts before the job is dead; default 5, at most `limits.max_attempts`.
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<i64>,
    /// Retry spacing; defaults documented on [`Backoff`].
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Lease per claim; default 30,000, within `limits.min_lease_ms..=limits.max_lease_ms`.
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub lease_ms: Option<i64>,
    /// Run deadline per attempt, enforced by workers (leases still apply); default 86,400,000,
    /// within `1..=limits.max_timeout_ms`.
    #[serde(default, deserialize_with = "whole::opt", skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 604_800_000_i64)]
    pub timeout_ms: Option<i64>,
    /// Deduplication key while a job with it is unfinished: 1..=`limits.max_unique_key_len`
    /// characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub unique_key: Option<String>,
    /// Ids of jobs that must complete first (each must exist, else 422); at most
    /// `limits.max_depends_on`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<uuid::Uuid>>, max_items = 100)]
    pub depends_on: Option<Vec<String>>,
    /// Labels: at most `limits.max_tags`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<names::Tag>>, max_items = 32)]
    pub tags: Option<Vec<String>>,
    /// Pay for the job from a ledger account: a hold placed now, paid to the completing
    /// worker's account (needs scopes `ledger` and `produce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<crate::wire::ledger::PaymentSpec>,
}

/// How the OpenAPI document names the strings this module checks. Schema-only types: the
/// values travel as `String`. Their lengths are the default `[limits]`; the served document
/// states the configured ones (see `ferry-server`'s `api::doc`).
pub mod names {
    /// A queue name (also a schedule name): 1..=`limits.max_queue_name_len` of
    /// `[A-Za-z0-9._:-]` ([`super::queue_name`]).
    #[derive(utoipa::ToSchema)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    pub struct QueueName(pub String);

    /// A worker name: 1..=`limits.max_worker_name_len` characters, none of them a control
    /// character (U+0000–U+001F, U+007F–U+009F) ([`super::worker_name`]).
    #[derive(utoipa::ToSchema)]
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]{1,128}$", min_length = 1, max_length = 128)]
    pub struct WorkerName(pub String);

    /// A work-item id: 1..=`limits.max_item_id_len` of `[A-Za-z0-9._:-]`, not `.` or `..`.
    #[derive(utoipa::ToSchema)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    pub struct ItemId(pub String);

    /// An agent name: 1..=`limits.max_agent_name_len` of `[A-Za-z0-9._:-]`.
    #[derive(utoipa::ToSchema)]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    pub struct AgentName(pub String);

    /// The statuses an item may be created in.
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "snake_case")]
    #[allow(dead_code)]
    pub enum InitialStatus {
        /// Not started (the default).
        Todo,
        /// Waiting on something.
        Blocked,
        /// Held by the creating `agent` (required).
        InProgress,
    }

    /// A job tag: 1..=`limits.max_tag_len` characters, none of them a control character.
    #[derive(utoipa::ToSchema)]
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]{1,64}$", min_length = 1, max_length = 64)]
    pub struct Tag(pub String);
}

/// Serde helpers for integer fields of request bodies.
///
/// JSON has one number type: `151.0` and `1.51e2` are the integer 151 to JSON Schema (and so
/// to the OpenAPI document and the clients generated from it), and `-0` is 0. Derived serde
/// refuses every float for an integer field; these accept a float without a fractional part
/// that fits the field's type. A fraction, or a value outside the type's range, is still a
/// type error (400), as before.
pub mod whole {
    use serde::de::{self, Deserializer, Unexpected, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    /// An integer type these helpers fill.
    pub trait Int: Sized + TryFrom<i64> + TryFrom<u64> {}
    impl<T: TryFrom<i64> + TryFrom<u64>> Int for T {}

    struct V<T>(PhantomData<T>);

    impl<T: Int> V<T> {
        fn signed<E: de::Error>(&self, v: i64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), self))
        }
        fn unsigned<E: de::Error>(&self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), self))
        }
    }

    impl<T: Int> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            self.signed(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            self.unsigned(v)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            // 2^63 and 2^64 are exact in an f64; every whole float below them converts exactly.
            const TWO_63: f64 = 9_223_372_036_854_775_808.0;
            const TWO_64: f64 = 18_446_744_073_709_551_616.0;
            if !v.is_finite() || v.fract() != 0.0 {
                return Err(E::invalid_type(Unexpected::Float(v), &self));
            }
            if (-TWO_63..TWO_63).contains(&v) {
                self.signed(v as i64)
            } else if (0.0..TWO_64).contains(&v) {
                self.unsigned(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    /// An integer field.
    pub fn int<'de, D: Deserializer<'de>, T: Int>(d: D) -> Result<T, D::Error> {
        d.deserialize_any(V(PhantomData))
    }

    /// An optional integer field; `null` is absent.
    pub fn opt<'de, D: Deserializer<'de>, T: Int>(d: D) -> Result<Option<T>, D::Error> {
        struct O<T>(PhantomData<T>);
        impl<'de, T: Int> Visitor<'de> for O<T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
                int(d).map(Some)
            }
        }
        d.deserialize_option(O(PhantomData))
    }
}

/// Default attempts before a job is dead.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default lease length.
pub const DEFAULT_LEASE_MS: i64 = 30_000;

/// Checks a queue name: 1..=limit characters of `[A-Za-z0-9._:-]`.
pub fn queue_name(name: &str, limits: &Limits, field: &str) -> Result<()> {
    plain_name(name, limits.max_queue_name_len, field, "queue name")
}

/// Checks a name of `what` (queue, item id, agent): 1..=`max` characters of `[A-Za-z0-9._:-]`.
pub fn plain_name(name: &str, max: usize, field: &str, what: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, format!("{what} must not be empty")));
    }
    if name.len() > max {
        return Err(Error::invalid(field, format!("{what} is {} bytes; the limit is {max}", name.len())));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(Error::invalid(field, format!("{what} may use only A-Z a-z 0-9 . _ : - (found {c:?})")));
    }
    Ok(())
}

/// Checks a worker name: 1..=limit characters (not bytes), none of them a control character.
pub fn worker_name(name: &str, limits: &Limits, field: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "worker name must not be empty"));
    }
    let chars = name.chars().count();
    if chars > limits.max_worker_name_len {
        return Err(Error::invalid(
            field,
            format!("worker name is {chars} characters; the limit is {}", limits.max_worker_name_len),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "worker name must not contain control characters"));
    }
    Ok(())
}

/// A job's run deadline when it sets none: a day, so a hung handler is noticed the next day
/// at the latest.
pub const DEFAULT_TIMEOUT_MS: i64 = 86_400_000;

/// Checks a run deadline (`timeout_ms`) against the limits.
pub fn timeout_ms(ms: i64, limits: &Limits) -> Result<i64> {
    if ms < 1 || ms > limits.max_timeout_ms {
        return Err(Error::invalid(
            "timeout_ms",
            format!("timeout_ms must be 1..={}, got {ms}", limits.max_timeout_ms),
        ));
    }
    Ok(ms)
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
        let timeout_ms = self.timeout_ms.map(|ms| timeout_ms(ms, limits)).transpose()?;
        let unique_key = match self.unique_key {
            Some(k) if k.is_empty() => {
                return Err(Error::invalid("unique_key", "unique_key must not be empty"));
            }
            Some(k) if k.chars().count() > limits.max_unique_key_len => {
                return Err(Error::invalid(
                    "unique_key",
                    format!(
                        "unique_key is {} characters; the limit is {}",
                        k.chars().count(),
                        limits.max_unique_key_len
                    ),
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
            if tag.is_empty() || tag.chars().count() > limits.max_tag_len || tag.chars().any(char::is_control)
            {
                return Err(Error::invalid(
                    format!("tags[{i}]"),
                    format!(
                        "a tag is 1..={} characters, none of them a control character",
                        limits.max_tag_len
                    ),
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
            timeout_ms,
            unique_key,
            depends_on,
            tags,
            import: None,
            payment: match self.payment {
                Some(p) => Some(p.validate(limits).map_err(|e| e.within("payment"))?),
                None => None,
            },
        })
    }
}

/// Checks a worker's reported load: 0.0..=1.0.
pub fn pressure(p: Option<f64>, field: &str) -> Result<()> {
    match p {
        Some(p) if !(p.is_finite() && (0.0..=1.0).contains(&p)) => {
            Err(Error::invalid(field, format!("{field} must be 0.0..=1.0, got {p}")))
        }
        _ => Ok(()),
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
    fn whole_floats_are_integers_within_the_type() {
        let j = spec(r#"{"queue":"q","priority":-151.0,"max_attempts":1.51e2,"lease_ms":1e4}"#);
        assert_eq!((j.priority, j.max_attempts, j.lease_ms), (Some(-151), Some(151), Some(10_000)));
        let b: Backoff = serde_json::from_str(r#"{"base_ms":2000.0,"max_ms":-0.0}"#).unwrap();
        assert_eq!((b.base_ms, b.max_ms), (2000, 0));
        #[derive(Debug, Deserialize)]
        struct U {
            #[serde(default, deserialize_with = "whole::opt")]
            n: Option<u32>,
        }
        let n = |json: &str| serde_json::from_str::<U>(json).map(|u| u.n);
        assert_eq!(n(r#"{"n":4294967295.0}"#).unwrap(), Some(u32::MAX));
        assert_eq!(n(r#"{"n":null}"#).unwrap(), None);
        for bad in
            [r#"{"n":4294967296.0}"#, r#"{"n":-1.0}"#, r#"{"n":0.5}"#, r#"{"n":1e300}"#, r#"{"n":"1"}"#]
        {
            assert!(n(bad).is_err(), "{bad}");
        }
        // Past i64, up to u64, for unsigned fields.
        let big: Option<u64> = whole::opt(&mut serde_json::Deserializer::from_str("1.8e19")).unwrap();
        assert_eq!(big, Some(18_000_000_000_000_000_000));
        // A whole float with 16 significant digits parses exactly (serde_json's
        // `float_roundtrip`; its fast path read 2251799813685247.0 as ...247.25).
        let exact: i64 = whole::int(&mut serde_json::Deserializer::from_str("2251799813685247.0")).unwrap();
        assert_eq!(exact, 2_251_799_813_685_247);
        let top: i64 = whole::int(&mut serde_json::Deserializer::from_str("9007199254740991.0")).unwrap();
        assert_eq!(top, 9_007_199_254_740_991);
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
