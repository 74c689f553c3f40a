//! Bodies of the convoy endpoints (`/v1/convoys`), with the checks the server applies to them.

use crate::backoff::Backoff;
use crate::convoy::{
    Adaptive, Convoy, ConvoyState, MaxParallel, MemberView, NewConvoy, OnComplete, OnFailure,
};
use crate::error::{Error, Result};
use crate::job::NewJob;
use crate::limits::Limits;
use crate::validate::{self, JobSpec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A member as a producer writes it: a job spec without `queue` (the convoy's), `depends_on`,
/// `run_at` or `delay_ms` (a member runs when a slot frees). Those four are read only to be
/// refused by name (422), not with serde's generic unknown-field 400; the schema leaves them
/// out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// Any JSON; `null` when absent. At most `limits.max_payload_bytes` (else 413).
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Box<RawValue>>,
    /// Higher is released from `held` and claimed first; default 0.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = -2_147_483_648_i64, maximum = 2_147_483_647_i64)]
    pub priority: Option<i64>,
    /// Attempts before the member is dead; default 5.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<i64>,
    /// Retry spacing.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Lease per claim; default 30,000.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub lease_ms: Option<i64>,
    /// Run deadline per attempt.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 604_800_000_i64)]
    pub timeout_ms: Option<i64>,
    /// Deduplication key within the convoy, for its whole life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub unique_key: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::validate::names::Tag>>, max_items = 32)]
    pub tags: Option<Vec<String>>,
    /// Refused: a member's queue is its convoy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub queue: Option<serde_json::Value>,
    /// Refused: members have no dependencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub depends_on: Option<serde_json::Value>,
    /// Refused: a member runs when a slot frees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub run_at: Option<serde_json::Value>,
    /// Refused: a member runs when a slot frees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub delay_ms: Option<serde_json::Value>,
    /// Refused: convoy members are not paid jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub payment: Option<serde_json::Value>,
}

impl MemberSpec {
    /// The job of this member on `queue`.
    pub fn validate(self, queue: &str, limits: &Limits) -> Result<NewJob> {
        let refused = [
            ("queue", self.queue.is_some()),
            ("depends_on", self.depends_on.is_some()),
            ("run_at", self.run_at.is_some()),
            ("delay_ms", self.delay_ms.is_some()),
            ("payment", self.payment.is_some()),
        ];
        if let Some((field, _)) = refused.into_iter().find(|(_, present)| *present) {
            return Err(Error::invalid(field, format!("a convoy member takes no {field}")));
        }
        JobSpec {
            queue: queue.to_string(),
            payload: self.payload,
            priority: self.priority,
            run_at: None,
            delay_ms: None,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            lease_ms: self.lease_ms,
            timeout_ms: self.timeout_ms,
            unique_key: self.unique_key,
            depends_on: None,
            tags: self.tags,
            payment: None,
        }
        .validate(limits)
    }
}

/// Reads a list of members, each a JSON object (derived `Deserialize` would also take an array
/// of the fields in order).
fn member_objects<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<MemberSpec>, D::Error> {
    Ok(Vec::<super::Obj<MemberSpec>>::deserialize(d)?.into_iter().map(|o| o.0).collect())
}

/// Validates members for `queue`, all or nothing, the index in the field path.
pub fn members(specs: Vec<MemberSpec>, queue: &str, limits: &Limits, required: bool) -> Result<Vec<NewJob>> {
    if required && specs.is_empty() {
        return Err(Error::invalid("members", "give at least one member"));
    }
    if specs.len() > limits.max_convoy_members_per_request {
        return Err(Error::invalid(
            "members",
            format!(
                "{} members; one request adds at most {}",
                specs.len(),
                limits.max_convoy_members_per_request
            ),
        ));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.validate(queue, limits).map_err(|e| e.within(&format!("members[{i}]"))))
        .collect()
}

/// `max_parallel` as sent: a number, or `{"adaptive": {min, max, start?}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum MaxParallelBody {
    /// A fixed limit, 1..=`limits.max_convoy_parallel`.
    Fixed(i64),
    /// A tuned limit.
    Adaptive {
        /// Its bounds.
        adaptive: AdaptiveBody,
    },
}

impl<'de> Deserialize<'de> for MaxParallelBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Tuned {
            adaptive: AdaptiveBody,
        }
        let v = serde_json::Value::deserialize(d)?;
        if v.is_number() {
            // A whole number in any JSON spelling (`50`, `50.0`), as every integer field.
            return crate::validate::whole::int(v).map(MaxParallelBody::Fixed).map_err(D::Error::custom);
        }
        let Tuned { adaptive } = Tuned::deserialize(v).map_err(|e| {
            D::Error::custom(format!("max_parallel is a whole number or {{\"adaptive\": {{...}}}}: {e}"))
        })?;
        Ok(MaxParallelBody::Adaptive { adaptive })
    }
}

/// Bounds of an adaptive limit as sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveBody {
    /// 1..=`max`.
    #[serde(deserialize_with = "crate::validate::whole::int")]
    pub min: i64,
    /// `min`..=`limits.max_convoy_parallel`.
    #[serde(deserialize_with = "crate::validate::whole::int")]
    pub max: i64,
    /// `min`..=`max`; default `min`.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub start: Option<i64>,
}

impl MaxParallelBody {
    /// The checked limit.
    pub fn validate(&self, limits: &Limits) -> Result<MaxParallel> {
        let cap = i64::from(limits.max_convoy_parallel);
        let within = |v: i64, lo: i64, field: &str| -> Result<u32> {
            if v < lo || v > cap {
                return Err(Error::invalid(field, format!("{field} must be {lo}..={cap}, got {v}")));
            }
            Ok(v as u32)
        };
        Ok(match self {
            MaxParallelBody::Fixed(n) => MaxParallel::Fixed(within(*n, 1, "max_parallel")?),
            MaxParallelBody::Adaptive { adaptive: a } => {
                let min = within(a.min, 1, "max_parallel.adaptive.min")?;
                let max = within(a.max, i64::from(min), "max_parallel.adaptive.max")?;
                let start = match a.start {
                    None => min,
                    Some(s) if s >= i64::from(min) && s <= i64::from(max) => s as u32,
                    Some(s) => {
                        return Err(Error::invalid(
                            "max_parallel.adaptive.start",
                            format!("start must be {min}..={max}, got {s}"),
                        ));
                    }
                };
                MaxParallel::Adaptive(Adaptive { min, max, start })
            }
        })
    }
}

/// `POST /v1/convoys` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConvoyBody {
    /// The convoy's id: 1..=`limits.max_name_len` of `[A-Za-z0-9._:-]`; default a UUIDv7. A
    /// repeat with the same id adds nothing and answers 200 `duplicate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub id: Option<String>,
    /// A display name, 1..=`limits.max_name_len` characters; default the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub name: Option<String>,
    /// The queue every member runs on.
    #[schema(value_type = crate::validate::names::QueueName)]
    pub queue: String,
    /// The first members (0..=`limits.max_convoy_members_per_request`).
    #[serde(default, deserialize_with = "member_objects")]
    #[schema(max_items = 10000)]
    pub members: Vec<MemberSpec>,
    /// The limit; default 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<MaxParallelBody>,
    /// False leaves it open for `POST /v1/convoys/{id}/members` until sealed; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<bool>,
    /// `continue` (default) or `fail_fast`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// A job (any queue; no `unique_key` or `depends_on`) enqueued once when the convoy ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_complete: Option<OnCompleteSpec>,
}

/// The completion job as a producer writes it: a job spec without `unique_key` (ferry keys it
/// `convoy:<id>:complete`) or `depends_on`; those two are read only to be refused by name
/// (422), and the schema leaves them out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnCompleteSpec {
    /// Queue name: 1–128 of `[A-Za-z0-9._:-]`.
    #[schema(value_type = crate::validate::names::QueueName)]
    pub queue: String,
    /// Its own payload, handed on under `payload`.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Box<RawValue>>,
    /// Higher first (an i32); default 0.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = -2_147_483_648_i64, maximum = 2_147_483_647_i64)]
    pub priority: Option<i64>,
    /// RFC 3339 time when it becomes due (not with `delay_ms`).
    #[serde(default)]
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Milliseconds from the convoy's end until it becomes due (not with `run_at`).
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 0, maximum = 31_622_400_000_i64)]
    pub delay_ms: Option<i64>,
    /// Attempts before it is dead; default 5.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<i64>,
    /// Retry spacing.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Lease per claim; default 30,000.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub lease_ms: Option<i64>,
    /// Run deadline per attempt.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 604_800_000_i64)]
    pub timeout_ms: Option<i64>,
    /// Labels.
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::validate::names::Tag>>, max_items = 32)]
    pub tags: Option<Vec<String>>,
    /// Refused: ferry keys the completion job itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub unique_key: Option<serde_json::Value>,
    /// Refused: the completion job runs when the convoy ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub depends_on: Option<serde_json::Value>,
    /// Refused: a completion job is not a paid job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub payment: Option<serde_json::Value>,
}

impl OnCompleteSpec {
    /// The checked completion job.
    pub fn validate(self, limits: &Limits) -> Result<OnComplete> {
        for (field, present) in [
            ("unique_key", self.unique_key.is_some()),
            ("depends_on", self.depends_on.is_some()),
            ("payment", self.payment.is_some()),
        ] {
            if present {
                return Err(Error::invalid(field, format!("on_complete takes no {field}")));
            }
        }
        let job = JobSpec {
            queue: self.queue,
            payload: self.payload,
            priority: self.priority,
            run_at: self.run_at,
            delay_ms: self.delay_ms,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            lease_ms: self.lease_ms,
            timeout_ms: self.timeout_ms,
            unique_key: None,
            depends_on: None,
            tags: self.tags,
            payment: None,
        };
        OnComplete::from_job(job.validate(limits)?)
    }
}

/// The default limit when `max_parallel` is absent (capped at `limits.max_convoy_parallel`).
pub const DEFAULT_MAX_PARALLEL: u32 = 10_000;

impl ConvoyBody {
    /// The checked convoy: id, name, queue, limit, members, completion job, in that order.
    pub fn validate(self, limits: &Limits) -> Result<NewConvoy> {
        let id = match self.id {
            Some(id) => {
                crate::convoy::check_id(&id, limits.max_name_len, "id")?;
                id
            }
            None => Uuid::now_v7().to_string(),
        };
        let name = match self.name {
            Some(n) => {
                let len = n.chars().count();
                if len == 0 || len > limits.max_name_len || n.chars().any(char::is_control) {
                    return Err(Error::invalid(
                        "name",
                        format!("a name is 1..={} characters, none a control character", limits.max_name_len),
                    ));
                }
                n
            }
            None => id.clone(),
        };
        validate::queue_name(&self.queue, limits, "queue")?;
        let max_parallel = match &self.max_parallel {
            Some(m) => m.validate(limits)?,
            None => MaxParallel::Fixed(DEFAULT_MAX_PARALLEL.min(limits.max_convoy_parallel)),
        };
        let members = members(self.members, &self.queue, limits, false)?;
        let on_complete = self
            .on_complete
            .map(|spec| spec.validate(limits))
            .transpose()
            .map_err(|e| e.within("on_complete"))?;
        Ok(NewConvoy {
            id,
            name,
            queue: self.queue,
            max_parallel,
            sealed: self.sealed.unwrap_or(true),
            on_failure: self.on_failure.unwrap_or_default(),
            on_complete,
            members,
        })
    }
}

/// `POST /v1/convoys` answer: 201 when created, 200 `duplicate` for a repeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConvoyCreatedResponse {
    /// The convoy as it is now.
    pub convoy: Convoy,
    /// One job id per member, in order (a duplicate's is the earlier member's).
    pub ids: Vec<Uuid>,
    /// Indexes of members whose `unique_key` matched an earlier member of the convoy.
    pub duplicates: Vec<usize>,
    /// True for a repeat of an existing convoy (nothing added).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `POST /v1/convoys/{id}/members` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersBody {
    /// 1..=`limits.max_convoy_members_per_request` members.
    #[serde(deserialize_with = "member_objects")]
    #[schema(min_items = 1, max_items = 10000)]
    pub members: Vec<MemberSpec>,
}

/// `POST /v1/convoys/{id}/members` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MembersAdded {
    /// One job id per member, in order.
    pub ids: Vec<Uuid>,
    /// Indexes of members whose `unique_key` matched an earlier member.
    pub duplicates: Vec<usize>,
}

/// `GET /v1/convoys/{id}` query.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConvoyWaitQuery {
    /// Long-poll: wait up to this long (≤ `limits.max_wait_ms`) for the convoy to end.
    #[param(minimum = 0, maximum = 30000)]
    pub wait_ms: Option<i64>,
}

/// `GET /v1/convoys/{id}/members` query.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MembersQuery {
    /// Only members in this job state.
    pub state: Option<crate::JobState>,
    /// Page size, 1..=`limits.max_page_size` (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/convoys` query.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConvoyListQuery {
    /// Only convoys in this state.
    pub state: Option<ConvoyState>,
    /// Only convoys of this queue.
    #[param(value_type = Option<crate::validate::names::QueueName>)]
    pub queue: Option<String>,
    /// Page size, 1..=`limits.max_page_size` (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/convoys/{id}/members` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MembersPage {
    /// Members in the order added.
    pub members: Vec<MemberView>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// `GET /v1/convoys` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConvoysPage {
    /// Convoys, oldest first.
    pub convoys: Vec<Convoy>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> ConvoyBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn refused_member_fields_are_named() {
        let l = Limits::default();
        let e = body(r#"{"queue":"q","members":[{},{"queue":"x"}]}"#).validate(&l).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("members[1].queue"));
        let e = body(r#"{"queue":"q","members":[{"delay_ms":5}]}"#).validate(&l).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("members[0].delay_ms"));
        let e =
            body(r#"{"queue":"q","on_complete":{"queue":"d","unique_key":"k"}}"#).validate(&l).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("on_complete.unique_key"));
    }

    #[test]
    fn limits_one_past_the_edge() {
        let l = Limits { max_convoy_parallel: 10, max_convoy_members_per_request: 2, ..Limits::default() };
        assert!(body(r#"{"queue":"q","max_parallel":10}"#).validate(&l).is_ok());
        let e = body(r#"{"queue":"q","max_parallel":11}"#).validate(&l).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("max_parallel"));
        let e =
            body(r#"{"queue":"q","max_parallel":{"adaptive":{"min":2,"max":11}}}"#).validate(&l).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("max_parallel.adaptive.max"));
        let e = body(r#"{"queue":"q","max_parallel":{"adaptive":{"min":3,"max":5,"start":2}}}"#)
            .validate(&l)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("max_parallel.adaptive.start"));
        assert!(body(r#"{"queue":"q","members":[{},{}]}"#).validate(&l).is_ok());
        let e = body(r#"{"queue":"q","members":[{},{},{}]}"#).validate(&l).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("members"));
    }

    #[test]
    fn defaults() {
        let c = body(r#"{"queue":"q","id":"c-1"}"#).validate(&Limits::default()).unwrap();
        assert_eq!((c.name.as_str(), c.sealed, c.max_parallel), ("c-1", true, MaxParallel::Fixed(10_000)));
        let c = body(r#"{"queue":"q","max_parallel":{"adaptive":{"min":2,"max":9}}}"#)
            .validate(&Limits::default())
            .unwrap();
        assert_eq!(c.max_parallel.start(), 2);
    }
}
