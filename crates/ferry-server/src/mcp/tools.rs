//! The tool catalog: each MCP tool names one HTTP route, and its input and output schemas are
//! cut from that route's operation in the OpenAPI document (the body's properties, with the
//! path and query parameters beside them), so a tool cannot drift from the API it wraps.

use crate::auth::{Access, Policies, Policy, Principal, Restriction};
use axum::http::Method;
use ferry_core::ResourceKind;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What a repeat of a call does, for the tool's annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Reads only.
    Read,
    /// Changes something; a repeat may change it again.
    Write,
    /// Changes something; a repeat changes nothing more.
    Idempotent,
    /// Cancels, purges or deletes.
    Destructive,
}

/// One tool as declared: its name, the route it wraps and what a model should know of it.
struct Spec {
    name: &'static str,
    method: Method,
    path: &'static str,
    effect: Effect,
    description: &'static str,
}

fn spec(
    name: &'static str,
    method: Method,
    path: &'static str,
    effect: Effect,
    description: &'static str,
) -> Spec {
    Spec { name, method, path, effect, description }
}

/// Every tool, by domain. Adding a domain adds its lines here (ARCHITECTURE.md, "Adding a
/// domain").
fn specs() -> Vec<Spec> {
    use Effect::*;
    let (get, post, put, patch, delete) =
        (Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE);
    vec![
        // Jobs.
        spec(
            "jobs_enqueue",
            post.clone(),
            "/v1/jobs",
            Write,
            "Enqueue a job (or a batch under `jobs`) on a queue for a worker to run. Returns the job's `id`; \
             watch it with `events_wait` (job_id) or read it with `jobs_get`. A `unique_key` makes a repeat \
             return the existing job instead of a second one.",
        ),
        spec(
            "jobs_claim",
            post.clone(),
            "/v1/queues/{queue}/claim",
            Write,
            "Take up to `limit` ready jobs from `queue` to work on, waiting up to `wait_ms` for one. Each \
             returned job carries a `lease`; finish it with `jobs_complete` or `jobs_fail` before \
             `lease_expires_at`, or extend it with `jobs_heartbeat`; `jobs_release` gives it back untouched.",
        ),
        spec(
            "jobs_heartbeat",
            post.clone(),
            "/v1/jobs/{id}/heartbeat",
            Idempotent,
            "Extend the lease of a job you claimed, so it is not handed to another worker while you still \
             work on it. Needs the `lease` from `jobs_claim`; a lost lease answers `stale_lease`: stop working.",
        ),
        spec(
            "jobs_complete",
            post.clone(),
            "/v1/jobs/{id}/complete",
            Write,
            "Finish a claimed job successfully, with an optional `result` others can read with `jobs_get`. \
             Needs the `lease` from `jobs_claim`; `stale_lease` means the job was given to someone else.",
        ),
        spec(
            "jobs_fail",
            post.clone(),
            "/v1/jobs/{id}/fail",
            Write,
            "Report that a claimed job failed, with an `error` message. It is retried later (with backoff) \
             until its attempts run out, then it goes to the dead-letter queue. Needs the job's `lease`.",
        ),
        spec(
            "jobs_release",
            post.clone(),
            "/v1/jobs/{id}/release",
            Write,
            "Give a claimed job back without running it: it is ready again at once for another worker and the \
             attempt is not counted. Needs the job's `lease`.",
        ),
        spec(
            "jobs_cancel",
            post.clone(),
            "/v1/jobs/{id}/cancel",
            Destructive,
            "Cancel a job that has not finished, so no worker runs it (a running one is not interrupted).",
        ),
        spec(
            "jobs_get",
            get.clone(),
            "/v1/jobs/{id}",
            Read,
            "Read one job: its state, attempts, errors and `result` once completed.",
        ),
        spec(
            "jobs_list",
            get.clone(),
            "/v1/jobs",
            Read,
            "List jobs, newest first, filtered by queue and state; continue with `cursor` = the previous \
             page's `next_cursor`.",
        ),
        spec(
            "queues_stats",
            get.clone(),
            "/v1/queues",
            Read,
            "Every queue with its jobs counted by state, whether it is paused, and its flow limits: the first \
             call to see what work there is.",
        ),
        spec(
            "events_wait",
            get.clone(),
            "/v1/events",
            Read,
            "Sleep until something happens: returns the events after cursor `since` that match the filters \
             (`queue`, `job_id`, `tag`, `type`: comma-separated lists), waiting up to `wait_ms` for a first one. Call again \
             with `since` = `next_cursor` to go on; without `since` only events from now on are seen.",
        ),
        spec(
            "dlq_list",
            get.clone(),
            "/v1/dlq",
            Read,
            "List dead jobs (out of attempts), newest first, to see what failed and why.",
        ),
        spec(
            "dlq_replay",
            post.clone(),
            "/v1/dlq/replay",
            Write,
            "Put dead jobs back on their queues as new attempts, by ids or by queue.",
        ),
        // Work items.
        spec(
            "items_create",
            post.clone(),
            "/v1/items",
            Write,
            "Create a work item (a task with a status, assignee, context and artifacts that agents share). \
             Returns it with `version` 1; change it with `items_update`.",
        ),
        spec(
            "items_get",
            get.clone(),
            "/v1/items/{id}",
            Read,
            "Read a work item and its current `version` (needed by `items_update`).",
        ),
        spec(
            "items_list",
            get.clone(),
            "/v1/items",
            Read,
            "List work items filtered by status, assignee, labels or parent; continue with `cursor`.",
        ),
        spec(
            "items_update",
            patch.clone(),
            "/v1/items/{id}",
            Write,
            "Change a work item's fields (status, assignee, context, artifacts…). Pass `expected_version` \
             from `items_get`: if someone changed it since, the answer is `version_conflict` with the \
             current item: read it again and retry.",
        ),
        spec(
            "items_history",
            get.clone(),
            "/v1/items/{id}/history",
            Read,
            "The changes made to a work item, oldest first, each with its version, actor and fields.",
        ),
        // Messages.
        spec(
            "messages_send",
            post.clone(),
            "/v1/messages",
            Write,
            "Send a message to one or more agents' inboxes, durably: it is stored before this returns. The \
             recipients read it with `messages_receive`.",
        ),
        spec(
            "messages_receive",
            post.clone(),
            "/v1/agents/{agent}/receive",
            Write,
            "Take messages from your inbox (agent), waiting up to `wait_ms` for one. Each comes with a \
             `delivery` lease: `messages_ack` it once handled, or `messages_nack` it to have it again later.",
        ),
        spec(
            "messages_ack",
            post.clone(),
            "/v1/agents/{agent}/ack",
            Idempotent,
            "Acknowledge messages you received and handled, so they are not delivered again.",
        ),
        spec(
            "messages_nack",
            post.clone(),
            "/v1/agents/{agent}/nack",
            Write,
            "Give received messages back to be delivered again later (after `delay_ms`).",
        ),
        spec(
            "broadcasts_send",
            post.clone(),
            "/v1/broadcasts",
            Write,
            "Send one message to every agent subscribed to a channel.",
        ),
        // Convoys.
        spec(
            "convoys_create",
            post.clone(),
            "/v1/convoys",
            Write,
            "Create a convoy: a group of jobs run with bounded parallelism, with a job run when all are done.",
        ),
        spec(
            "convoys_get",
            get.clone(),
            "/v1/convoys/{id}",
            Read,
            "Read a convoy's progress: members by state and whether it completed.",
        ),
        spec("convoys_list", get.clone(), "/v1/convoys", Read, "List convoys, newest first."),
        spec(
            "convoys_add_members",
            post.clone(),
            "/v1/convoys/{id}/members",
            Write,
            "Add jobs to an open convoy.",
        ),
        spec(
            "convoys_seal",
            post.clone(),
            "/v1/convoys/{id}/seal",
            Idempotent,
            "Seal a convoy: no more members; it completes when the ones it has are done.",
        ),
        spec(
            "convoys_cancel",
            post.clone(),
            "/v1/convoys/{id}/cancel",
            Destructive,
            "Cancel a convoy and its members that have not started.",
        ),
        // Ledger.
        spec(
            "ledger_accounts_create",
            post.clone(),
            "/v1/ledger/accounts",
            Write,
            "Open a credit account (idempotent by its id).",
        ),
        spec(
            "ledger_accounts_get",
            get.clone(),
            "/v1/ledger/accounts/{id}",
            Read,
            "Read an account's balances: posted, pending, and what is available.",
        ),
        spec(
            "ledger_transfer",
            post.clone(),
            "/v1/ledger/transfers",
            Write,
            "Move credits between accounts, at once or as a pending hold to post or void later; idempotent by \
             the transfer's id. Refused with `insufficient_funds` when the debit account cannot pay.",
        ),
        spec("ledger_transfers_get", get.clone(), "/v1/ledger/transfers/{id}", Read, "Read one transfer."),
        // Checkpoints.
        spec(
            "checkpoints_list",
            get.clone(),
            "/v1/checkpoints",
            Read,
            "List a run's (thread's) checkpoints, newest first.",
        ),
        spec(
            "checkpoints_get",
            get.clone(),
            "/v1/threads/{thread}/checkpoints/{id}",
            Read,
            "Read one checkpoint of a thread, with its pending writes, to resume a run from it.",
        ),
        spec(
            "checkpoints_put",
            put.clone(),
            "/v1/threads/{thread}/checkpoints/{id}",
            Idempotent,
            "Save a checkpoint of a run (thread) so it can resume from here after a crash.",
        ),
        spec(
            "threads_get",
            get.clone(),
            "/v1/threads/{thread}",
            Read,
            "Read a thread: its latest checkpoint and settings.",
        ),
        // Memory.
        spec(
            "memory_add",
            post.clone(),
            "/v1/memory/episodes",
            Write,
            "Remember an episode (what happened, with its outcome and tags) in a namespace, so later runs can \
             find it with `memory_search`.",
        ),
        spec(
            "memory_search",
            post.clone(),
            "/v1/memory/search",
            Read,
            "Search remembered episodes by text and filters, best matches first.",
        ),
        spec("memory_get", get.clone(), "/v1/memory/episodes/{id}", Read, "Read one remembered episode."),
        spec(
            "memory_delete",
            delete.clone(),
            "/v1/memory/episodes/{id}",
            Destructive,
            "Forget one remembered episode.",
        ),
    ]
}

/// A tool and how to call its route.
pub struct ToolDef {
    /// What `tools/list` shows.
    pub tool: Tool,
    /// The route's method.
    pub method: Method,
    /// The route's path template (`/v1/jobs/{id}`).
    pub path: &'static str,
    /// Names of the path parameters.
    pub path_params: Vec<String>,
    /// Names of the query parameters.
    pub query_params: Vec<String>,
    /// Names of the header parameters (`If-Match`), sent as headers.
    pub header_params: Vec<String>,
    /// Whether the route reads a JSON body (the remaining arguments).
    pub has_body: bool,
    /// Whether a call can wait (`wait_ms`), so a cancel must reach it while it runs.
    pub waits: bool,
    /// What the route asks of its caller.
    pub policy: Policy,
    /// The kind of resource the tool's domain touches (for restricted tokens); `None` for
    /// routes that narrow their answer instead of refusing.
    kind: Option<ResourceKind>,
}

impl ToolDef {
    /// Whether `caller` may call this tool (auth off: `None`, everything): it holds the route's
    /// scope and, if restricted, some resources of the kind the route touches (a kind a token
    /// does not name allows nothing).
    pub fn visible_to(&self, caller: Option<&Principal>) -> bool {
        let Some(p) = caller else { return true };
        if self.policy.scope.is_some_and(|s| !p.has(s)) {
            return false;
        }
        let access = Access::of(Some(p));
        if !access.is_restricted() {
            return true;
        }
        let kind = match self.policy.restriction {
            Restriction::Open => return true,
            Restriction::Refused => return false,
            Restriction::Path(kind) | Restriction::Agents(kind) => kind,
            Restriction::PathJob | Restriction::PathConvoy => ResourceKind::Queue,
            // A handler that narrows what it returns to the token's resources (the queue
            // list, the events) refuses no one.
            Restriction::Handler => match self.kind {
                Some(kind) => kind,
                None => return true,
            },
        };
        access.allowed(kind).is_some_and(|names| !names.is_empty())
    }
}

/// The catalog, built once from the OpenAPI document and the routes' policies.
pub struct Catalog {
    /// Every tool, in declaration order.
    pub tools: Vec<Arc<ToolDef>>,
}

impl Catalog {
    /// Cuts every tool's schemas out of `doc`; a tool naming a route the document lacks is a bug.
    pub fn new(doc: &Value, policies: &Policies) -> Catalog {
        let tools = specs().into_iter().map(|s| Arc::new(build(s, doc, policies))).collect();
        Catalog { tools }
    }

    /// The tool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ToolDef>> {
        self.tools.iter().find(|t| t.tool.name == name)
    }
}

fn build(s: Spec, doc: &Value, policies: &Policies) -> ToolDef {
    assert!(valid_name(s.name), "tool name {}", s.name);
    let op = &doc["paths"][s.path][s.method.as_str().to_ascii_lowercase()];
    assert!(op.is_object(), "{} wraps {} {}, which the document lacks", s.name, s.method, s.path);
    let mut props = Map::new();
    let mut required = Vec::new();
    let (mut path_params, mut query_params, mut header_params) = (Vec::new(), Vec::new(), Vec::new());
    for p in op["parameters"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().expect("a parameter has a name").to_string();
        let mut schema = p["schema"].clone();
        if let (Some(obj), Some(d)) = (schema.as_object_mut(), p["description"].as_str()) {
            obj.entry("description").or_insert(json!(d));
        }
        if p["required"].as_bool() == Some(true) {
            required.push(json!(name));
        }
        match p["in"].as_str() {
            Some("path") => path_params.push(name.clone()),
            Some("header") => header_params.push(name.clone()),
            _ => query_params.push(name.clone()),
        }
        props.insert(name, schema);
    }
    let body = &op["requestBody"]["content"]["application/json"]["schema"];
    let has_body = !body.is_null();
    let mut input = Map::new();
    input.insert("type".into(), json!("object"));
    if has_body {
        let resolved = resolve(&optional_body(&resolve(body, doc)), doc);
        match resolved.get("properties").and_then(Value::as_object) {
            Some(body_props) => {
                for (k, v) in body_props {
                    // A field named like a path parameter (an item's `id`, which must agree with
                    // the path): the parameter's argument serves both.
                    if !path_params.contains(k) {
                        assert!(
                            props.insert(k.clone(), v.clone()).is_none(),
                            "{}: {k} is a query parameter and a field",
                            s.name
                        );
                    }
                }
                required.extend(resolved["required"].as_array().cloned().unwrap_or_default());
                for (k, v) in resolved.as_object().into_iter().flatten() {
                    if !matches!(k.as_str(), "properties" | "required" | "type" | "title") {
                        input.insert(k.clone(), v.clone());
                    }
                }
            }
            // A body of alternatives (one job, or a batch): kept whole beside the parameters.
            None => {
                assert!(props.is_empty(), "{}: parameters beside a body of alternatives", s.name);
                for (k, v) in resolved.as_object().into_iter().flatten() {
                    input.insert(k.clone(), v.clone());
                }
                input.insert("type".into(), json!("object"));
            }
        }
    }
    let waits = props.contains_key("wait_ms");
    if !props.is_empty() || !input.contains_key("oneOf") {
        input.insert("properties".into(), Value::Object(props));
    }
    if !required.is_empty() {
        input.insert("required".into(), Value::Array(required));
    }
    let input = with_defs(Value::Object(input), doc);
    let output = output_schema(op, doc);
    let policy = policies.of(&s.method, Some(s.path));
    let annotations = match s.effect {
        Effect::Read => ToolAnnotations::new().read_only(true),
        Effect::Write => ToolAnnotations::new().read_only(false).destructive(false).idempotent(false),
        Effect::Idempotent => ToolAnnotations::new().read_only(false).destructive(false).idempotent(true),
        Effect::Destructive => ToolAnnotations::new().read_only(false).destructive(true),
    }
    .open_world(false);
    let mut tool = Tool::new(s.name, s.description, Arc::new(as_object(input))).with_annotations(annotations);
    if let Some(out) = output {
        tool = tool.with_raw_output_schema(Arc::new(as_object(out)));
    }
    let kind = match s.name {
        "queues_stats" | "events_wait" => None,
        _ if s.name.starts_with("items_")
            || s.name.starts_with("messages_")
            || s.name.starts_with("broadcasts_") =>
        {
            Some(ResourceKind::Agent)
        }
        _ if s.name.starts_with("memory_") => Some(ResourceKind::Namespace),
        _ => Some(ResourceKind::Queue),
    };
    ToolDef {
        tool,
        method: s.method,
        path: s.path,
        path_params,
        query_params,
        header_params,
        has_body,
        waits,
        policy,
        kind,
    }
}

/// `^[a-z0-9_]{1,64}$`, which every major model API accepts.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn as_object(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("schemas are built as objects"),
    }
}

/// The success responses' schema: the one 2xx body, or any of several (enqueue answers 201 for
/// one job and 200 for a batch); `None` when no success response has a JSON body.
fn output_schema(op: &Value, doc: &Value) -> Option<Value> {
    let mut alternatives: Vec<Value> = op["responses"]
        .as_object()?
        .iter()
        .filter(|(status, _)| status.starts_with('2'))
        .filter_map(|(_, r)| {
            r["content"]["application/json"]["schema"].as_object().map(|s| Value::Object(s.clone()))
        })
        .collect();
    let mut out = match alternatives.len() {
        0 => return None,
        1 => resolve(&alternatives.pop().expect("one"), doc),
        _ => json!({"anyOf": alternatives}),
    };
    let obj = out.as_object_mut()?;
    obj.remove("title");
    obj.insert("type".into(), json!("object"));
    Some(with_defs(out, doc))
}

/// An optional body (`oneOf: [X, null]`): X, whose fields are then the tool's arguments.
fn optional_body(schema: &Value) -> Value {
    if let Some(alts) = schema["oneOf"].as_array()
        && alts.len() == 2
        && let Some(i) = alts.iter().position(|a| a["type"] == "null")
    {
        return alts[1 - i].clone();
    }
    schema.clone()
}

/// `schema` with a top-level `$ref` replaced by what it names.
fn resolve(schema: &Value, doc: &Value) -> Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().expect("a ref names a schema");
            let mut target = doc["components"]["schemas"][name].clone();
            if let (Some(obj), Some(d)) = (target.as_object_mut(), schema.get("description")) {
                obj.entry("description").or_insert(d.clone());
            }
            target
        }
        None => schema.clone(),
    }
}

/// `schema` with its references pointing into its own `$defs`, which holds every component
/// schema reachable from it.
fn with_defs(mut schema: Value, doc: &Value) -> Value {
    let mut names = BTreeSet::new();
    let mut pending = Vec::new();
    collect_refs(&schema, &mut pending);
    while let Some(n) = pending.pop() {
        if names.insert(n.clone()) {
            collect_refs(&doc["components"]["schemas"][&n], &mut pending);
        }
    }
    rewrite_refs(&mut schema);
    if !names.is_empty() {
        let mut defs = Map::new();
        for n in names {
            let mut s = doc["components"]["schemas"][&n].clone();
            rewrite_refs(&mut s);
            defs.insert(n, s);
        }
        schema.as_object_mut().expect("an object schema").insert("$defs".into(), Value::Object(defs));
    }
    schema
}

const COMPONENTS: &str = "#/components/schemas/";

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x.as_str().and_then(|r| r.strip_prefix(COMPONENTS))) {
                    ("$ref", Some(name)) => out.push(name.to_string()),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "$ref"
                    && let Some(name) = x.as_str().and_then(|r| r.strip_prefix(COMPONENTS))
                {
                    *x = json!(format!("#/$defs/{name}"));
                } else {
                    rewrite_refs(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}
