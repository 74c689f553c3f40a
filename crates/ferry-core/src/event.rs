//! Events: every state change of a subject (a job, a queue, a schedule; later domains add
//! their kinds), as one JSON shape shared by WebSocket, SSE and long-poll delivery.
//!
//! Storage records events in the transaction that makes the change and numbers them with a
//! cursor that only grows and has no gaps, so a consumer that resumes after cursor `c` gets
//! exactly the events after `c`: none twice, none missing.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

named_enum! {
    /// What happened. Each type's stored code is on disk: never changed, never reused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum EventType {
        /// A job was accepted (ready, scheduled or waiting).
        JobEnqueued = "job.enqueued" @ 0;
        /// A worker claimed a job.
        JobStarted = "job.started" @ 1;
        /// A job finished successfully.
        JobCompleted = "job.completed" @ 2;
        /// An attempt failed (a `job.retried` or `job.dead` follows in the same batch).
        JobFailed = "job.failed" @ 3;
        /// A job will run again (after a failure or an expired lease).
        JobRetried = "job.retried" @ 4;
        /// A job ran out of attempts and went to the dead-letter queue.
        JobDead = "job.dead" @ 5;
        /// A job was cancelled (directly or because a dependency failed).
        JobCancelled = "job.cancelled" @ 6;
        /// A dead job was sent back to its queue.
        JobReplayed = "job.replayed" @ 7;
        /// A queue stopped handing out jobs.
        QueuePaused = "queue.paused" @ 8;
        /// A queue hands out jobs again.
        QueueResumed = "queue.resumed" @ 9;
        /// A schedule enqueued the job of one of its ticks.
        ScheduleFired = "schedule.fired" @ 10;
        /// A work item was created.
        ItemCreated = "item.created" @ 11;
        /// A work item's status moved (data: from, to, version, agent, reason).
        ItemStatusChanged = "item.status_changed" @ 12;
        /// A work item changed without a status move (data: version, agent, paths).
        ItemUpdated = "item.updated" @ 13;
        /// A message reached an agent's inbox (one per recipient; data: id, from).
        MessageSent = "message.sent" @ 14;
        /// A broadcast was stored once for its channel's readers (subject: the sender; data:
        /// id, channel, seq).
        BroadcastSent = "broadcast.sent" @ 15;
        /// A message went to an agent's dead letters after its last delivery (data: id, kind).
        MessageDead = "message.dead" @ 16;
        /// A convoy was created (data: name, queue, limit, sealed).
        ConvoyCreated = "convoy.created" @ 17;
        /// A convoy's counts changed (data: counts; at most once a second per convoy).
        ConvoyProgress = "convoy.progress" @ 18;
        /// A convoy's adaptive limit moved (data: from, to, reason, p50_ms, long_p50_ms,
        /// failed, pressure).
        ConvoyLimitChanged = "convoy.limit_changed" @ 19;
        /// A convoy ended (data: state, counts, on_complete_job_id).
        ConvoyCompleted = "convoy.completed" @ 20;
        /// A ledger account was created (data: the ledger event's data and `seq`).
        AccountCreated = "account.created" @ 21;
        /// A ledger account was closed.
        AccountClosed = "account.closed" @ 22;
        /// A pending transfer holds funds of this account (one event per side).
        TransferPending = "transfer.pending" @ 23;
        /// A transfer moved funds of this account (one event per side).
        TransferPosted = "transfer.posted" @ 24;
        /// A pending transfer was voided (one event per side).
        TransferVoided = "transfer.voided" @ 25;
        /// A pending transfer expired (one event per side).
        TransferExpired = "transfer.expired" @ 26;
        /// A checkpoint was stored new or replaced (data: ns, checkpoint_id,
        /// parent_checkpoint_id, step).
        CheckpointPut = "checkpoint.put" @ 27;
        /// A thread and its checkpoints were deleted (data: deleted, reason `request|idle_ttl`).
        ThreadDeleted = "thread.deleted" @ 28;
        /// An episode was stored (data: id, agent, domain, task_type, outcome).
        EpisodeAdded = "episode.added" @ 29;
        /// An episode's tags or importance changed (data: id, version).
        EpisodeUpdated = "episode.updated" @ 30;
        /// An episode was deleted (data: id, reason `request|retention`).
        EpisodeDeleted = "episode.deleted" @ 31;
    }
}

named_enum! {
    /// The kind of thing an event is about; also the prefix of its room (`job:<id>`). Each
    /// kind's stored code is on disk: never changed, never reused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum SubjectKind {
        /// A job (id: the job's UUID).
        Job = "job" @ 0;
        /// A queue (id: its name).
        Queue = "queue" @ 1;
        /// A schedule (id: its name).
        Schedule = "schedule" @ 2;
        /// A work item (id: the item's id).
        Item = "item" @ 3;
        /// An agent's inbox (id: the agent's name).
        Agent = "agent" @ 4;
        /// A convoy (id: the convoy's id).
        Convoy = "convoy" @ 5;
        /// A ledger account (id: the account's id).
        Account = "account" @ 6;
        /// A checkpoint thread (id: the thread's id).
        Thread = "thread" @ 7;
        /// A memory namespace (id: its name).
        Namespace = "namespace" @ 8;
    }
}

/// What an event is about: a kind and the id of one thing of that kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Subject {
    /// The kind of thing.
    pub kind: SubjectKind,
    /// Its id within the kind (a job's UUID, a queue's or schedule's name).
    pub id: String,
}

impl Subject {
    /// A subject of `kind` with `id`.
    pub fn new(kind: SubjectKind, id: impl Into<String>) -> Subject {
        Subject { kind, id: id.into() }
    }

    /// A job's subject.
    pub fn job(id: Uuid) -> Subject {
        Subject::new(SubjectKind::Job, id.to_string())
    }
}

/// A room a consumer can join: the events about one subject (`queue:mail` also holds the
/// events of that queue's jobs), or the events of jobs with one tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Room {
    /// Events about this subject (and, for a queue, about its jobs).
    Subject(Subject),
    /// Events of jobs carrying this tag.
    Tag(String),
}

impl Room {
    /// Parses `<kind>:<id>` or `tag:<t>` (a job id is normalized); the error says why not.
    pub fn parse(s: &str) -> std::result::Result<Room, String> {
        let kinds = || {
            let mut k: Vec<&str> = SubjectKind::ALL.iter().map(|k| k.as_str()).collect();
            k.push("tag");
            k.join(", ")
        };
        let (kind, id) =
            s.split_once(':').ok_or_else(|| format!("{s:?} is not a room (<kind>:<id>, tag:<t>, *)"))?;
        if kind == "tag" {
            return Ok(Room::Tag(id.to_string()));
        }
        let kind =
            SubjectKind::parse(kind).ok_or_else(|| format!("unknown room kind {kind:?} ({})", kinds()))?;
        Room::of(kind, id)
    }

    /// The room of one subject; a job id must be a UUID (and is normalized).
    pub fn of(kind: SubjectKind, id: &str) -> std::result::Result<Room, String> {
        let id = match kind {
            SubjectKind::Job => {
                Uuid::parse_str(id).map_err(|_| format!("{id:?} is not a job id"))?.to_string()
            }
            _ => id.to_string(),
        };
        Ok(Room::Subject(Subject { kind, id }))
    }

    /// The room's name as a client writes it (`queue:mail`).
    pub fn name(&self) -> String {
        match self {
            Room::Subject(s) => format!("{}:{}", s.kind.as_str(), s.id),
            Room::Tag(t) => format!("tag:{t}"),
        }
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
    /// What the event is about.
    pub subject: Subject,
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
            subject: Subject::job(id),
            at: Timestamp(at),
            queue: Some(queue.to_string()),
            job_id: Some(id),
            tags,
            data: None,
        }
    }

    /// A queue event not yet numbered.
    pub fn queue(kind: EventType, at: i64, queue: &str) -> Event {
        Event {
            cursor: 0,
            kind,
            subject: Subject::new(SubjectKind::Queue, queue),
            at: Timestamp(at),
            queue: Some(queue.to_string()),
            job_id: None,
            tags: Vec::new(),
            data: None,
        }
    }

    /// Adds details.
    pub fn with(mut self, data: serde_json::Value) -> Event {
        self.data = Some(data);
        self
    }

    /// Makes `subject` what the event is about (its queue, job and tags stay).
    pub fn about(mut self, subject: Subject) -> Event {
        self.subject = subject;
        self
    }

    /// Calls `f` with every room the event belongs to: its subject's, its queue's, its
    /// job's (each once) and its tags'.
    pub fn for_each_room(&self, mut f: impl FnMut(&Room)) {
        let subject = Room::Subject(self.subject.clone());
        f(&subject);
        if let Some(q) = &self.queue
            && !(self.subject.kind == SubjectKind::Queue && &self.subject.id == q)
        {
            f(&Room::Subject(Subject::new(SubjectKind::Queue, q.clone())));
        }
        if let Some(id) = self.job_id {
            let job = Subject::job(id);
            if job != self.subject {
                f(&Room::Subject(job));
            }
        }
        for t in &self.tags {
            f(&Room::Tag(t.clone()));
        }
    }
}

/// Which events a consumer wants; empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Rooms joined: an event passes if it belongs to any of them (or to any room when none
    /// is named).
    pub rooms: Vec<Room>,
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

    /// Whether no room is named: the consumer gets every event.
    pub fn is_firehose(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Joins `room` (once).
    pub fn join(&mut self, room: Room) {
        if !self.rooms.contains(&room) {
            self.rooms.push(room);
        }
    }

    /// The queues named as rooms.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        self.rooms.iter().filter_map(|r| match r {
            Room::Subject(s) if s.kind == SubjectKind::Queue => Some(s.id.as_str()),
            _ => None,
        })
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
        let mut hit = false;
        e.for_each_room(|r| hit = hit || self.rooms.contains(r));
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for &t in EventType::ALL {
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
        let f = |q: &[&str], t: &[&str], types: &[EventType]| {
            let mut rooms: Vec<Room> =
                q.iter().map(|q| Room::parse(&format!("queue:{q}")).unwrap()).collect();
            rooms.extend(t.iter().map(|t| Room::Tag(t.to_string())));
            EventFilter { rooms, types: types.to_vec(), within: None }
        };
        assert!(f(&["mail"], &[], &[]).matches(&e));
        assert!(!f(&["sms"], &[], &[]).matches(&e));
        assert!(f(&["sms"], &["vip"], &[]).matches(&e));
        assert!(!f(&["mail"], &[], &[EventType::JobFailed]).matches(&e));
        let job_room = || vec![Room::Subject(Subject::job(id))];
        assert!(EventFilter { rooms: job_room(), ..Default::default() }.matches(&e));
        // `within` narrows whatever the rooms: a job room of another queue yields nothing.
        let within = |w: &[&str]| EventFilter {
            rooms: job_room(),
            within: Some(w.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        assert!(within(&["mail"]).matches(&e));
        assert!(!within(&["sms"]).matches(&e));
    }

    /// The stored codes are on disk: this list may only grow.
    #[test]
    fn stored_codes_are_pinned() {
        let pinned = [
            (EventType::JobEnqueued, 0),
            (EventType::JobStarted, 1),
            (EventType::JobCompleted, 2),
            (EventType::JobFailed, 3),
            (EventType::JobRetried, 4),
            (EventType::JobDead, 5),
            (EventType::JobCancelled, 6),
            (EventType::JobReplayed, 7),
            (EventType::QueuePaused, 8),
            (EventType::QueueResumed, 9),
            (EventType::ScheduleFired, 10),
            (EventType::ItemCreated, 11),
            (EventType::ItemStatusChanged, 12),
            (EventType::ItemUpdated, 13),
            (EventType::MessageSent, 14),
            (EventType::BroadcastSent, 15),
            (EventType::MessageDead, 16),
            (EventType::ConvoyCreated, 17),
            (EventType::ConvoyProgress, 18),
            (EventType::ConvoyLimitChanged, 19),
            (EventType::ConvoyCompleted, 20),
            (EventType::AccountCreated, 21),
            (EventType::AccountClosed, 22),
            (EventType::TransferPending, 23),
            (EventType::TransferPosted, 24),
            (EventType::TransferVoided, 25),
            (EventType::TransferExpired, 26),
            (EventType::CheckpointPut, 27),
            (EventType::ThreadDeleted, 28),
            (EventType::EpisodeAdded, 29),
            (EventType::EpisodeUpdated, 30),
            (EventType::EpisodeDeleted, 31),
        ];
        assert_eq!(pinned.len(), EventType::ALL.len(), "a new type needs its code pinned here");
        for (t, code) in pinned {
            assert_eq!(t.code(), code, "{t:?}");
            assert_eq!(EventType::from_code(code), Some(t));
        }
        let kinds = [
            (SubjectKind::Job, 0),
            (SubjectKind::Queue, 1),
            (SubjectKind::Schedule, 2),
            (SubjectKind::Item, 3),
            (SubjectKind::Agent, 4),
            (SubjectKind::Convoy, 5),
            (SubjectKind::Account, 6),
            (SubjectKind::Thread, 7),
            (SubjectKind::Namespace, 8),
        ];
        assert_eq!(kinds.len(), SubjectKind::ALL.len(), "a new kind needs its code pinned here");
        for (k, code) in kinds {
            assert_eq!(k.code(), code, "{k:?}");
            assert_eq!(SubjectKind::from_code(code), Some(k));
        }
    }

    #[test]
    fn rooms_parse_and_events_belong_to_theirs() {
        let id = Uuid::new_v4();
        assert_eq!(Room::parse(&format!("job:{}", id.simple())).unwrap(), Room::Subject(Subject::job(id)));
        assert_eq!(Room::parse("schedule:nightly").unwrap().name(), "schedule:nightly");
        assert!(Room::parse("job:nope").unwrap_err().contains("job id"));
        assert!(Room::parse("planet:mars").unwrap_err().contains("unknown room kind"));
        assert!(Room::parse("mail").is_err());
        let fired = Event::job(EventType::ScheduleFired, 0, "cron", id, vec!["t".into()])
            .about(Subject::new(SubjectKind::Schedule, "nightly"));
        let mut rooms = Vec::new();
        fired.for_each_room(|r| rooms.push(r.name()));
        assert_eq!(rooms, ["schedule:nightly", "queue:cron", &format!("job:{id}"), "tag:t"]);
        let paused = Event::queue(EventType::QueuePaused, 0, "mail");
        rooms.clear();
        paused.for_each_room(|r| rooms.push(r.name()));
        assert_eq!(rooms, ["queue:mail"]);
    }
}
