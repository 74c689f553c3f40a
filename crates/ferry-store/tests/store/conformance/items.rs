//! The work-item part of the `Store` contract: creating (with duplicates and conflicting
//! repeats), merge patches of `context` and the artifact set, no-op writes, compare-and-set
//! with its conflict details in `merge` and `strict` modes (and a `merge` older than the kept
//! history judged as `strict`), status transitions and claims, all-or-nothing batches, listing
//! and history paging, counts by status, and concurrent read-modify-write increments that lose
//! nothing.

use super::{Harness, T0, events_after};
use ferry_core::item::{
    self, Artifact, HistoryEntry, Item, ItemOp, ItemPatch, ItemStatus, NewItem, OpResult, PatchMode,
};
use ferry_core::wire::items::{CreateItemBody, PatchItemBody};
use ferry_core::*;
use ferry_store::ItemFilter;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

// ---------- helpers ----------

fn limits() -> Limits {
    Limits::default()
}

/// A create body with the client's id `id` and the title `item <id>`.
fn body(id: &str) -> CreateItemBody {
    CreateItemBody { id: Some(id.into()), title: format!("item {id}"), ..Default::default() }
}

fn new_item(id: &str) -> NewItem {
    body(id).validate(&limits()).unwrap()
}

fn new_item_with(id: &str, f: impl FnOnce(&mut CreateItemBody)) -> NewItem {
    let mut b = body(id);
    f(&mut b);
    b.validate(&limits()).unwrap()
}

async fn create(h: &Harness, id: &str) -> Item {
    h.store.create_item(new_item(id)).await.unwrap().item
}

/// A JSON object literal as a `context` (or a context merge patch).
fn obj(v: Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        other => panic!("not a JSON object: {other}"),
    }
}

fn art(uri: &str, meta: Option<Value>) -> Artifact {
    Artifact { uri: uri.into(), meta: meta.map(|m| m.as_object().expect("meta is an object").clone()) }
}

/// A validated patch of item `id`, its precondition (if any) sent in the body.
fn patch(id: &str, b: PatchItemBody) -> ItemPatch {
    b.validate(id.into(), None, &limits()).unwrap()
}

/// A validated patch of item `id` sent with `If-Match: "<version>"`.
fn if_match(id: &str, version: i64, b: PatchItemBody) -> ItemPatch {
    b.validate(id.into(), Some(version), &limits()).unwrap()
}

async fn write(h: &Harness, id: &str, b: PatchItemBody) -> OpResult {
    h.store.patch_item(patch(id, b)).await.unwrap()
}

async fn refused(h: &Harness, id: &str, b: PatchItemBody) -> Error {
    h.store.patch_item(patch(id, b)).await.unwrap_err()
}

fn to(status: ItemStatus) -> PatchItemBody {
    PatchItemBody { status: Some(status), ..Default::default() }
}

/// A move to `in_progress` by `agent`.
fn claim_by(agent: &str) -> PatchItemBody {
    PatchItemBody { agent: Some(agent.into()), status: Some(ItemStatus::InProgress), ..Default::default() }
}

/// The whole kept history of `id`, newest first.
async fn history(h: &Harness, id: &str) -> Vec<HistoryEntry> {
    h.store.item_history(id, None, 100_000).await.unwrap()
}

/// The item's content as history patches describe it.
fn content(i: &Item) -> Value {
    json!({
        "title": i.title,
        "description": i.description,
        "status": i.status,
        "assignee": i.assignee,
        "artifacts": i.artifacts,
        "context": i.context,
    })
}

/// The item events after `start`, once at least `n` events of any kind are stored.
async fn item_events(h: &Harness, start: u64, n: usize) -> Vec<Event> {
    events_after(h, start, n).await.into_iter().filter(|e| e.subject.kind == SubjectKind::Item).collect()
}

fn ids(items: Vec<Item>) -> Vec<String> {
    items.into_iter().map(|i| i.id).collect()
}

/// Checks a refused compare-and-set: `code`, and details naming the item as stored now.
async fn assert_conflict(h: &Harness, e: &Error, code: ErrorCode, expected: i64, paths: &[&str]) {
    assert_eq!(e.code, code, "{e:?}");
    let d = e.details.as_ref().expect("a conflict carries details");
    let current = h.store.get_item(d["item_id"].as_str().expect("details.item_id")).await.unwrap();
    assert_eq!(d["expected_version"], expected, "{d}");
    assert_eq!(d["actual_version"], current.version, "{d}");
    assert_eq!(d["conflicting_paths"], json!(paths), "{d}");
    assert_eq!(d["current"], serde_json::to_value(&current).unwrap(), "current is the stored item");
    let back: Item = serde_json::from_value(d["current"].clone()).expect("details.current is an item");
    assert_eq!(back, current);
}

/// The item is still at `version`, with one history entry per version.
async fn assert_at(h: &Harness, id: &str, version: i64) {
    assert_eq!(h.store.get_item(id).await.unwrap().version, version, "{id} unchanged");
    assert_eq!(history(h, id).await.len() as i64, version, "{id}: one history entry per version");
}

// ---------- create and get ----------

pub async fn create_get_and_duplicate(h: Harness) {
    let start = h.store.events().head();
    h.clock.advance(5_000);
    let full = || CreateItemBody {
        description: Some("the long text".into()),
        artifacts: Some(vec![art("s3://x", Some(json!({"k": 1})))]),
        context: obj(json!({"a": {"b": 1}})),
        agent: Some("a1".into()),
        ..body("task-1")
    };
    let out = h.store.create_item(full().validate(&limits()).unwrap()).await.unwrap();
    assert!(out.changed && !out.duplicate);
    let i = out.item.clone();
    assert_eq!(
        (i.id.as_str(), i.title.as_str(), i.description.as_str()),
        ("task-1", "item task-1", "the long text")
    );
    assert_eq!((i.status, i.assignee.as_deref(), i.version), (ItemStatus::Todo, None, 1));
    assert_eq!(i.artifacts, vec![art("s3://x", Some(json!({"k": 1})))]);
    assert_eq!(Value::Object(i.context.clone()), json!({"a": {"b": 1}}));
    assert_eq!((i.created_at, i.updated_at), (Timestamp(T0 + 5_000), Timestamp(T0 + 5_000)));
    assert_eq!(h.store.get_item("task-1").await.unwrap(), i);
    // The first history entry: the whole item, every field a changed path.
    let hist = history(&h, "task-1").await;
    assert_eq!(hist.len(), 1);
    assert_eq!((hist[0].version, hist[0].at, hist[0].mode.as_str()), (1, Timestamp(T0 + 5_000), "create"));
    assert_eq!(hist[0].agent.as_deref(), Some("a1"));
    assert_eq!(hist[0].patch, content(&i));
    let mut paths = hist[0].paths.clone();
    paths.sort();
    assert_eq!(paths, ["/artifacts", "/assignee", "/context", "/description", "/status", "/title"]);
    // The same create again: the item as it is, nothing written.
    h.clock.advance(1_000);
    let again = h.store.create_item(full().validate(&limits()).unwrap()).await.unwrap();
    assert!(again.duplicate && !again.changed);
    assert_eq!(again.item, i);
    // The same id with other content.
    let other = CreateItemBody { title: "another title".into(), ..full() };
    let e = h.store.create_item(other.validate(&limits()).unwrap()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");
    assert_eq!(h.store.get_item("task-1").await.unwrap(), i);
    assert_eq!(history(&h, "task-1").await.len(), 1);
    // No id: the server's UUIDv7. Created in_progress: assigned to its agent.
    let anon = CreateItemBody { title: "anonymous".into(), ..Default::default() };
    let anon = h.store.create_item(anon.validate(&limits()).unwrap()).await.unwrap().item;
    assert_eq!(uuid::Uuid::parse_str(&anon.id).expect("a UUID").get_version_num(), 7);
    let held = new_item_with("held", |b| {
        b.status = Some(ItemStatus::InProgress);
        b.agent = Some("a2".into());
    });
    let held = h.store.create_item(held).await.unwrap().item;
    assert_eq!((held.status, held.assignee.as_deref()), (ItemStatus::InProgress, Some("a2")));
    let missing = h.store.get_item("no-such-item").await.unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);
    // One item.created per created item; none for the duplicate or the conflict.
    let got = item_events(&h, start, 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|e| e.kind == EventType::ItemCreated), "{got:?}");
    let subjects: Vec<&str> = got.iter().map(|e| e.subject.id.as_str()).collect();
    assert_eq!(subjects, ["task-1", anon.id.as_str(), "held"]);
    assert_eq!(got[0].data.as_ref().unwrap()["version"], 1);
    h.finish().await;
}

// ---------- patches ----------

/// `context` takes an RFC 7396 merge patch (nested objects merged, `null` deletes, arrays
/// replaced whole); artifacts are a set by uri; each change is one version, one history entry
/// (changed paths, the merge patch from the version before) and one item.updated event.
pub async fn patch_merges_context_and_artifacts(h: Harness) {
    let start = h.store.events().head();
    let created = h
        .store
        .create_item(new_item_with("m", |b| {
            b.context = obj(
                json!({"a": {"b": 1, "c": 2}, "keep": true, "list": [1, 2], "deep": {"x": {"y": {"z": 1}}}}),
            );
            b.artifacts = Some(vec![art("s3://one", Some(json!({"v": 1}))), art("s3://two", None)]);
        }))
        .await
        .unwrap()
        .item;
    h.clock.advance(1_000);
    let out = write(
        &h,
        "m",
        PatchItemBody {
            agent: Some("a1".into()),
            context: obj(json!({"a": {"b": null, "d": {"e": 1}}, "list": [3], "new": "x"})),
            artifacts_add: Some(vec![art("s3://one", Some(json!({"v": 2}))), art("s3://three", None)]),
            artifacts_remove: Some(vec!["s3://two".into(), "s3://never-added".into()]),
            ..Default::default()
        },
    )
    .await;
    assert!(out.changed && !out.duplicate);
    let i = &out.item;
    assert_eq!(i.version, 2);
    assert_eq!((i.created_at, i.updated_at), (Timestamp(T0), Timestamp(T0 + 1_000)));
    assert_eq!(
        Value::Object(i.context.clone()),
        json!({
            "a": {"c": 2, "d": {"e": 1}}, "keep": true, "list": [3], "new": "x",
            "deep": {"x": {"y": {"z": 1}}},
        })
    );
    assert_eq!(
        i.artifacts,
        vec![art("s3://one", Some(json!({"v": 2}))), art("s3://three", None)],
        "replaced in place by uri, removed, new ones appended"
    );
    assert_eq!(h.store.get_item("m").await.unwrap(), *i);
    let hist = history(&h, "m").await;
    assert_eq!(hist.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 1]);
    let e = &hist[0];
    assert_eq!(
        (e.at, e.mode.as_str(), e.agent.as_deref(), e.reason.as_deref()),
        (Timestamp(T0 + 1_000), "merge", Some("a1"), None)
    );
    // An added object reports its leaves (`/context/a/d/e`), so writers adding beside them merge.
    assert_eq!(e.paths, ["/artifacts", "/context/a/b", "/context/a/d/e", "/context/list", "/context/new"]);
    assert_eq!(
        e.patch,
        json!({
            "artifacts": [{"uri": "s3://one", "meta": {"v": 2}}, {"uri": "s3://three"}],
            "context": {"a": {"b": null, "d": {"e": 1}}, "list": [3], "new": "x"},
        })
    );
    // Paths inside context are cut at depth 3; a deleted key is a changed path.
    h.clock.advance(1_000);
    let out = write(
        &h,
        "m",
        PatchItemBody {
            agent: Some("a2".into()),
            title: Some("renamed".into()),
            reason: Some("tidy".into()),
            context: obj(json!({"deep": {"x": {"y": {"z": 2}}}, "keep": null})),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(out.item.version, 3);
    assert_eq!(out.item.title, "renamed");
    assert_eq!(out.item.context.get("keep"), None);
    let hist = history(&h, "m").await;
    assert_eq!(hist[0].paths, ["/context/deep/x/y", "/context/keep", "/title"]);
    assert_eq!(hist[0].reason.as_deref(), Some("tidy"));
    assert_eq!(
        hist[0].patch,
        json!({"context": {"deep": {"x": {"y": {"z": 2}}}, "keep": null}, "title": "renamed"})
    );
    // The patches replay: version 1's content merged with each later patch is the item.
    assert_eq!(hist[2].patch, content(&created));
    let mut replay = hist[2].patch.clone();
    for e in hist[..2].iter().rev() {
        item::merge_patch(&mut replay, &e.patch);
    }
    assert_eq!(replay, content(&out.item));
    // Events: created, then one item.updated per change, with its version and paths.
    let got = item_events(&h, start, 3).await;
    let kinds: Vec<&str> = got.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["item.created", "item.updated", "item.updated"]);
    let d = got[1].data.as_ref().unwrap();
    assert_eq!((d["version"].clone(), d["agent"].clone()), (json!(2), json!("a1")));
    assert_eq!(
        d["paths"],
        json!(["/artifacts", "/context/a/b", "/context/a/d/e", "/context/list", "/context/new"])
    );
    assert_eq!(got[2].data.as_ref().unwrap()["version"], 3);
    assert!(got.iter().all(|e| e.subject.id == "m"));
    h.finish().await;
}

/// A write that passes its precondition and changes nothing: `changed: false`, the version
/// and `updated_at` kept, no history entry, no event.
pub async fn no_op_patch_keeps_version(h: Harness) {
    let start = h.store.events().head();
    let before = h
        .store
        .create_item(new_item_with("n", |b| {
            b.description = Some("d".into());
            b.context = obj(json!({"a": 1, "o": {"p": true}}));
            b.artifacts = Some(vec![art("s3://one", Some(json!({"k": 1})))]);
        }))
        .await
        .unwrap()
        .item;
    h.clock.advance(1_000);
    let same = PatchItemBody {
        agent: Some("a1".into()),
        expected_version: Some(1),
        title: Some("item n".into()),
        description: Some("d".into()),
        assignee: Some(None),
        status: Some(ItemStatus::Todo),
        context: obj(json!({"a": 1, "o": {"p": true}, "missing": null})),
        artifacts_add: Some(vec![art("s3://one", Some(json!({"k": 1})))]),
        artifacts_remove: Some(vec!["s3://absent".into()]),
        ..Default::default()
    };
    let out = write(&h, "n", same.clone()).await;
    assert!(!out.changed && !out.duplicate);
    assert_eq!(out.item, before, "version and updated_at kept");
    let strict = write(&h, "n", PatchItemBody { mode: Some(PatchMode::Strict), ..same }).await;
    assert!(!strict.changed);
    let empty = write(&h, "n", PatchItemBody::default()).await;
    assert!(!empty.changed);
    assert_eq!(h.store.get_item("n").await.unwrap(), before);
    assert_eq!(history(&h, "n").await.len(), 1, "no history entry for a no-op");
    // The next real change is version 2, and the only event after the creation.
    let out = write(&h, "n", PatchItemBody { context: obj(json!({"a": 2})), ..Default::default() }).await;
    assert!(out.changed);
    assert_eq!(out.item.version, 2);
    let got = item_events(&h, start, 2).await;
    let kinds: Vec<&str> = got.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["item.created", "item.updated"]);
    assert_eq!(got[1].data.as_ref().unwrap()["version"], 2);
    h.finish().await;
}

// ---------- compare-and-set ----------

/// A stale `merge` write conflicts only on paths changed since its version (status and
/// artifacts never); `strict` on any change; `If-Match` answers 412 instead of 409. Every
/// conflict names the item, both versions, the conflicting paths and the current item.
pub async fn version_conflict_details(h: Harness) {
    use ErrorCode::{PreconditionFailed, VersionConflict};
    h.store
        .create_item(new_item_with("c", |b| b.context = obj(json!({"a": {"x": 1}, "b": 1}))))
        .await
        .unwrap();
    write(&h, "c", PatchItemBody { context: obj(json!({"a": {"x": 2}})), ..Default::default() }).await; // v2
    write(&h, "c", PatchItemBody { title: Some("t3".into()), ..Default::default() }).await; // v3
    let stale = |b: PatchItemBody| PatchItemBody { expected_version: Some(1), ..b };
    // Merge: a touched path that changed since version 1 conflicts, also from above or below.
    let e =
        refused(&h, "c", stale(PatchItemBody { context: obj(json!({"a": {"x": 3}})), ..Default::default() }))
            .await;
    assert_conflict(&h, &e, VersionConflict, 1, &["/context/a/x"]).await;
    let e = refused(&h, "c", stale(PatchItemBody { context: obj(json!({"a": null})), ..Default::default() }))
        .await;
    assert_conflict(&h, &e, VersionConflict, 1, &["/context/a/x"]).await;
    let e = refused(
        &h,
        "c",
        stale(PatchItemBody { context: obj(json!({"a": {"x": {"deeper": 1}}})), ..Default::default() }),
    )
    .await;
    assert_conflict(&h, &e, VersionConflict, 1, &["/context/a/x"]).await;
    let both = PatchItemBody {
        title: Some("mine".into()),
        context: obj(json!({"a": {"x": 3}})),
        ..Default::default()
    };
    let e = refused(&h, "c", stale(both)).await;
    assert_conflict(&h, &e, VersionConflict, 1, &["/context/a/x", "/title"]).await;
    assert_at(&h, "c", 3).await;
    // Merge: disjoint paths, artifacts and status pass though stale.
    let out =
        write(&h, "c", stale(PatchItemBody { context: obj(json!({"b": 2})), ..Default::default() })).await;
    assert_eq!(out.item.version, 4);
    assert_eq!(out.item.context["a"], json!({"x": 2}), "the newer change is kept");
    let out = write(
        &h,
        "c",
        stale(PatchItemBody { artifacts_add: Some(vec![art("s3://r", None)]), ..Default::default() }),
    )
    .await;
    assert_eq!(out.item.version, 5);
    let out = write(&h, "c", stale(claim_by("a1"))).await;
    assert_eq!((out.item.version, out.item.status), (6, ItemStatus::InProgress));
    // Strict: any change since conflicts, with every changed path.
    let all = ["/artifacts", "/assignee", "/context/a/x", "/context/b", "/status", "/title"];
    let strict =
        PatchItemBody { mode: Some(PatchMode::Strict), context: obj(json!({"z": 1})), ..Default::default() };
    let e = refused(&h, "c", stale(strict.clone())).await;
    assert_conflict(&h, &e, VersionConflict, 1, &all).await;
    // If-Match: strict unless the body says merge, and 412.
    let zb = PatchItemBody { context: obj(json!({"z": 1})), ..Default::default() };
    let e = h.store.patch_item(if_match("c", 1, zb.clone())).await.unwrap_err();
    assert_conflict(&h, &e, PreconditionFailed, 1, &all).await;
    assert_at(&h, "c", 6).await;
    let out = h.store.patch_item(if_match("c", 6, zb)).await.unwrap();
    assert_eq!(out.item.version, 7);
    let merge =
        PatchItemBody { mode: Some(PatchMode::Merge), context: obj(json!({"q": 1})), ..Default::default() };
    let out = h.store.patch_item(if_match("c", 1, merge)).await.unwrap();
    assert_eq!(out.item.version, 8, "If-Match with mode merge conflicts on overlap only");
    let e = h
        .store
        .patch_item(if_match(
            "c",
            6,
            PatchItemBody {
                mode: Some(PatchMode::Merge),
                context: obj(json!({"z": 2})),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_conflict(&h, &e, PreconditionFailed, 6, &["/context/z"]).await;
    // The current version: strict passes.
    let out =
        write(&h, "c", PatchItemBody { expected_version: Some(8), context: obj(json!({"z": 3})), ..strict })
            .await;
    assert_eq!(out.item.version, 9);
    // A version the item never had yet conflicts too.
    let e = refused(
        &h,
        "c",
        PatchItemBody { expected_version: Some(99), context: obj(json!({"w": 1})), ..Default::default() },
    )
    .await;
    assert_eq!(e.code, VersionConflict, "{e:?}");
    assert_eq!(e.details.as_ref().unwrap()["actual_version"], 9);
    assert_at(&h, "c", 9).await;
    let e = refused(
        &h,
        "missing",
        PatchItemBody { expected_version: Some(1), title: Some("t".into()), ..Default::default() },
    )
    .await;
    assert_eq!(e.code, ErrorCode::NotFound);
    h.finish().await;
}

/// With `limits.max_item_history` versions kept, a `merge` write whose version is older than
/// the kept history cannot be compared path by path: it is judged as `strict`. (The harness
/// opens stores with default limits, so this writes `max_item_history + 1` versions, in one
/// batch.)
pub async fn merge_older_than_history_is_strict(h: Harness) {
    let max = limits().max_item_history as i64;
    create(&h, "h").await;
    let ops: Vec<ItemOp> = (1..=max + 1)
        .map(|n| {
            ItemOp::Patch(patch("h", PatchItemBody { context: obj(json!({"n": n})), ..Default::default() }))
        })
        .collect();
    let out = h.store.batch_items(ops).await.unwrap();
    assert_eq!(out.len() as i64, max + 1);
    let newest = max + 2;
    assert_eq!(out.last().unwrap().item.version, newest);
    let hist = history(&h, "h").await;
    assert_eq!(hist.len() as i64, max, "only the newest max_item_history versions are kept");
    assert_eq!(hist[0].version, newest);
    let oldest = hist.last().unwrap().version;
    assert_eq!(oldest, newest - max + 1);
    // Version 1 is older than the kept history: a disjoint merge write conflicts.
    let disjoint = |v: i64| PatchItemBody {
        expected_version: Some(v),
        context: obj(json!({"other": 1})),
        ..Default::default()
    };
    let e = refused(&h, "h", disjoint(1)).await;
    assert_eq!(e.code, ErrorCode::VersionConflict, "{e:?}");
    let d = e.details.as_ref().unwrap();
    assert_eq!((d["expected_version"].clone(), d["actual_version"].clone()), (json!(1), json!(newest)));
    assert_eq!(d["current"], serde_json::to_value(h.store.get_item("h").await.unwrap()).unwrap());
    assert_eq!(h.store.get_item("h").await.unwrap().version, newest);
    // Within the kept history it is judged path by path: overlap conflicts, disjoint passes.
    let e = refused(
        &h,
        "h",
        PatchItemBody { expected_version: Some(oldest), context: obj(json!({"n": 0})), ..Default::default() },
    )
    .await;
    assert_conflict(&h, &e, ErrorCode::VersionConflict, oldest, &["/context/n"]).await;
    let out = write(&h, "h", disjoint(oldest)).await;
    assert_eq!(out.item.version, newest + 1);
    let hist = history(&h, "h").await;
    assert_eq!(hist.len() as i64, max);
    assert_eq!((hist[0].version, hist.last().unwrap().version), (newest + 1, oldest + 1));
    h.finish().await;
}

// ---------- transitions and claims ----------

/// The transition table along one item's life: claims set the assignee and refuse another
/// agent's, a move back to todo clears it, terminal statuses take only a strict `reopen`.
pub async fn transitions_and_claims(h: Harness) {
    use ItemStatus::*;
    let start = h.store.events().head();
    create(&h, "w").await;
    let e = refused(&h, "w", to(InProgress)).await;
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::ValidationFailed, Some("agent")),
        "a claim names its agent"
    );
    let out = write(&h, "w", claim_by("a1")).await;
    assert_eq!(
        (out.item.status, out.item.assignee.as_deref(), out.item.version),
        (InProgress, Some("a1"), 2)
    );
    let again = write(&h, "w", claim_by("a1")).await;
    assert!(!again.changed, "claiming one's own item again changes nothing");
    // Another agent's claim.
    let e = refused(&h, "w", claim_by("a2")).await;
    assert_eq!(e.code, ErrorCode::InvalidState, "{e:?}");
    let d = e.details.as_ref().unwrap();
    assert_eq!((d["reason"].clone(), d["assignee"].clone()), (json!("assigned_to_other"), json!("a1")));
    assert_eq!(
        (d["item_id"].clone(), d["from"].clone(), d["to"].clone()),
        (json!("w"), json!("in_progress"), json!("in_progress"))
    );
    assert_eq!(d["current"], serde_json::to_value(h.store.get_item("w").await.unwrap()).unwrap());
    // in_progress ⇄ blocked; blocked is still held.
    assert_eq!(
        write(&h, "w", PatchItemBody { agent: Some("a1".into()), ..to(Blocked) }).await.item.version,
        3
    );
    let e = refused(&h, "w", claim_by("a2")).await;
    assert_eq!(e.details.as_ref().unwrap()["reason"], "assigned_to_other");
    assert_eq!(e.details.as_ref().unwrap()["from"], "blocked");
    assert_eq!(write(&h, "w", claim_by("a1")).await.item.version, 4);
    // Back to todo clears the assignee; todo cannot jump to done.
    let out = write(&h, "w", to(Todo)).await;
    assert_eq!((out.item.status, out.item.assignee.as_deref(), out.item.version), (Todo, None, 5));
    let e = refused(&h, "w", to(Done)).await;
    assert_eq!(e.code, ErrorCode::InvalidState);
    let d = e.details.as_ref().unwrap();
    assert_eq!(
        (d["from"].clone(), d["to"].clone(), d["item_id"].clone()),
        (json!("todo"), json!("done"), json!("w"))
    );
    assert_eq!(d.get("reason"), None, "only a claim refused for another holder has a reason");
    assert_eq!(write(&h, "w", claim_by("a2")).await.item.assignee.as_deref(), Some("a2"));
    let done = PatchItemBody { agent: Some("a2".into()), reason: Some("shipped".into()), ..to(Done) };
    let out = write(&h, "w", done).await;
    assert_eq!((out.item.status, out.item.version), (Done, 7));
    assert_eq!(history(&h, "w").await[0].reason.as_deref(), Some("shipped"));
    // Terminal: nothing without reopen; reopen needs strict; never to another terminal status.
    let e = refused(&h, "w", to(Todo)).await;
    assert_eq!(e.code, ErrorCode::InvalidState);
    assert_eq!(e.details.as_ref().unwrap()["from"], "done");
    let e = refused(&h, "w", PatchItemBody { reopen: Some(true), ..to(Todo) }).await;
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::ValidationFailed, Some("reopen")));
    let strict_reopen =
        |b: PatchItemBody| PatchItemBody { mode: Some(PatchMode::Strict), reopen: Some(true), ..b };
    let e = refused(&h, "w", strict_reopen(to(Cancelled))).await;
    assert_eq!(e.code, ErrorCode::InvalidState);
    assert_at(&h, "w", 7).await;
    // A strict reopen may go straight to in_progress, whoever held it before.
    let out = write(&h, "w", strict_reopen(claim_by("a1"))).await;
    assert_eq!(
        (out.item.status, out.item.assignee.as_deref(), out.item.version),
        (InProgress, Some("a1"), 8)
    );
    assert_eq!(history(&h, "w").await[0].mode, "strict");
    assert_eq!(write(&h, "w", to(Cancelled)).await.item.status, Cancelled);
    let out = write(&h, "w", strict_reopen(to(Todo))).await;
    assert_eq!((out.item.status, out.item.assignee.as_deref(), out.item.version), (Todo, None, 10));
    assert_at(&h, "w", 10).await;
    // Status moves are item.status_changed events.
    let got = item_events(&h, start, 10).await;
    assert_eq!(got.len(), 10, "{got:?}");
    assert_eq!(got[0].kind, EventType::ItemCreated);
    assert!(got[1..].iter().all(|e| e.kind == EventType::ItemStatusChanged), "{got:?}");
    let d = got[1].data.as_ref().unwrap();
    assert_eq!(
        (d["from"].clone(), d["to"].clone(), d["version"].clone(), d["agent"].clone()),
        (json!("todo"), json!("in_progress"), json!(2), json!("a1"))
    );
    assert_eq!(got[6].data.as_ref().unwrap()["reason"], "shipped");
    h.finish().await;
}

// ---------- batches ----------

/// A batch is applied in order in one transaction: any failing op writes nothing and answers
/// with its error at `ops[i]`; a passing batch answers one result per op, later ops seeing
/// earlier ones.
pub async fn batch_is_all_or_nothing(h: Harness) {
    let start = h.store.events().head();
    for id in ["b1", "b2", "b3"] {
        create(&h, id).await;
    }
    let failing = vec![
        ItemOp::Create(new_item("n1")),
        ItemOp::Patch(patch("b1", PatchItemBody { context: obj(json!({"x": 1})), ..Default::default() })),
        ItemOp::Create(new_item("n2")),
        ItemOp::Patch(patch("b2", PatchItemBody { title: Some("changed".into()), ..Default::default() })),
        ItemOp::Check { id: "b3".into(), expected_version: 5 },
    ];
    let e = h.store.batch_items(failing).await.unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::VersionConflict, Some("ops[4]")), "{e:?}");
    let d = e.details.as_ref().unwrap();
    assert_eq!(
        (d["item_id"].clone(), d["expected_version"].clone(), d["actual_version"].clone()),
        (json!("b3"), json!(5), json!(1))
    );
    let e = h
        .store
        .batch_items(vec![
            ItemOp::Patch(patch("b1", PatchItemBody { title: Some("changed".into()), ..Default::default() })),
            ItemOp::Patch(patch("b2", to(ItemStatus::Done))),
        ])
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidState, Some("ops[1]")), "{e:?}");
    assert_eq!(e.details.as_ref().unwrap()["from"], "todo");
    let e = h
        .store
        .batch_items(vec![
            ItemOp::Create(new_item("n1")),
            ItemOp::Patch(patch("nope", to(ItemStatus::Cancelled))),
        ])
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::NotFound, Some("ops[1]")), "{e:?}");
    let e = h
        .store
        .batch_items(vec![ItemOp::Check { id: "nope".into(), expected_version: 1 }])
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::NotFound, Some("ops[0]")), "{e:?}");
    for id in ["n1", "n2"] {
        assert_eq!(h.store.get_item(id).await.unwrap_err().code, ErrorCode::NotFound, "{id} was not created");
    }
    for id in ["b1", "b2", "b3"] {
        let i = h.store.get_item(id).await.unwrap();
        assert_eq!((i.version, i.title.as_str(), i.status), (1, &*format!("item {id}"), ItemStatus::Todo));
        assert_eq!(history(&h, id).await.len(), 1);
    }
    // A passing batch; each op sees the ones before it.
    let ops = vec![
        ItemOp::Create(new_item("n1")),
        ItemOp::Patch(patch(
            "n1",
            PatchItemBody { expected_version: Some(1), context: obj(json!({"a": 1})), ..Default::default() },
        )),
        ItemOp::Check { id: "n1".into(), expected_version: 2 },
        ItemOp::Patch(patch("b1", claim_by("a1"))),
        ItemOp::Patch(patch(
            "b1",
            PatchItemBody { expected_version: Some(1), context: obj(json!({"b": 1})), ..Default::default() },
        )),
        ItemOp::Create(new_item("b2")),
    ];
    let out = h.store.batch_items(ops).await.unwrap();
    assert_eq!(out.len(), 6);
    let seen: Vec<(&str, i64, bool, bool)> =
        out.iter().map(|r| (r.item.id.as_str(), r.item.version, r.changed, r.duplicate)).collect();
    assert_eq!(
        seen,
        [
            ("n1", 1, true, false),
            ("n1", 2, true, false),
            ("n1", 2, false, false),
            ("b1", 2, true, false),
            ("b1", 3, true, false),
            ("b2", 1, false, true),
        ]
    );
    assert_eq!(out[4].item.status, ItemStatus::InProgress, "the stale merge kept the claim");
    assert_eq!(h.store.get_item("n1").await.unwrap(), out[1].item);
    assert_eq!(h.store.get_item("b1").await.unwrap(), out[4].item);
    assert_at(&h, "n1", 2).await;
    assert_at(&h, "b1", 3).await;
    assert_at(&h, "b2", 1).await;
    // Events: the three creates, then the passing batch's four changes in op order; none
    // from the refused batches.
    let got = item_events(&h, start, 7).await;
    let seen: Vec<(&str, &str)> = got.iter().map(|e| (e.kind.as_str(), e.subject.id.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("item.created", "b1"),
            ("item.created", "b2"),
            ("item.created", "b3"),
            ("item.created", "n1"),
            ("item.updated", "n1"),
            ("item.status_changed", "b1"),
            ("item.updated", "b1"),
        ]
    );
    h.finish().await;
}

// ---------- reads ----------

/// A failed batch wrote nothing, so its error shows the item as stored (what a retry starts
/// from), not the batch's unwritten state; an item the batch created shows as `null`.
pub async fn batch_error_shows_the_stored_item(h: Harness) {
    let stored = create(&h, "s1").await;
    let e = h
        .store
        .batch_items(vec![
            ItemOp::Patch(patch("s1", PatchItemBody { title: Some("x".into()), ..Default::default() })),
            ItemOp::Check { id: "s1".into(), expected_version: 1 },
        ])
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::VersionConflict, Some("ops[1]")), "{e:?}");
    assert_conflict(&h, &e, ErrorCode::VersionConflict, 1, &["/title"]).await;
    let d = e.details.as_ref().unwrap();
    assert_eq!(d["actual_version"], 1);
    assert_eq!(serde_json::from_value::<Item>(d["current"].clone()).unwrap(), stored);
    let e = h
        .store
        .batch_items(vec![
            ItemOp::Create(new_item("s2")),
            ItemOp::Check { id: "s2".into(), expected_version: 7 },
        ])
        .await
        .unwrap_err();
    let d = e.details.as_ref().unwrap();
    assert_eq!((d["current"].clone(), d["actual_version"].clone()), (Value::Null, Value::Null), "{e:?}");
    assert_eq!(h.store.get_item("s2").await.unwrap_err().code, ErrorCode::NotFound);
    h.finish().await;
}

/// An `in_progress` item always has its holder: unassigning it is refused (422 `assignee`);
/// handing it to another agent is a write like any other.
pub async fn in_progress_keeps_an_assignee(h: Harness) {
    create(&h, "k1").await;
    write(&h, "k1", claim_by("a1")).await;
    let e = refused(&h, "k1", PatchItemBody { assignee: Some(None), ..Default::default() }).await;
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::ValidationFailed, Some("assignee")), "{e:?}");
    let out =
        write(&h, "k1", PatchItemBody { assignee: Some(Some("a2".into())), ..Default::default() }).await;
    assert_eq!((out.item.assignee.as_deref(), out.item.version), (Some("a2"), 3));
    let out = write(&h, "k1", to(ItemStatus::Todo)).await;
    assert_eq!((out.item.status, out.item.assignee), (ItemStatus::Todo, None));
    h.finish().await;
}

pub async fn list_and_history_paging(h: Harness) {
    for n in 1..=10 {
        create(&h, &format!("l{n:02}")).await;
    }
    for id in ["l02", "l04", "l06"] {
        write(&h, id, claim_by("a1")).await;
    }
    write(&h, "l08", claim_by("a2")).await;
    let list = |status: Option<ItemStatus>, assignee: Option<&str>, after: Option<&str>, limit: usize| {
        let filter =
            ItemFilter { status, assignee: assignee.map(Into::into), after: after.map(Into::into), limit };
        let store = h.store.clone();
        async move { ids(store.list_items(filter).await.unwrap()) }
    };
    let all = list(None, None, None, 100).await;
    assert_eq!(all, (1..=10).map(|n| format!("l{n:02}")).collect::<Vec<_>>(), "ordered by id");
    assert_eq!(h.store.list_items(ItemFilter { limit: 100, ..Default::default() }).await.unwrap().len(), 10);
    // Pages of todo items, by the `after` cursor.
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = list(Some(ItemStatus::Todo), None, after.as_deref(), 2).await;
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        pages.push(page);
        assert!(pages.len() <= 5, "paging ends");
    }
    assert_eq!(pages, vec![vec!["l01", "l03"], vec!["l05", "l07"], vec!["l09", "l10"]]);
    assert_eq!(list(None, Some("a1"), None, 100).await, ["l02", "l04", "l06"]);
    assert_eq!(list(Some(ItemStatus::InProgress), Some("a1"), None, 2).await, ["l02", "l04"]);
    assert_eq!(list(Some(ItemStatus::InProgress), Some("a1"), Some("l04"), 2).await, ["l06"]);
    assert_eq!(list(Some(ItemStatus::InProgress), None, Some("l06"), 100).await, ["l08"]);
    assert!(list(Some(ItemStatus::Done), None, None, 100).await.is_empty());
    assert!(list(None, Some("nobody"), None, 100).await.is_empty());
    // History, newest first, paged by `before`.
    for n in 1..=5 {
        h.clock.advance(1_000);
        write(&h, "l01", PatchItemBody { context: obj(json!({"n": n})), ..Default::default() }).await;
    }
    let versions = |entries: Vec<HistoryEntry>| entries.into_iter().map(|e| e.version).collect::<Vec<_>>();
    assert_eq!(versions(history(&h, "l01").await), [6, 5, 4, 3, 2, 1]);
    assert_eq!(versions(h.store.item_history("l01", None, 2).await.unwrap()), [6, 5]);
    assert_eq!(versions(h.store.item_history("l01", Some(5), 2).await.unwrap()), [4, 3]);
    assert_eq!(versions(h.store.item_history("l01", Some(3), 2).await.unwrap()), [2, 1]);
    assert!(h.store.item_history("l01", Some(1), 2).await.unwrap().is_empty());
    let newest = &h.store.item_history("l01", None, 1).await.unwrap()[0];
    assert_eq!((newest.at, newest.patch.clone()), (Timestamp(T0 + 5_000), json!({"context": {"n": 5}})));
    let e = h.store.item_history("no-such-item", None, 10).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    h.finish().await;
}

pub async fn counts_by_status(h: Harness) {
    use ItemStatus::*;
    let counts = |v: Vec<(ItemStatus, u64)>| -> BTreeMap<&'static str, u64> {
        v.into_iter().filter(|(_, n)| *n > 0).map(|(s, n)| (s.as_str(), n)).collect()
    };
    assert!(counts(h.store.item_counts().await.unwrap()).is_empty());
    for id in ["t1", "t2", "t3", "g", "x"] {
        create(&h, id).await;
    }
    for id in ["p1", "p2"] {
        let held = new_item_with(id, |b| {
            b.status = Some(InProgress);
            b.agent = Some("a1".into());
        });
        h.store.create_item(held).await.unwrap();
    }
    h.store.create_item(new_item_with("blk", |b| b.status = Some(Blocked))).await.unwrap();
    write(&h, "g", claim_by("a1")).await;
    write(&h, "g", to(Done)).await;
    write(&h, "x", to(Cancelled)).await;
    let got = counts(h.store.item_counts().await.unwrap());
    let want: BTreeMap<&str, u64> =
        [("todo", 3), ("in_progress", 2), ("blocked", 1), ("done", 1), ("cancelled", 1)]
            .into_iter()
            .collect();
    assert_eq!(got, want);
    h.finish().await;
}

// ---------- concurrency ----------

/// 16 writers × 25 read-modify-write increments of `context.n`, each sent with the version it
/// read (strict and merge writers mixed) and retried on `version_conflict` from the conflict's
/// `current`: every increment lands once.
pub async fn concurrent_cas_increments_lose_nothing(h: Harness) {
    const WRITERS: i64 = 16;
    const EACH: i64 = 25;
    let start = h.store.events().head();
    h.store.create_item(new_item_with("ctr", |b| b.context = obj(json!({"n": 0})))).await.unwrap();
    let run = async {
        let mut tasks = Vec::new();
        for t in 0..WRITERS {
            let store = h.store.clone();
            let mode = if t % 2 == 0 { PatchMode::Strict } else { PatchMode::Merge };
            tasks.push(tokio::spawn(async move {
                let mut seen = store.get_item("ctr").await.unwrap();
                let mut conflicts = 0u64;
                for _ in 0..EACH {
                    loop {
                        let n = seen.context.get("n").and_then(Value::as_i64).expect("context.n is a number");
                        let p = patch(
                            "ctr",
                            PatchItemBody {
                                agent: Some(format!("w{t}")),
                                expected_version: Some(seen.version),
                                mode: Some(mode),
                                context: obj(json!({"n": n + 1})),
                                ..Default::default()
                            },
                        );
                        match store.patch_item(p).await {
                            Ok(out) => {
                                assert!(out.changed);
                                assert_eq!(out.item.version, seen.version + 1);
                                seen = out.item;
                                break;
                            }
                            Err(e) if e.code == ErrorCode::VersionConflict => {
                                let d = e.details.expect("a conflict carries details");
                                assert_eq!(d["conflicting_paths"], json!(["/context/n"]));
                                seen = serde_json::from_value(d["current"].clone())
                                    .expect("details.current is an item");
                                conflicts += 1;
                            }
                            Err(e) => panic!("writer {t}: unexpected error {e:?}"),
                        }
                    }
                }
                conflicts
            }));
        }
        let mut conflicts = 0;
        for t in tasks {
            conflicts += t.await.unwrap();
        }
        conflicts
    };
    let conflicts = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the increments finish within 120 s");
    eprintln!("{} increments, {conflicts} conflicts retried", WRITERS * EACH);
    let total = WRITERS * EACH;
    let item = h.store.get_item("ctr").await.unwrap();
    assert_eq!(item.context.get("n"), Some(&json!(total)), "no increment lost");
    assert_eq!(item.version, total + 1);
    // Every version in the history, each one increment of the version before.
    let hist = history(&h, "ctr").await;
    assert_eq!(hist.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=total + 1).rev().collect::<Vec<_>>());
    for e in &hist[..hist.len() - 1] {
        assert_eq!(e.patch, json!({"context": {"n": e.version - 1}}), "version {}", e.version);
        assert_eq!(e.paths, ["/context/n"]);
    }
    // One event per committed change.
    let got = item_events(&h, start, total as usize + 1).await;
    assert_eq!(got.len() as i64, total + 1);
    assert_eq!(got.iter().filter(|e| e.kind == EventType::ItemUpdated).count() as i64, total);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! items_rules {
    () => {
        domain_tests!(items:
            create_get_and_duplicate, patch_merges_context_and_artifacts, no_op_patch_keeps_version,
            version_conflict_details, merge_older_than_history_is_strict, transitions_and_claims,
            batch_is_all_or_nothing, batch_error_shows_the_stored_item, in_progress_keeps_an_assignee,
            list_and_history_paging, counts_by_status, concurrent_cas_increments_lose_nothing,
        );
    };
}
