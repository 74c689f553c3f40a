//! Events and schedules over the real server: long-poll, SSE (parsed by an SSE client
//! library) and WebSocket (a real WebSocket client), resume without gaps or duplicates, lag
//! handling, 1,000 concurrent subscribers, the schedules API and CLI; and, on PostgreSQL, events
//! and schedules across nodes.

use crate::common::Server;
use crate::common::pg::TestDb;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn enqueue(s: &Server, body: Value) -> Value {
    let r = http().post(s.at("/v1/jobs")).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

async fn poll(s: &Server, query: &str) -> (u16, Value) {
    poll_at(&s.url, query).await
}

/// `poll` by the server's URL, for tasks that do not hold the server.
async fn poll_at(url: &str, query: &str) -> (u16, Value) {
    let r = http().get(format!("{url}/v1/events?{query}")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn cursors(v: &Value) -> Vec<u64> {
    v["events"].as_array().unwrap().iter().map(|e| e["cursor"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_filters_resumes_and_waits() {
    let s = Server::start();
    let a = enqueue(&s, json!({"queue": "a", "tags": ["vip"]})).await;
    enqueue(&s, json!({"queue": "b"})).await;
    enqueue(&s, json!({"queue": "a"})).await;
    let (st, all) = poll(&s, "since=0").await;
    assert_eq!(st, 200);
    assert_eq!(cursors(&all), [1, 2, 3]);
    assert_eq!(all["events"][0]["type"], "job.enqueued");
    assert_eq!(all["events"][0]["job_id"], a["id"]);
    let (_, only_a) = poll(&s, "since=0&queue=a").await;
    assert_eq!(cursors(&only_a), [1, 3]);
    let (_, vip) = poll(&s, "since=0&tag=vip").await;
    assert_eq!(cursors(&vip), [1]);
    let (_, typed) = poll(&s, "since=0&type=job.completed").await;
    assert_eq!(cursors(&typed), Vec::<u64>::new());
    assert_eq!(typed["next_cursor"], 3, "the cursor moves past events that did not match");
    let (_, rest) = poll(&s, "since=1&limit=1").await;
    assert_eq!(cursors(&rest), [2]);
    assert_eq!(rest["next_cursor"], 2);
    // Waiting: an event arriving later ends the wait at once.
    let url = s.url.clone();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        http().post(format!("{url}/v1/queues/a/pause")).send().await.unwrap();
    });
    let t = Instant::now();
    let (_, waited) = poll(&s, "since=3&wait_ms=10000").await;
    assert!(t.elapsed() < Duration::from_secs(5), "woken, not timed out: {:?}", t.elapsed());
    assert_eq!(waited["events"][0]["type"], "queue.paused");
    later.await.unwrap();
    // Without since: only new events; an empty wait returns the current cursor.
    let (_, now) = poll(&s, "wait_ms=100").await;
    assert_eq!(cursors(&now), Vec::<u64>::new());
    assert_eq!(now["next_cursor"], 4);
    // Bad input.
    let (st, e) = poll(&s, "type=job.exploded").await;
    assert_eq!((st, e["error"]["field"].as_str()), (422, Some("type")));
    let (st, e) = poll(&s, "job_id=nope").await;
    assert_eq!((st, e["error"]["field"].as_str()), (422, Some("job_id")));
    let (st, _) = poll(&s, "wait_ms=999999999").await;
    assert_eq!(st, 422);
    let (st, _) = poll(&s, "since=-1").await;
    assert_eq!(st, 400);
}

/// Reads SSE events until `n` data events arrived; returns (id, json) pairs.
async fn sse_take(
    stream: &mut (
             impl futures_util::Stream<Item = Result<eventsource_stream::Event, impl std::fmt::Debug>> + Unpin
         ),
    n: usize,
) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an SSE event within 10 s")
            .expect("stream open")
            .expect("well-formed SSE");
        out.push((ev.id.clone(), ev.event.clone(), serde_json::from_str(&ev.data).unwrap()));
    }
    out
}

async fn sse(
    s: &Server,
    query: &str,
    last_id: Option<&str>,
) -> impl futures_util::Stream<Item = Result<eventsource_stream::Event, impl std::fmt::Debug>> + Unpin {
    use eventsource_stream::Eventsource;
    let mut req = http().get(s.at(&format!("/v1/events/stream?{query}")));
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    Box::pin(r.bytes_stream().eventsource())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_live_and_resumes_with_last_event_id() {
    let s = Server::start();
    for _ in 0..3 {
        enqueue(&s, json!({"queue": "mail"})).await;
    }
    let mut stream = sse(&s, "since=0&queue=mail", None).await;
    let first = sse_take(&mut stream, 3).await;
    assert_eq!(first.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["1", "2", "3"]);
    assert_eq!(first[0].2["type"], "job.enqueued");
    // Live: an event after connecting arrives without polling.
    enqueue(&s, json!({"queue": "mail"})).await;
    let live = sse_take(&mut stream, 1).await;
    assert_eq!(live[0].0, "4");
    drop(stream);
    // Missed while disconnected, then resumed from the last id: no gap, no duplicate.
    for _ in 0..2 {
        enqueue(&s, json!({"queue": "mail"})).await;
    }
    enqueue(&s, json!({"queue": "other"})).await;
    let mut stream = sse(&s, "queue=mail", Some("4")).await;
    let resumed = sse_take(&mut stream, 2).await;
    assert_eq!(resumed.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["5", "6"]);
    enqueue(&s, json!({"queue": "mail"})).await;
    assert_eq!(sse_take(&mut stream, 1).await[0].0, "8", "the other queue's event 7 is filtered out");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(s: &Server, query: &str) -> Ws {
    let url = s.url.replace("http://", "ws://");
    tokio_tungstenite::connect_async(format!("{url}/v1/ws?{query}")).await.expect("websocket connects").0
}

async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("socket open")
            .expect("no socket error");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => return json!({"closed": c.map(|c| u16::from(c.code))}),
            _ => continue,
        }
    }
}

async fn ws_send(ws: &mut Ws, v: Value) -> Value {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
    ws_next(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_rooms_subscribe_unsubscribe_and_resume() {
    let s = Server::start();
    let mut c = ws(&s, "").await;
    let r = ws_send(&mut c, json!({"op": "subscribe", "rooms": ["queue:mail", "tag:vip"]})).await;
    assert_eq!(r["type"], "subscribed");
    assert_eq!(r["rooms"], json!(["queue:mail", "tag:vip"]));
    enqueue(&s, json!({"queue": "other"})).await;
    let vip = enqueue(&s, json!({"queue": "other", "tags": ["vip"]})).await;
    let mail = enqueue(&s, json!({"queue": "mail"})).await;
    let e1 = ws_next(&mut c).await;
    assert_eq!((e1["type"].as_str(), e1["job_id"].clone()), (Some("job.enqueued"), vip["id"].clone()));
    let e2 = ws_next(&mut c).await;
    assert_eq!(e2["job_id"], mail["id"]);
    assert!(e2["cursor"].as_u64() > e1["cursor"].as_u64());
    // A job room: its lifecycle follows.
    let job = enqueue(&s, json!({"queue": "solo"})).await;
    let id = job["id"].as_str().unwrap();
    let r = ws_send(&mut c, json!({"op": "subscribe", "room": format!("job:{id}")})).await;
    assert_eq!(r["type"], "subscribed");
    let claimed: Value = http()
        .post(s.at("/v1/queues/solo/claim"))
        .json(&json!({"worker": "w1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut started = ws_next(&mut c).await;
    if started["type"] == "job.enqueued" && started["job_id"] == id {
        // Committed before the subscription, but fanned out by the hub after it joined the
        // room (a loaded machine): delivered in order, before the job's later events.
        started = ws_next(&mut c).await;
    }
    assert_eq!((started["type"].as_str(), started["job_id"].as_str()), (Some("job.started"), Some(id)));
    assert_eq!(started["data"]["worker"], "w1");
    let lease = claimed["jobs"][0]["lease"].as_str().unwrap();
    http()
        .post(s.at(&format!("/v1/jobs/{id}/complete")))
        .json(&json!({"lease": lease}))
        .send()
        .await
        .unwrap();
    let done = ws_next(&mut c).await;
    assert_eq!(done["type"], "job.completed");
    // Unsubscribe: the room goes quiet.
    let r = ws_send(
        &mut c,
        json!({"op": "unsubscribe", "rooms": ["queue:mail", "tag:vip", format!("job:{id}")]}),
    )
    .await;
    assert_eq!((r["type"].as_str(), r["rooms"].clone()), (Some("unsubscribed"), json!([])));
    enqueue(&s, json!({"queue": "mail"})).await;
    let pong = ws_send(&mut c, json!({"op": "ping"})).await;
    assert_eq!(pong["type"], "pong", "no event came in between");
    // Bad messages get an error reply, and the connection stays.
    let e = ws_send(&mut c, json!({"op": "subscribe", "rooms": ["planet:mars"]})).await;
    assert_eq!((e["type"].as_str(), e["error"]["field"].as_str()), (Some("error"), Some("rooms[0]")));
    let e = ws_send(&mut c, json!({"op": "dance"})).await;
    assert_eq!(e["error"]["field"], "op");
    c.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(ws_next(&mut c).await["error"]["code"], "bad_request");
    drop(c);
    let (_, mails) = poll(&s, "since=0&queue=mail").await;
    let cursor_before = *cursors(&mails).last().unwrap();
    // Resume from a cursor over a fresh connection with rooms from the query.
    let mut c = ws(&s, &format!("since={}&queue=mail", cursor_before - 1)).await;
    let again = ws_next(&mut c).await;
    assert_eq!(again["cursor"].as_u64(), Some(cursor_before), "the last mail event, once");
    enqueue(&s, json!({"queue": "mail"})).await;
    assert_eq!(ws_next(&mut c).await["cursor"].as_u64(), Some(cursor_before + 1));
    // Messages over the size limit are refused by closing.
    let big = json!({"op": "subscribe", "rooms": ["queue:".to_string() + &"x".repeat(5000)]});
    let _ = c.send(Message::Text(big.to_string().into())).await;
    let end = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "the oversized message is not served: {end:?}");
}

/// Every event names its subject; a schedule's room (`schedule:<name>`) hears its ticks, and a
/// queue's event is about the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_their_subject_and_schedule_rooms_hear_ticks() {
    let s = Server::start();
    let mut c = ws(&s, "").await;
    let r = ws_send(&mut c, json!({"op": "subscribe", "rooms": ["schedule:tick", "queue:sms"]})).await;
    assert_eq!(r["rooms"], json!(["schedule:tick", "queue:sms"]));
    let job = enqueue(&s, json!({"queue": "sms"})).await;
    let e = ws_next(&mut c).await;
    assert_eq!(e["subject"], json!({"kind": "job", "id": job["id"]}));
    assert_eq!(
        (e["queue"].as_str(), e["job_id"].clone()),
        (Some("sms"), job["id"].clone()),
        "job fields stay"
    );
    let status = http().post(s.at("/v1/queues/sms/pause")).send().await.unwrap().status();
    assert_eq!(status, 200);
    let e = ws_next(&mut c).await;
    assert_eq!(
        (e["type"].as_str(), e["subject"].clone()),
        (Some("queue.paused"), json!({"kind": "queue", "id": "sms"}))
    );
    let created = http()
        .post(s.at("/v1/schedules"))
        .json(&json!({"name": "tick", "cron": "* * * * * *", "job": {"queue": "cron"}}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(created, 201);
    // The schedule's room hears its tick (not the enqueue of the job it made: another queue).
    let e = ws_next(&mut c).await;
    assert_eq!(e["type"], "schedule.fired");
    assert_eq!(e["subject"], json!({"kind": "schedule", "id": "tick"}));
    assert_eq!(e["queue"], "cron");
    let (_, all) = poll(&s, "since=0&limit=1000").await;
    for e in all["events"].as_array().unwrap() {
        assert!(e["subject"]["kind"].is_string() && e["subject"]["id"].is_string(), "{e}");
    }
    let bad = ws_send(&mut c, json!({"op": "subscribe", "rooms": ["schedule:"]})).await;
    assert_eq!(bad["error"]["field"], "rooms[0]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_told_it_lagged_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), "[limits]\nevent_buffer = 5000\n").unwrap();
    let cfg = dir.path().join("ferry.toml");
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()], dir);
    let mut slow = ws(&s, "").await;
    assert_eq!(ws_send(&mut slow, json!({"op": "subscribe", "rooms": ["*"]})).await["type"], "subscribed");
    let mut fast = ws(&s, "").await;
    assert_eq!(ws_send(&mut fast, json!({"op": "subscribe", "rooms": ["*"]})).await["type"], "subscribed");
    // The fast consumer reads everything while the slow one reads nothing.
    let total = 100_000u64;
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < total {
            let e = ws_next(&mut fast).await;
            let c = e["cursor"].as_u64().expect("an event, not lagged");
            assert_eq!(c, last + 1, "the fast consumer sees every event in order");
            last = c;
        }
    });
    for _ in 0..200 {
        let jobs: Vec<Value> = (0..500).map(|_| json!({"queue": "flood"})).collect();
        enqueue(&s, json!({"jobs": jobs})).await;
    }
    tokio::time::timeout(Duration::from_secs(120), reader).await.expect("fast consumer keeps up").unwrap();
    // The slow consumer drains its socket and finds `lagged` with a cursor to resume from.
    let mut seen = 0u64;
    let lagged = loop {
        let m = ws_next(&mut slow).await;
        if m["type"] == "lagged" {
            break m;
        }
        let c = m["cursor"].as_u64().expect("an event");
        assert_eq!(c, seen + 1, "in order, no gap before the lag");
        seen = c;
    };
    assert_eq!(lagged["cursor"].as_u64(), Some(seen), "resume right after the last delivered event");
    assert!(seen < total, "it did lag");
    assert_eq!(ws_next(&mut slow).await["closed"], 4008);
    // Resuming from that cursor yields the rest.
    let (_, rest) = poll(&s, &format!("since={seen}&limit=1")).await;
    assert_eq!(cursors(&rest), [seen + 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_websocket_subscribers_all_get_the_event() {
    let s = Server::start();
    let mut clients = Vec::new();
    for i in 0..1_000 {
        let mut c = ws(&s, &format!("queue=fan{}", i % 10)).await;
        // Connected and registered: a ping round trip proves the session runs.
        assert_eq!(ws_send(&mut c, json!({"op": "ping"})).await["type"], "pong");
        clients.push(c);
    }
    for q in 0..10 {
        enqueue(&s, json!({"queue": format!("fan{q}")})).await;
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let e = ws_next(&mut c).await;
            assert_eq!(e["queue"], format!("fan{}", i % 10), "only its own room");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_api_and_cli() {
    let s = Server::start();
    let post = |body: Value| {
        let url = s.at("/v1/schedules");
        async move {
            let r = http().post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, created) =
        post(json!({"name": "tick", "cron": "* * * * * *", "job": {"queue": "ticks", "payload": {"k": 1}}}))
            .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["misfire"], "run_once");
    assert_eq!(created["next_runs"].as_array().unwrap().len(), 5);
    let (st, dup) = post(json!({"name": "tick", "cron": "@daily", "job": {"queue": "x"}})).await;
    assert_eq!((st, dup["error"]["code"].as_str()), (409, Some("conflict")));
    let (st, bad) = post(json!({"name": "bad", "cron": "0 0 32 * *", "job": {"queue": "x"}})).await;
    assert_eq!(
        (st, bad["error"]["field"].as_str(), bad["error"]["position"].as_u64()),
        (422, Some("cron"), Some(4))
    );
    let (st, bad) =
        post(json!({"name": "bad", "cron": "@daily", "timezone": "Europe/Atlantis", "job": {"queue": "x"}}))
            .await;
    assert_eq!((st, bad["error"]["field"].as_str()), (422, Some("timezone")));
    let (st, bad) =
        post(json!({"name": "bad", "cron": "@daily", "misfire": "never", "job": {"queue": "x"}})).await;
    assert_eq!((st, bad["error"]["field"].as_str()), (422, Some("misfire")));
    let (st, bad) =
        post(json!({"name": "bad", "cron": "@daily", "job": {"queue": "x", "unique_key": "k"}})).await;
    assert_eq!((st, bad["error"]["field"].as_str()), (422, Some("job.unique_key")));
    // It fires every second: a job per tick, each with its tick in the unique key.
    let deadline = Instant::now() + Duration::from_secs(10);
    let jobs = loop {
        let page: Value =
            http().get(s.at("/v1/jobs?queue=ticks")).send().await.unwrap().json().await.unwrap();
        if page["jobs"].as_array().is_some_and(|j| j.len() >= 2) || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let list = jobs["jobs"].as_array().expect("jobs list");
    assert!(list.len() >= 2, "two ticks within 10 s: {jobs}");
    assert!(list[0]["unique_key"].as_str().unwrap().starts_with("schedule:tick:"));
    assert_eq!(list[0]["payload"], json!({"k": 1}));
    // CLI: pause, list, next, rm.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env("FERRY_URL", &s.url)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = cli(&["schedules", "pause", "tick"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("paused"), "{out}");
    let (code, out, _) = cli(&[
        "schedules",
        "add",
        "nightly",
        "--cron",
        "30 2 * * *",
        "--tz",
        "Europe/Paris",
        "--queue",
        "reports",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let (_, out, _) = cli(&["schedules", "list"]);
    assert!(out.contains("nightly") && out.contains("Europe/Paris") && out.contains("tick"), "{out}");
    let (_, out, _) = cli(&["schedules", "next", "nightly", "--count", "3"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.ends_with(":30:00.000Z")), "{out}");
    let (code, _, err) = cli(&["schedules", "add", "oops", "--cron", "61 * * * *", "--queue", "q"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("position 0"), "{err}");
    let (code, _, _) = cli(&["schedules", "rm", "nightly"]);
    assert_eq!(code, Some(0));
    let (code, _, err) = cli(&["schedules", "rm", "nightly"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, _) = cli(&["schedules", "resume", "tick"]);
    assert_eq!(code, Some(0));
    // ferry watch prints events.
    let (code, out, _) =
        cli(&["watch", "--since", "0", "--type", "schedule.fired", "--count", "2", "--json"]);
    assert_eq!(code, Some(0));
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["data"]["schedule"], "tick");
}

/// PostgreSQL: an event made on one node reaches a subscriber on another, in cursor order;
/// a schedule on three nodes enqueues each tick once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_and_schedules_across_nodes() {
    let Some(db) = TestDb::create("ferry_ev").await else { return };
    let nodes: Vec<Server> =
        (0..3).map(|_| Server::start_with(&["--database", &db.url], tempfile::tempdir().unwrap())).collect();
    let mut sub = ws(&nodes[2], "queue=x").await;
    assert_eq!(ws_send(&mut sub, json!({"op": "ping"})).await["type"], "pong");
    let t = Instant::now();
    let job = enqueue(&nodes[0], json!({"queue": "x"})).await;
    let e = ws_next(&mut sub).await;
    assert_eq!(e["job_id"], job["id"]);
    assert!(t.elapsed() < Duration::from_secs(2), "cross-node event took {:?}", t.elapsed());
    for i in 0..20 {
        enqueue(&nodes[i % 2], json!({"queue": "x"})).await;
    }
    let mut last = e["cursor"].as_u64().unwrap();
    for _ in 0..20 {
        let c = ws_next(&mut sub).await["cursor"].as_u64().unwrap();
        assert!(c > last, "cursor order across nodes");
        last = c;
    }
    let r = http()
        .post(nodes[1].at("/v1/schedules"))
        .json(&json!({"name": "pg-tick", "cron": "* * * * * *", "job": {"queue": "pg-ticks"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    http().post(nodes[0].at("/v1/schedules/pg-tick/pause")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page: Value = http()
        .get(nodes[2].at("/v1/jobs?queue=pg-ticks&limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> =
        page["jobs"].as_array().unwrap().iter().map(|j| j["unique_key"].as_str().unwrap()).collect();
    let distinct: std::collections::HashSet<&&str> = keys.iter().collect();
    assert!(keys.len() >= 3, "ticks fired: {keys:?}");
    assert_eq!(distinct.len(), keys.len(), "each tick once across three nodes: {keys:?}");
    drop(nodes);
    drop(db);
}

/// A server whose catch-up budget is `per_s` events per second, with `jobs` jobs enqueued in
/// one batch (one `job.enqueued` event each, cursors 1..=jobs).
async fn server_with_log(per_s: u64, jobs: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, format!("[limits]\nmax_catchup_events_per_s = {per_s}\n")).unwrap();
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()], dir);
    let batch: Vec<Value> = (0..jobs).map(|_| json!({"queue": "log"})).collect();
    enqueue(&s, json!({"jobs": batch})).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_reads_pages_as_large_as_the_page_limit_and_replays_every_event_on_each_transport() {
    let s = server_with_log(1_000_000, 2_500).await;
    // Long-poll: pages of up to `limits.max_page_size` (1,000), one past it refused.
    let (st, page) = poll(&s, "since=0&limit=1000").await;
    assert_eq!(st, 200);
    assert_eq!(cursors(&page), (1..=1000).collect::<Vec<_>>());
    assert_eq!(page["next_cursor"], 1000);
    let (st, err) = poll(&s, "since=0&limit=1001").await;
    assert_eq!((st, err["error"]["field"].as_str()), (422, Some("limit")));
    let (_, tail) = poll(&s, "since=2000&limit=1000").await;
    assert_eq!(cursors(&tail), (2001..=2500).collect::<Vec<_>>());
    // SSE: events sent together in one write still arrive one by one, in order, ids intact.
    let mut stream = sse(&s, "since=0", None).await;
    let all = sse_take(&mut stream, 2_500).await;
    for (i, (id, kind, e)) in all.iter().enumerate() {
        assert_eq!((id.as_str(), kind.as_str()), ((i + 1).to_string().as_str(), "message"));
        assert_eq!(e["cursor"], i as u64 + 1);
    }
    // WebSocket: resuming from a cursor before naming any room holds the replay until the
    // first subscribe, so `since` then `*` replays everything.
    let mut c = ws(&s, "since=0").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sub = ws_send(&mut c, json!({"op": "subscribe", "rooms": ["*"]})).await;
    assert_eq!((sub["type"].as_str(), sub["cursor"].as_u64()), (Some("subscribed"), Some(0)));
    for want in 1..=2_500u64 {
        assert_eq!(ws_next(&mut c).await["cursor"], want);
    }
    // Caught up, each goes on live.
    enqueue(&s, json!({"queue": "log"})).await;
    assert_eq!(ws_next(&mut c).await["cursor"], 2_501);
    assert_eq!(sse_take(&mut stream, 1).await[0].0, "2501");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_shares_one_budget_per_node() {
    // 2,000 events/s with a burst of two pages (2,000 events): 6,000 stored events take at
    // least (6,000 - 2,000) / 2,000 = 2 s, even read by two readers at once.
    let s = server_with_log(2_000, 6_000).await;
    let read = |s: String| async move {
        let mut since = 0u64;
        while since < 3_000 {
            let (_, r) = poll_at(&s, &format!("since={since}&limit=1000")).await;
            since = r["next_cursor"].as_u64().unwrap();
        }
    };
    let t = Instant::now();
    // Two readers of 3,000 each, 6,000 in all: one budget, so no faster than one reader.
    let (a, b) = (tokio::spawn(read(s.url.clone())), tokio::spawn(read(s.url.clone())));
    a.await.unwrap();
    b.await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(secs >= 1.8, "6,000 events under a budget of 2,000/s took only {secs:.2} s");
    // Live events are not catch-up: a caught-up reader gets a new one at once.
    let waiter = tokio::spawn({
        let url = s.url.clone();
        async move {
            let t = Instant::now();
            let (_, r) = poll_at(&url, "since=6000&wait_ms=10000").await;
            (cursors(&r), t.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    enqueue(&s, json!({"queue": "log"})).await;
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got, [6_001]);
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}
