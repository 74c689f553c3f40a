//! Completes the generated OpenAPI document, so that it says exactly what the server accepts
//! and answers. The handlers' `#[utoipa::path]` attributes and the wire types' derives say
//! most of it; this adds what they cannot:
//!
//! - the statuses every route shares: the refusals of the request path (`protect::guard`,
//!   `edge.rs`, `auth.rs`) apply to all routes alike, and are added here once, not per handler
//!   (with `Retry-After` on every 429 and 503); 400 on every route with a body or a query
//!   string, 404 on every route with a path parameter;
//! - the bearer token scheme, required everywhere but `/healthz`;
//! - rules across fields (`run_at` or `delay_ms`; a DLQ selector's `ids` or `queue`), the
//!   schemas derived from others (`JobTemplate`, an imported job), and the patterns of the
//!   comma-separated event filters and of list cursors;
//! - the configured `[limits]`: the derives state the default limits; [`sync_limits`] writes
//!   the server's own into the document it serves, so a server with other limits documents
//!   those (a test checks that the derives state the defaults).

use ferry_core::{EventType, Limits};
use serde_json::{Map, Value, json};

/// Statuses any guarded route can answer, with what they mean.
const EVERY_ROUTE: &[(&str, &str)] = &[
    ("401", "unauthorized: a valid API token is required"),
    ("403", "forbidden: the token lacks the scope or queue, or a cross-site request"),
    ("414", "uri_too_long: the request target is over limits.max_uri_bytes"),
    ("422", "validation_failed: a parameter is invalid (the field is named)"),
    ("431", "headers_too_large: the headers are over limits.max_header_bytes"),
    ("429", "rate_limited or queue_full: retry after Retry-After seconds"),
    ("503", "server_saturated, circuit_open or unavailable: retry after Retry-After seconds"),
];

/// Statuses a route with a request body can answer besides.
const BODY_ROUTES: &[(&str, &str)] = &[
    ("400", "bad_request: malformed JSON or a wrong type"),
    ("408", "request_timeout: the body did not arrive within limits.body_read_timeout_ms"),
    ("413", "payload_too_large: over a size limit (the field is named)"),
    ("415", "unsupported_media_type: a body must be Content-Type: application/json"),
];

/// What a route with query parameters answers to a query it cannot read.
const QUERY_ROUTES: &[(&str, &str)] =
    &[("400", "bad_request: a malformed query string, or a parameter of the wrong type or unknown")];

/// What a route with path parameters answers when the path names nothing (an empty or
/// undecodable segment, or an id that names no resource).
const PATH_ROUTES: &[(&str, &str)] = &[("404", "not_found: no such route or resource")];

/// Statuses that carry `Retry-After`.
const RETRY: [&str; 2] = ["429", "503"];

/// The finished document, as served at `/v1/openapi.json`.
pub fn complete(api: &utoipa::openapi::OpenApi, limits: &Limits) -> Value {
    let mut doc = serde_json::to_value(api).expect("the OpenAPI document serializes");
    derived_schemas(&mut doc);
    stream_events(&mut doc);
    parameter_patterns(&mut doc, limits);
    sync_limits(&mut doc, limits);
    shared_responses(&mut doc);
    security(&mut doc);
    doc
}

/// The value at a JSON pointer of the document; a missing one is a bug in this file (the
/// derives changed shape), caught by the tests that build the document.
fn at<'a>(doc: &'a mut Value, pointer: &str) -> &'a mut Value {
    doc.pointer_mut(pointer).unwrap_or_else(|| panic!("the OpenAPI document has no {pointer}"))
}

fn object(v: &mut Value) -> &mut Map<String, Value> {
    v.as_object_mut().expect("an object in the OpenAPI document")
}

/// JSON pointer to a schema component.
fn schema(name: &str) -> String {
    format!("/components/schemas/{name}")
}

/// Every operation: (path, method, operation).
fn operations(doc: &mut Value) -> Vec<(String, String, &mut Value)> {
    let mut out = Vec::new();
    for (path, item) in object(at(doc, "/paths")).iter_mut() {
        for (method, op) in object(item).iter_mut() {
            out.push((path.clone(), method.clone(), op));
        }
    }
    out
}

/// Rules across fields and schemas derived from others.
fn derived_schemas(doc: &mut Value) {
    // `run_at` and `delay_ms` exclude each other (when both are set, that is not `null`).
    let job = at(doc, &schema("JobSpec"));
    let template_base = job.clone();
    object(job).insert(
        "not".into(),
        json!({
            "description": "`run_at` and `delay_ms` together",
            "required": ["run_at", "delay_ms"],
            "properties": {"run_at": {"type": "string"}, "delay_ms": {"type": "number"}}
        }),
    );

    // A schedule's job: a job without the fields ferry sets per tick (`check_template`).
    let mut template = template_base;
    let t = object(&mut template);
    t.insert(
        "description".into(),
        json!(
            "The job a schedule's tick enqueues: a job without `run_at`, `delay_ms`, \
               `unique_key` or `depends_on`, which ferry sets per tick (absent or `null`; \
               `depends_on` may also be empty)."
        ),
    );
    let props = object(t.get_mut("properties").expect("JobSpec has properties"));
    for field in ["run_at", "delay_ms", "unique_key"] {
        props.insert(field.into(), json!({"type": "null", "description": "set by ferry per tick"}));
    }
    let deps = props.get_mut("depends_on").expect("JobSpec.depends_on");
    object(deps).insert("maxItems".into(), json!(0));
    object(deps).insert("description".into(), json!("set by ferry per tick: absent, null or empty"));
    object(at(doc, "/components/schemas")).insert(ferry_core::schedule::JOB_TEMPLATE_SCHEMA.into(), template);

    // An imported job needs its unique key.
    *at(doc, &format!("{}/properties/job", schema("ImportItem"))) = json!({
        "description": "The job; its `unique_key` is required and dedups against jobs in any state.",
        "allOf": [
            {"$ref": "#/components/schemas/JobSpec"},
            {"required": ["unique_key"], "properties": {"unique_key": {"type": "string"}}}
        ]
    });

    // A batch op is its body with `op` beside the other fields (serde's internal tag); the
    // derived `allOf` of the body (no other properties allowed) and `{op}` cannot both hold, so
    // each branch becomes the body's own object with `op` added.
    let schemas = at(doc, "/components/schemas").clone();
    let branches =
        at(doc, &format!("{}/oneOf", schema("BatchOp"))).as_array_mut().expect("BatchOp is a oneOf");
    for branch in branches.iter_mut() {
        let parts = branch["allOf"].as_array().expect("a tagged branch is an allOf").clone();
        let body = parts[0]["$ref"].as_str().and_then(|r| r.rsplit('/').next()).expect("the branch's body");
        let mut merged = schemas[body].clone();
        let m = object(&mut merged);
        object(m.get_mut("properties").expect("a body has properties"))
            .insert("op".into(), parts[1]["properties"]["op"].clone());
        let required = m.entry("required").or_insert(json!([]));
        required.as_array_mut().expect("required is a list").push(json!("op"));
        m.insert("description".into(), branch["description"].clone());
        *branch = merged;
    }

    // A convoy's completion job: `run_at` and `delay_ms` exclude each other, as in a job.
    object(at(doc, &schema("OnCompleteSpec"))).insert(
        "not".into(),
        json!({
            "description": "`run_at` and `delay_ms` together",
            "required": ["run_at", "delay_ms"],
            "properties": {"run_at": {"type": "string"}, "delay_ms": {"type": "number"}}
        }),
    );
    // `max_parallel`: a fixed limit in range, or exactly `{"adaptive": {...}}` (the bounds'
    // order, min <= start <= max, is a rule across fields no schema states).
    let limit = at(doc, &format!("{}/oneOf/0", schema("MaxParallelBody")));
    object(limit).insert("minimum".into(), json!(1));
    object(limit).insert("maximum".into(), json!(ferry_core::wire::DEFAULT_MAX_PARALLEL));
    object(at(doc, &format!("{}/oneOf/1", schema("MaxParallelBody"))))
        .insert("additionalProperties".into(), json!(false));
    for bound in ["min", "max", "start"] {
        let b = object(at(doc, &format!("{}/properties/{bound}", schema("AdaptiveBody"))));
        b.insert("minimum".into(), json!(1));
        b.insert("maximum".into(), json!(ferry_core::wire::DEFAULT_MAX_PARALLEL));
    }

    // A DLQ selector names `ids` or `queue`, exactly one (the other absent or null).
    object(at(doc, &schema("DlqSelectorBody"))).insert(
        "oneOf".into(),
        json!([
            {"required": ["ids"], "properties": {"ids": {"type": "array"}, "queue": {"type": "null"}}},
            {"required": ["queue"], "properties": {"queue": {"type": "string"}, "ids": {"type": "null"}}}
        ]),
    );
}

/// One server-sent event of `GET /v1/events/stream` (OpenAPI 3.1 describes an event stream by
/// one event): an event (`id` its cursor, `data` its JSON), `lagged` (the cursor to resume
/// from; the stream ends) or `error` (the stream ends).
fn stream_events(doc: &mut Value) {
    let data = |schema: Value| json!({"type": "string", "contentMediaType": "application/json", "contentSchema": schema});
    let cursor = json!({"type": "string", "pattern": "^[0-9]+$"});
    let event = json!({
        "description": "An event, in the JSON of `GET /v1/events`; `id` is its cursor (send it \
                        back as `Last-Event-ID` to resume).",
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"enum": ["message"]},
            "id": cursor,
            "data": data(json!({"$ref": "#/components/schemas/Event"}))
        }
    });
    let lagged = json!({
        "description": "This client fell behind: resume from `cursor`. The stream ends.",
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": "lagged"},
            "id": cursor,
            "data": data(json!({
                "type": "object",
                "required": ["type", "cursor"],
                "properties": {"type": {"const": "lagged"}, "cursor": {"type": "integer", "minimum": 0}}
            }))
        }
    });
    let error = json!({
        "description": "The stream failed. The stream ends.",
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": "error"},
            "data": data(json!({
                "type": "object",
                "required": ["type", "error"],
                "properties": {"type": {"const": "error"}, "error": {"$ref": "#/components/schemas/Error"}}
            }))
        }
    });
    let media = at(doc, "/paths/~1v1~1events~1stream/get/responses/200/content/text~1event-stream");
    object(media).insert("schema".into(), json!({"oneOf": [event, lagged, error]}));
}

/// Characters `str::trim` removes (Unicode White_Space), as a regular expression class.
const BLANK: &str = r"[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// A comma-separated list whose items, once trimmed, are empty or match `item`.
fn list_pattern(item: &str) -> String {
    format!("^{BLANK}*({item})?{BLANK}*(,{BLANK}*({item})?{BLANK}*)*$")
}

/// Every text `uuid::Uuid::parse_str` reads: simple, hyphenated, braced or URN.
fn uuid_pattern() -> String {
    let h = "[0-9A-Fa-f]";
    let hyphenated = format!("{h}{{8}}-{h}{{4}}-{h}{{4}}-{h}{{4}}-{h}{{12}}");
    format!(r"{h}{{32}}|{hyphenated}|\{{{hyphenated}\}}|[Uu][Rr][Nn]:[Uu][Uu][Ii][Dd]:{hyphenated}")
}

/// Decimal text of an integer at most `max`: the alternatives for each digit position.
fn at_most(max: u64) -> String {
    let n = max.to_string();
    let mut alts = Vec::new();
    if n.len() > 1 {
        alts.push(format!("[0-9]{{1,{}}}", n.len() - 1));
    }
    // As many digits as `max`: its first i digits, a smaller one, then any.
    for (i, d) in n.bytes().map(|b| b - b'0').enumerate() {
        if d > 0 {
            let class = if d == 1 { "0".to_string() } else { format!("[0-{}]", d - 1) };
            let rest = match n.len() - i - 1 {
                0 => String::new(),
                k => format!("[0-9]{{{k}}}"),
            };
            alts.push(format!("{}{class}{rest}", &n[..i]));
        }
    }
    alts.push(n);
    alts.join("|")
}

/// Text `str::parse::<i64>` reads (optional sign, leading zeros), or nothing: a list cursor.
fn cursor_pattern() -> String {
    format!("^([+]?0*({})|-0*({}))?$", at_most(i64::MAX as u64), at_most(i64::MIN.unsigned_abs()))
}

/// Patterns of the parameters that are lists or numbers in text.
fn parameter_patterns(doc: &mut Value, l: &Limits) {
    let queue = format!("[A-Za-z0-9._:-]{{1,{}}}", l.max_queue_name_len);
    let types: Vec<String> = EventType::ALL.iter().map(|t| t.as_str().replace('.', r"\.")).collect();
    let filters = [
        ("queue", list_pattern(&queue)),
        ("job_id", list_pattern(&uuid_pattern())),
        ("tag", list_pattern(&format!("[^,]{{0,{}}}", l.max_tag_len))),
        ("type", list_pattern(&types.join("|"))),
    ];
    for (path, _, op) in operations(doc) {
        let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else { continue };
        for p in params.iter_mut() {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let pattern = match (path.as_str(), name.as_str()) {
                ("/v1/events" | "/v1/events/stream" | "/v1/ws", n) => {
                    filters.iter().find(|(f, _)| *f == n).map(|(_, pat)| pat.clone())
                }
                (
                    "/v1/jobs"
                    | "/v1/dlq"
                    | "/v1/items/{id}/history"
                    | "/v1/agents/{agent}/dead"
                    | "/v1/convoys"
                    | "/v1/convoys/{id}/members",
                    "cursor",
                ) => Some(cursor_pattern()),
                _ => None,
            };
            if let Some(pattern) = pattern {
                object(&mut p["schema"]).insert("pattern".into(), json!(pattern));
            }
        }
    }
}

/// Replaces a keyword the derives stated; a missing one is a bug (see [`sync_limits`]).
fn replace(doc: &mut Value, pointer: &str, key: &str, value: Value) {
    let target = object(at(doc, pointer));
    assert!(target.contains_key(key), "{pointer} has no {key} to set from the limits");
    target.insert(key.into(), value);
}

/// Pointer to the schema of query parameter `name` of `GET path`.
fn query_param(doc: &mut Value, path: &str, name: &str) -> String {
    let path = path.replace('/', "~1");
    let params = at(doc, &format!("/paths/{path}/get/parameters")).as_array().expect("parameters");
    let i = params.iter().position(|p| p["name"] == name).unwrap_or_else(|| panic!("no {name} on {path}"));
    format!("/paths/{path}/get/parameters/{i}/schema")
}

/// Writes the configured limits where the derives state the defaults. Each keyword must
/// already be there: a limit is only ever replaced, so the derives keep saying which fields
/// have one.
pub fn sync_limits(doc: &mut Value, l: &Limits) {
    let name = |class: &str, max: usize| json!(format!("^{class}{{1,{max}}}$"));
    let printable = r"[^\x00-\x1f\x7f-\x9f]";
    let mut sets: Vec<(String, &str, Value)> = Vec::new();
    let queue = schema("QueueName");
    sets.push((queue.clone(), "pattern", name("[A-Za-z0-9._:-]", l.max_queue_name_len)));
    sets.push((queue, "maxLength", json!(l.max_queue_name_len)));
    let worker = schema("WorkerName");
    sets.push((worker.clone(), "pattern", name(printable, l.max_worker_name_len)));
    sets.push((worker, "maxLength", json!(l.max_worker_name_len)));
    let tag = schema("Tag");
    sets.push((tag.clone(), "pattern", name(printable, l.max_tag_len)));
    sets.push((tag, "maxLength", json!(l.max_tag_len)));
    let host = format!("{}/properties/name", schema("HostBody"));
    sets.push((host.clone(), "pattern", name(printable, l.max_name_len)));
    sets.push((host, "maxLength", json!(l.max_name_len)));
    sets.push((format!("{}/properties/name", schema("TokenBody")), "maxLength", json!(l.max_name_len)));
    sets.push((format!("{}/properties/queues", schema("TokenBody")), "maxItems", json!(l.max_tags)));

    for job in ["JobSpec", "JobTemplate"] {
        let p = |f: &str| format!("{}/properties/{f}", schema(job));
        if job == "JobSpec" {
            sets.push((p("delay_ms"), "maximum", json!(l.max_delay_ms)));
            sets.push((p("unique_key"), "maxLength", json!(l.max_unique_key_len)));
            sets.push((p("depends_on"), "maxItems", json!(l.max_depends_on)));
        }
        sets.push((p("max_attempts"), "maximum", json!(l.max_attempts)));
        sets.push((p("lease_ms"), "minimum", json!(l.min_lease_ms)));
        sets.push((p("lease_ms"), "maximum", json!(l.max_lease_ms)));
        sets.push((p("timeout_ms"), "maximum", json!(l.max_timeout_ms)));
        sets.push((p("tags"), "maxItems", json!(l.max_tags)));
    }
    sets.push((format!("{}/properties/max_ms", schema("Backoff")), "maximum", json!(l.max_delay_ms)));
    let claim = |f: &str| format!("{}/properties/{f}", schema("ClaimBody"));
    sets.push((claim("max"), "maximum", json!(l.max_claim)));
    sets.push((claim("lease_ms"), "minimum", json!(l.min_lease_ms)));
    sets.push((claim("lease_ms"), "maximum", json!(l.max_lease_ms)));
    sets.push((claim("wait_ms"), "maximum", json!(l.max_wait_ms)));
    for body in ["HeartbeatBody", "HeartbeatItemBody"] {
        let extend = format!("{}/properties/extend_ms", schema(body));
        sets.push((extend.clone(), "minimum", json!(l.min_lease_ms)));
        sets.push((extend, "maximum", json!(l.max_lease_ms)));
    }
    for (s, f) in [
        ("JobBatch", "jobs"),
        ("ImportBody", "jobs"),
        ("CompleteBatchBody", "items"),
        ("FailBatchBody", "items"),
        ("HeartbeatBatchBody", "items"),
        ("DlqSelectorBody", "ids"),
    ] {
        sets.push((format!("{}/properties/{f}", schema(s)), "maxItems", json!(l.max_batch)));
    }
    for s in ["ScheduleSpec", "SchedulePatch"] {
        sets.push((format!("{}/properties/catch_up_max", schema(s)), "maximum", json!(l.max_catch_up)));
    }
    for (s, class, max) in [
        ("ItemId", "[A-Za-z0-9._:-]", l.max_item_id_len),
        ("AgentName", "[A-Za-z0-9._:-]", l.max_agent_name_len),
    ] {
        sets.push((schema(s), "pattern", name(class, max)));
        sets.push((schema(s), "maxLength", json!(max)));
    }
    for body in ["CreateItemBody", "PatchItemBody"] {
        let p = |f: &str| format!("{}/properties/{f}", schema(body));
        sets.push((p("title"), "maxLength", json!(l.max_title_bytes)));
        sets.push((p("description"), "maxLength", json!(l.max_description_bytes)));
    }
    let item = |s: &str, f: &str| format!("{}/properties/{f}", schema(s));
    sets.push((item("PatchItemBody", "reason"), "maxLength", json!(l.max_title_bytes)));
    sets.push((item("CreateItemBody", "artifacts"), "maxItems", json!(l.max_artifacts)));
    sets.push((item("PatchItemBody", "artifacts_add"), "maxItems", json!(l.max_artifacts)));
    sets.push((item("PatchItemBody", "artifacts_remove"), "maxItems", json!(l.max_artifacts)));
    sets.push((item("BatchItemsBody", "ops"), "maxItems", json!(l.max_batch)));
    sets.push((item("TokenBody", "agents"), "maxItems", json!(l.max_recipients)));
    for body in ["SendBody", "BroadcastBody"] {
        sets.push((item(body, "ttl_ms"), "maximum", json!(l.max_message_ttl_ms)));
    }
    sets.push((item("SendBody", "to"), "maxItems", json!(l.max_recipients)));
    sets.push((item("SendBody", "dedup_key"), "maxLength", json!(l.max_unique_key_len)));
    sets.push((item("SendBody", "correlation_id"), "maxLength", json!(l.max_unique_key_len)));
    sets.push((item("ReceiveBody", "max"), "maximum", json!(l.max_claim)));
    sets.push((item("ReceiveBody", "wait_ms"), "maximum", json!(l.max_wait_ms)));
    sets.push((item("ReceiveBody", "visibility_ms"), "minimum", json!(l.min_lease_ms)));
    sets.push((item("ReceiveBody", "visibility_ms"), "maximum", json!(l.max_lease_ms)));
    sets.push((item("NackBody", "delay_ms"), "maximum", json!(l.max_delay_ms)));
    for (s, f) in [("AckBody", "receipts"), ("NackBody", "receipts"), ("ReplayMessagesBody", "ids")] {
        sets.push((item(s, f), "maxItems", json!(l.max_batch)));
    }
    sets.push((item("ChannelsBody", "channels"), "maxItems", json!(l.max_agent_channels)));
    // Query parameters (inline in their operations).
    for path in ["/v1/jobs", "/v1/dlq"] {
        let q = query_param(doc, path, "queue");
        let filter = format!("^[A-Za-z0-9._:-]{{0,{}}}$", l.max_queue_name_len);
        sets.push((q.clone(), "pattern", json!(filter)));
        sets.push((q, "maxLength", json!(l.max_queue_name_len)));
        sets.push((query_param(doc, path, "limit"), "maximum", json!(l.max_page_size)));
    }
    for path in ["/v1/items", "/v1/items/{id}/history", "/v1/agents", "/v1/agents/{agent}/dead"] {
        sets.push((query_param(doc, path, "limit"), "maximum", json!(l.max_page_size)));
    }
    sets.push((query_param(doc, "/v1/items/{id}", "wait_ms"), "maximum", json!(l.max_wait_ms)));
    for path in ["/v1/events", "/v1/events/stream", "/v1/ws"] {
        sets.push((query_param(doc, path, "wait_ms"), "maximum", json!(l.max_wait_ms)));
        sets.push((query_param(doc, path, "limit"), "maximum", json!(l.max_page_size)));
    }
    sets.push((format!("{}/oneOf/0", schema("MaxParallelBody")), "maximum", json!(l.max_convoy_parallel)));
    for bound in ["min", "max", "start"] {
        let p = format!("{}/properties/{bound}", schema("AdaptiveBody"));
        sets.push((p, "maximum", json!(l.max_convoy_parallel)));
    }
    sets.push((
        format!("{}/properties/members", schema("ConvoyBody")),
        "maxItems",
        json!(l.max_convoy_members_per_request),
    ));
    sets.push((
        format!("{}/properties/members", schema("MembersBody")),
        "maxItems",
        json!(l.max_convoy_members_per_request),
    ));
    for path in ["/v1/ledger/accounts", "/v1/ledger/accounts/{id}/transfers", "/v1/ledger/events"] {
        sets.push((query_param(doc, path, "limit"), "maximum", json!(l.max_page_size)));
    }
    sets.push((schema("LedgerId"), "maxLength", json!(l.max_ledger_id_len)));
    let cursor = json!(format!("^[A-Za-z0-9._:%-]{{0,{}}}$", l.max_ledger_id_len));
    sets.push((query_param(doc, "/v1/ledger/accounts", "cursor"), "pattern", cursor));
    sets.push((format!("{}/properties/accounts", schema("AccountsBody")), "maxItems", json!(l.max_batch)));
    sets.push((format!("{}/properties/transfers", schema("TransfersBody")), "maxItems", json!(l.max_batch)));
    sets.push((
        format!("{}/properties/timeout_ms", schema("TransferBody")),
        "maximum",
        json!(l.max_delay_ms),
    ));
    for (pointer, key, value) in sets {
        replace(doc, &pointer, key, value);
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// Adds a shared status to an operation's responses. A status the route declares already
/// keeps its own description and, when its body is not an `ErrorBody`, takes either (the
/// request path answers with `ErrorBody` before the handler runs).
fn add_response(responses: &mut Map<String, Value>, status: &str, description: &str) {
    let shared = error_response(description);
    let r = responses.entry(status.to_string()).or_insert_with(|| shared.clone());
    let r = object(r);
    r.entry("description").or_insert_with(|| json!(description));
    let error_schema = &shared["content"]["application/json"]["schema"];
    match r.get_mut("content").and_then(|c| c.get_mut("application/json")).and_then(|m| m.get_mut("schema")) {
        Some(s) if s == error_schema => {}
        Some(s) if s.get("oneOf").is_some() => {}
        Some(s) => *s = json!({"oneOf": [s.clone(), error_schema.clone()]}),
        None => {
            r.insert("content".into(), shared["content"].clone());
        }
    }
}

fn shared_responses(doc: &mut Value) {
    for (path, _, op) in operations(doc) {
        let has_body = op.get("requestBody").is_some();
        let params: Vec<String> = op
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().filter_map(|p| p["in"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let responses = object(&mut op["responses"]);
        if path != "/healthz" {
            let mut lists = vec![EVERY_ROUTE];
            if has_body {
                lists.push(BODY_ROUTES);
            }
            if params.iter().any(|p| p == "query") {
                lists.push(QUERY_ROUTES);
            }
            if params.iter().any(|p| p == "path") {
                lists.push(PATH_ROUTES);
            }
            for (status, description) in lists.into_iter().flatten() {
                add_response(responses, status, description);
            }
        }
        for (status, r) in responses.iter_mut() {
            let r = object(r);
            r.entry("description").or_insert_with(|| json!(format!("status {status}")));
            if RETRY.contains(&status.as_str()) {
                object(r.entry("headers").or_insert_with(|| json!({}))).insert(
                    "Retry-After".into(),
                    json!({
                        "description": "seconds to wait before retrying",
                        "required": true,
                        "schema": {"type": "integer", "minimum": 0}
                    }),
                );
            }
        }
    }
}

/// Every route but `/healthz` needs `Authorization: Bearer <token>` once auth is on.
fn security(doc: &mut Value) {
    let components = object(at(doc, "/components"));
    components.insert(
        "securitySchemes".into(),
        json!({"bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (`ferry tokens create`). Needed once auth is on: once a token \
                            exists, or when configured."
        }}),
    );
    object(doc).insert("security".into(), json!([{"bearer": []}]));
    object(at(doc, "/paths/~1healthz/get")).insert("security".into(), json!([]));
}

/// The HTTP methods a path item has operations for.
pub fn methods(item: &utoipa::openapi::path::PathItem) -> Vec<axum::http::Method> {
    use axum::http::Method;
    [
        (&item.get, Method::GET),
        (&item.put, Method::PUT),
        (&item.post, Method::POST),
        (&item.delete, Method::DELETE),
        (&item.patch, Method::PATCH),
        (&item.head, Method::HEAD),
        (&item.options, Method::OPTIONS),
        (&item.trace, Method::TRACE),
    ]
    .into_iter()
    .filter(|(op, _)| op.is_some())
    .map(|(_, m)| m)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        let (_, api) = super::super::routes().router.split_for_parts();
        let mut doc = serde_json::to_value(&api).unwrap();
        derived_schemas(&mut doc);
        doc
    }

    #[test]
    fn the_derives_state_the_default_limits() {
        let doc = base();
        let mut synced = doc.clone();
        sync_limits(&mut synced, &Limits::default());
        assert_eq!(doc, synced, "a derive states a bound other than the default limit");
    }

    #[test]
    fn configured_limits_are_served() {
        let (_, api) = super::super::routes().router.split_for_parts();
        let l = Limits { max_queue_name_len: 8, max_batch: 3, ..Limits::default() };
        let doc = complete(&api, &l);
        assert_eq!(doc["components"]["schemas"]["QueueName"]["pattern"], "^[A-Za-z0-9._:-]{1,8}$");
        assert_eq!(doc["components"]["schemas"]["JobBatch"]["properties"]["jobs"]["maxItems"], 3);
    }

    #[test]
    fn cursor_pattern_is_the_int64_range() {
        assert_eq!(at_most(305), "[0-9]{1,2}|[0-2][0-9]{2}|30[0-4]|305");
        assert_eq!(at_most(7), "[0-6]|7");
        // Checked against 200,000 random integers across ±2^64 and the edges of the range
        // (Python's `re`, which reads this subset of regular expressions as ECMA-262 does).
        assert_eq!(
            cursor_pattern(),
            "^([+]?0*([0-9]{1,18}|[0-8][0-9]{18}|9[0-1][0-9]{17}|92[0-1][0-9]{16}|922[0-2][0-9]{15}|\
             9223[0-2][0-9]{14}|92233[0-6][0-9]{13}|922337[0-1][0-9]{12}|92233720[0-2][0-9]{10}|\
             922337203[0-5][0-9]{9}|9223372036[0-7][0-9]{8}|92233720368[0-4][0-9]{7}|\
             922337203685[0-3][0-9]{6}|9223372036854[0-6][0-9]{5}|92233720368547[0-6][0-9]{4}|\
             922337203685477[0-4][0-9]{3}|9223372036854775[0-7][0-9]{2}|922337203685477580[0-6]|\
             9223372036854775807)|-0*([0-9]{1,18}|[0-8][0-9]{18}|9[0-1][0-9]{17}|92[0-1][0-9]{16}|\
             922[0-2][0-9]{15}|9223[0-2][0-9]{14}|92233[0-6][0-9]{13}|922337[0-1][0-9]{12}|\
             92233720[0-2][0-9]{10}|922337203[0-5][0-9]{9}|9223372036[0-7][0-9]{8}|\
             92233720368[0-4][0-9]{7}|922337203685[0-3][0-9]{6}|9223372036854[0-6][0-9]{5}|\
             92233720368547[0-6][0-9]{4}|922337203685477[0-4][0-9]{3}|9223372036854775[0-7][0-9]{2}|\
             922337203685477580[0-7]|9223372036854775808))?$"
        );
    }

    #[test]
    fn every_response_is_described_and_operation_ids_are_unique() {
        let (_, api) = super::super::routes().router.split_for_parts();
        let mut doc = complete(&api, &Limits::default());
        let mut ids = std::collections::HashSet::new();
        for (path, method, op) in operations(&mut doc) {
            let id = op["operationId"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "operationId {id} twice ({method} {path})");
            for (status, r) in op["responses"].as_object().unwrap() {
                assert!(r["description"].is_string(), "{method} {path} {status} has no description");
            }
        }
    }
}
