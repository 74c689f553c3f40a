//! Events: every state change of a job, a queue or a schedule, as one JSON shape shared by
//! WebSocket, SSE and long-poll delivery.
//!
//! Storage records events in the transaction that makes the change and numbers them with a
//! cursor that only grows and has no gaps, so a consumer that resumes after cursor `c` gets
//! exactly the events after `c`: none twice, none missing.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    /// A job was accepted (ready, scheduled or waiting).
    #[serde(rename = "job.enqueued")]
    JobEnqueued,
    /// A worker claimed a job.
    #[serde(rename = "job.started")]
    JobStarted,
    /// A job finished successfully.
    #[serde(rename = "job.completed")]
    JobCompleted,
    /// An attempt failed (a `job.retried` or `job.dead` follows in the same batch).
    #[serde(rename = "job.failed")]
    JobFailed,
    /// A job will run again (after a failure or an expired lease).
    #[serde(rename = "job.retried")]
    JobRetried,
    /// A job ran out of attempts and went to the dead-letter queue.
    #[serde(rename = "job.dead")]
    JobDead,
    /// A job was cancelled (directly or because a dependency failed).
    #[serde(rename = "job.cancelled")]
    JobCancelled,
    /// A dead job was sent back to its queue.
    #[serde(rename = "job.replayed")]
    JobReplayed,
    /// A queue stopped handing out jobs.
    #[serde(rename = "queue.paused")]
    QueuePaused,
    /// A queue hands out jobs again.
    #[serde(rename = "queue.resumed")]
    QueueResumed,
    /// A schedule enqueued the job of one of its ticks.
    #[serde(rename = "schedule.fired")]
    ScheduleFired,
}

impl EventType {
    /// Every event type, for validation and documentation. The stored event log refers to
    /// types by their index here: append new types, never reorder.
    pub const ALL: [EventType; 11] = [
        EventType::JobEnqueued,
        EventType::JobStarted,
        EventType::JobCompleted,
        EventType::JobFailed,
        EventType::JobRetried,
        EventType::JobDead,
        EventType::JobCancelled,
        EventType::JobReplayed,
        EventType::QueuePaused,
        EventType::QueueResumed,
        EventType::ScheduleFired,
    ];

    /// The wire name (`job.completed`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::JobEnqueued => "job.enqueued",
            EventType::JobStarted => "job.started",
            EventType::JobCompleted => "job.completed",
            EventType::JobFailed => "job.failed",
            EventType::JobRetried => "job.retried",
            EventType::JobDead => "job.dead",
            EventType::JobCancelled => "job.cancelled",
            EventType::JobReplayed => "job.replayed",
            EventType::QueuePaused => "queue.paused",
            EventType::QueueResumed => "queue.resumed",
            EventType::ScheduleFired => "schedule.fired",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One event as delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Position in the event log: grows by one per event, with no gaps.
    pub cursor: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When the change was made.
    #[schema(value_type = String)]
    pub at: Timestamp,
    /// The queue concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The job concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// The job's tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Details of the change (attempt, error, next run, schedule name...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

impl Event {
    /// A job event not yet numbered (the store assigns `cursor` when it commits).
    pub fn job(kind: EventType, at: i64, queue: &str, id: Uuid, tags: Vec<String>) -> Event {
        Event {
            cursor: 0,
            kind,
            at: Timestamp(at),
            queue: Some(queue.to_string()),
            job_id: Some(id),
            tags,
            data: None,
        }
    }

    /// Adds details.
    pub fn with(mut self, data: serde_json::Value) -> Event {
        self.data = Some(data);
        self
    }
}

/// Which events a consumer wants; empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Events of these queues.
    pub queues: Vec<String>,
    /// Events of these jobs.
    pub job_ids: Vec<Uuid>,
    /// Events of jobs with one of these tags.
    pub tags: Vec<String>,
    /// Only these types.
    pub types: Vec<EventType>,
    /// Only events of these queues, whatever the rooms: the queues a restricted token may see.
    pub within: Option<Vec<String>>,
}

impl EventFilter {
    /// Whether `e` has a wanted type and lies within the allowed queues (rooms aside).
    pub fn admits(&self, e: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&e.kind))
            && self.within.as_ref().is_none_or(|w| e.queue.as_ref().is_some_and(|q| w.contains(q)))
    }

    /// Whether no room (queue, job, tag) is named: the consumer gets every event.
    pub fn is_firehose(&self) -> bool {
        self.queues.is_empty() && self.job_ids.is_empty() && self.tags.is_empty()
    }

    /// Whether `e` passes: its type is wanted, and it belongs to one of the named rooms (or
    /// no room is named).
    pub fn matches(&self, e: &Event) -> bool {
        if !self.admits(e) {
            return false;
        }
        if self.is_firehose() {
            return true;
        }
        e.queue.as_ref().is_some_and(|q| self.queues.contains(q))
            || e.job_id.is_some_and(|id| self.job_ids.contains(&id))
            || e.tags.iter().any(|t| self.tags.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for t in EventType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("job.exploded"), None);
    }

    #[test]
    fn filter_rooms_are_alternatives_types_restrict() {
        let id = Uuid::new_v4();
        let e = Event::job(EventType::JobCompleted, 0, "mail", id, vec!["vip".into()]);
        assert!(EventFilter::default().matches(&e));
        let f = |q: &[&str], t: &[&str], types: &[EventType]| EventFilter {
            queues: q.iter().map(|s| s.to_string()).collect(),
            tags: t.iter().map(|s| s.to_string()).collect(),
            types: types.to_vec(),
            job_ids: vec![],
            within: None,
        };
        assert!(f(&["mail"], &[], &[]).matches(&e));
        assert!(!f(&["sms"], &[], &[]).matches(&e));
        assert!(f(&["sms"], &["vip"], &[]).matches(&e));
        assert!(!f(&["mail"], &[], &[EventType::JobFailed]).matches(&e));
        assert!(EventFilter { job_ids: vec![id], ..Default::default() }.matches(&e));
        // `within` narrows whatever the rooms: a job room of another queue yields nothing.
        let within = |w: &[&str]| EventFilter {
            job_ids: vec![id],
            within: Some(w.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        assert!(within(&["mail"]).matches(&e));
        assert!(!within(&["sms"]).matches(&e));
    }
}
