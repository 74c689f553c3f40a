//! Property test: whatever JSON a request may carry (within `limits.max_json_depth`, and text
//! fields without NUL, as `ferry_core::json_text` admits them) reads back unchanged from every
//! field that stores it: a job's payload, unique key and tags, its result, a failure's error
//! text, and a schedule's job template. Nothing accepted may fail to read back.

use super::Harness;
use ferry_core::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ]
}

/// Random JSON, sometimes wrapped in enough arrays to reach past the depth limit.
fn value() -> impl Strategy<Value = Value> {
    let tree = leaf().prop_recursive(5, 40, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    (tree, prop_oneof![3 => Just(0usize), 1 => 0usize..70]).prop_map(|(mut v, wraps)| {
        for _ in 0..wraps {
            v = Value::Array(vec![v]);
        }
        v
    })
}

/// Short text without NUL, for fields stored as text.
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 1..max_chars)
        .prop_map(|cs| cs.into_iter().collect())
}

#[derive(Debug, Clone)]
struct Case {
    payload: Value,
    unique_key: String,
    tag: String,
    error: String,
}

fn case() -> impl Strategy<Value = Case> {
    (value(), text(60), text(16), text(200)).prop_map(|(payload, unique_key, tag, error)| Case {
        payload,
        unique_key,
        tag,
        error,
    })
}

static N: AtomicUsize = AtomicUsize::new(0);

async fn run_case(h: &Harness, c: Case) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    let n = N.fetch_add(1, Ordering::SeqCst);
    let queue = format!("json{n}");
    let body = json!({"queue": queue, "payload": c.payload, "unique_key": c.unique_key, "tags": [c.tag]});
    let text = body.to_string();
    if json_text::check(text.as_bytes(), limits.max_json_depth).is_err() {
        return Ok(()); // refused at the edge: never reaches a store
    }
    let spec: validate::JobSpec = serde_json::from_str(&text).expect("a job spec");
    let Ok(job) = spec.validate(&limits) else { return Ok(()) }; // over a size limit
    let id = h.store.enqueue(vec![job]).await.map_err(|e| TestCaseError::fail(e.to_string()))?[0].id;
    let got = h.store.get_job(id).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    // Stored verbatim: the same text comes back (compared as text, since serde_json's float
    // parsing is not exact, so parsed values could differ where the text does not).
    let sent = serde_json::to_string(&c.payload).unwrap();
    prop_assert_eq!(got.payload.get(), sent.as_str());
    prop_assert_eq!(got.unique_key.as_deref(), Some(c.unique_key.as_str()));
    prop_assert_eq!(&got.tags, &vec![c.tag.clone()]);

    // The result of a completion, and the error of a failure.
    let claimed = h
        .store
        .claim(ClaimRequest { queue: queue.clone(), worker: "w".into(), max: 1, lease_ms: None })
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(claimed.len(), 1);
    let result = serde_json::value::to_raw_value(&c.payload).expect("raw");
    let item = CompleteItem { id, lease: claimed[0].lease.clone(), result: Some(result), pressure: None };
    h.store
        .complete(vec![item])
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .pop()
        .unwrap()
        .unwrap();
    let got = h.store.get_job(id).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(got.result.as_ref().expect("a result").get(), sent.as_str());

    let other = validate::JobSpec { queue: queue.clone(), ..Default::default() }.validate(&limits).unwrap();
    let id2 = h.store.enqueue(vec![other]).await.unwrap()[0].id;
    let claimed = h
        .store
        .claim(ClaimRequest { queue: queue.clone(), worker: "w".into(), max: 1, lease_ms: None })
        .await
        .unwrap();
    let fail = FailItem {
        id: id2,
        lease: claimed[0].lease.clone(),
        error: c.error.clone(),
        retry: false,
        pressure: None,
    };
    h.store.fail(vec![fail]).await.unwrap().pop().unwrap().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let got = h.store.get_job(id2).await.unwrap();
    prop_assert_eq!(got.errors.last().map(|e| e.message.as_str()), Some(c.error.as_str()));

    // A schedule's job template, read back one by one and in the list.
    let spec = schedule::ScheduleSpec {
        name: format!("s{n}"),
        cron: "0 0 1 1 *".into(),
        timezone: None,
        job: serde_json::from_value(json!({"queue": queue, "payload": c.payload})).expect("a template"),
        misfire: None,
        catch_up_max: None,
        paused: None,
    };
    let s = schedule::from_spec(spec, h.clock.now_ms(), &limits)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    h.store.create_schedule(s).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let got = h.store.get_schedule(&format!("s{n}")).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    // The template is kept as a JSON value: equal to the payload as a parser reads it.
    let parsed: Value = serde_json::from_str(&sent).unwrap();
    prop_assert_eq!(&got.job["payload"], &parsed);
    h.store.list_schedules().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    h.store.delete_schedule(&format!("s{n}")).await.unwrap();
    Ok(())
}

/// Runs the property over one store.
pub async fn property_json_round_trips(h: Harness) {
    super::props::run_property(&h, "JSON round-trip", case(), run_case);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! json_props_rules {
    () => {
        domain_tests!(json_props:
            property_json_round_trips,
        );
    };
}
