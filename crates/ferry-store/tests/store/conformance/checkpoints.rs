//! The checkpoint part of the `Store` contract: puts (new, duplicate, replaced, `If-None-Match`
//! conflicts, missing blobs refused before writing), blobs shared once per version, pending
//! writes (insert-if-absent, special channels replace, before their checkpoint), reads of one
//! or the newest, lists with filters and cursors, thread settings, delete, copy, prune with the
//! delta keep-set, delete by run, the retention pass, lease fencing, and counts that match.

use super::{Harness, event_of, events_after};
use ferry_core::checkpoint::{Blob, NewCheckpoint, NewWrites, Typed};
use ferry_core::wire::checkpoints::{PutCheckpointBody, PutTarget, Version, WriteBody, WritesBody};
use ferry_core::*;
use ferry_store::{CheckpointFilter, CheckpointSweep, ThreadFilter};
use serde_json::json;
use std::collections::BTreeMap;

fn typed(text: &str) -> Typed {
    Typed { type_: "msgpack".into(), data: text.as_bytes().to_vec() }
}

fn blob(channel: &str, version: &str, value: &str) -> Blob {
    Blob {
        channel: channel.into(),
        version: version.into(),
        type_: "msgpack".into(),
        data: value.as_bytes().to_vec(),
    }
}

/// A put of `id` in `thread` (ns ""), its versions and sent blobs given as `(channel, version,
/// Some(value) to send)`.
fn put(thread: &str, id: &str, parent: Option<&str>, chans: &[(&str, &str, Option<&str>)]) -> NewCheckpoint {
    put_with(thread, "", id, parent, chans, |_| {})
}

fn put_with(
    thread: &str,
    ns: &str,
    id: &str,
    parent: Option<&str>,
    chans: &[(&str, &str, Option<&str>)],
    f: impl FnOnce(&mut PutCheckpointBody),
) -> NewCheckpoint {
    let mut body = PutCheckpointBody {
        parent_checkpoint_id: parent.map(Into::into),
        checkpoint: typed(&format!("cp {id}")),
        metadata: Some(json!({"source": "loop", "step": 1}).as_object().unwrap().clone()),
        channel_versions: Some(
            chans.iter().map(|(c, v, _)| (c.to_string(), Version::Text(v.to_string()))).collect(),
        ),
        blobs: Some(chans.iter().filter_map(|(c, v, val)| val.map(|x| blob(c, v, x))).collect()),
        delta_channels: None,
        job_id: None,
        lease: None,
    };
    f(&mut body);
    let at =
        PutTarget { thread: thread.into(), ns: ns.into(), checkpoint_id: id.into(), if_none_match: false };
    body.validate(at, &Limits::default()).unwrap()
}

fn writes(thread: &str, id: &str, task: &str, list: &[(&str, &str)]) -> NewWrites {
    let body = WritesBody {
        task_id: task.into(),
        task_path: Some(format!("path-{task}")),
        writes: list
            .iter()
            .map(|(c, v)| WriteBody {
                channel: c.to_string(),
                type_: "msgpack".into(),
                data: v.as_bytes().to_vec(),
                idx: None,
            })
            .collect(),
        job_id: None,
        lease: None,
    };
    body.validate(thread.into(), String::new(), id.into(), &Limits::default()).unwrap()
}

fn values(t: &checkpoint::Tuple) -> BTreeMap<String, String> {
    t.blobs
        .iter()
        .flatten()
        .map(|b| (b.channel.clone(), String::from_utf8(b.data.clone()).unwrap()))
        .collect()
}

pub async fn put_duplicate_replace_and_conflict(h: Harness) {
    let out = h
        .store
        .put_checkpoint(put("t", "1", None, &[("a", "v1", Some("A1")), ("b", "v1", Some("B1"))]))
        .await
        .unwrap();
    assert_eq!((out.blobs_written, out.blobs_shared, out.duplicate, out.replaced), (2, 0, false, false));
    // An identical repeat writes nothing.
    let again = h
        .store
        .put_checkpoint(put("t", "1", None, &[("a", "v1", Some("A1")), ("b", "v1", Some("B1"))]))
        .await
        .unwrap();
    assert!(again.duplicate && !again.replaced);
    assert_eq!((again.blobs_written, again.blobs_shared), (0, 2));
    // Other content replaces; under If-None-Match it is a conflict.
    let mut other = put("t", "1", None, &[("a", "v1", None)]);
    other.if_none_match = true;
    let e = h.store.put_checkpoint(other.clone()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    other.if_none_match = false;
    let replaced = h.store.put_checkpoint(other).await.unwrap();
    assert!(replaced.replaced && !replaced.duplicate);
    let t = h.store.get_checkpoint("t", "", Some("1")).await.unwrap().unwrap();
    assert_eq!(t.channel_versions.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(values(&t), BTreeMap::from([("a".to_string(), "A1".to_string())]));
    let thread = h.store.get_thread("t").await.unwrap().unwrap();
    assert_eq!((thread.checkpoints, thread.blobs), (1, 2));
    // One event per new or replaced checkpoint, none for the duplicate.
    let evs = events_after(&h, 0, 2).await;
    let puts: Vec<_> = evs.iter().filter(|e| e.kind == EventType::CheckpointPut).collect();
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[0].subject, Subject::new(SubjectKind::Thread, "t"));
    assert_eq!(puts[0].data.as_ref().unwrap()["step"], json!(1));
    h.finish().await;
}

pub async fn blobs_are_shared_and_missing_ones_refused(h: Harness) {
    h.store
        .put_checkpoint(put("t", "1", None, &[("a", "1", Some("A1")), ("b", "1", Some("B1"))]))
        .await
        .unwrap();
    // Only `a` moved: `b` is shared from the first checkpoint.
    let out = h
        .store
        .put_checkpoint(put("t", "2", Some("1"), &[("a", "2", Some("A2")), ("b", "1", None)]))
        .await
        .unwrap();
    assert_eq!(out.blobs_written, 1);
    let t2 = h.store.get_checkpoint("t", "", None).await.unwrap().unwrap();
    assert_eq!(t2.checkpoint_id, "2");
    assert_eq!(t2.parent_checkpoint_id.as_deref(), Some("1"));
    assert_eq!(values(&t2), BTreeMap::from([("a".into(), "A2".into()), ("b".into(), "B1".into())]));
    let t1 = h.store.get_checkpoint("t", "", Some("1")).await.unwrap().unwrap();
    assert_eq!(values(&t1)["a"], "A1");
    // A version neither sent nor stored: 422 naming it, nothing written.
    let e = h
        .store
        .put_checkpoint(put("t", "3", Some("2"), &[("a", "2", None), ("c", "9", None)]))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    assert_eq!(e.field.as_deref(), Some("blobs"));
    assert_eq!(e.details.unwrap()["missing"], json!([{"channel": "c", "version": "9"}]));
    assert!(h.store.get_checkpoint("t", "", Some("3")).await.unwrap().is_none());
    // First write wins: a resent version keeps its stored value.
    h.store.put_checkpoint(put("t", "4", Some("2"), &[("a", "2", Some("other"))])).await.unwrap();
    assert_eq!(values(&h.store.get_checkpoint("t", "", Some("4")).await.unwrap().unwrap())["a"], "A2");
    h.finish().await;
}

pub async fn writes_insert_once_and_specials_replace(h: Harness) {
    // Writes may precede their checkpoint.
    let w =
        h.store.put_checkpoint_writes(writes("t", "1", "task1", &[("x", "X1"), ("y", "Y1")])).await.unwrap();
    assert_eq!((w.written, w.duplicate), (2, false));
    let again =
        h.store.put_checkpoint_writes(writes("t", "1", "task1", &[("x", "X2"), ("y", "Y2")])).await.unwrap();
    assert_eq!((again.written, again.duplicate), (0, true), "regular writes are insert-if-absent");
    h.store.put_checkpoint_writes(writes("t", "1", "task0", &[("__interrupt__", "I1")])).await.unwrap();
    let replaced =
        h.store.put_checkpoint_writes(writes("t", "1", "task0", &[("__interrupt__", "I2")])).await.unwrap();
    assert_eq!(replaced.written, 1, "a batch of special channels replaces");
    h.store.put_checkpoint(put("t", "1", None, &[])).await.unwrap();
    let t = h.store.get_checkpoint("t", "", Some("1")).await.unwrap().unwrap();
    let got: Vec<(String, String, i64, String)> = t
        .pending_writes
        .unwrap()
        .into_iter()
        .map(|w| (w.task_id, w.channel, w.idx, String::from_utf8(w.data).unwrap()))
        .collect();
    // LangGraph's order: task_path, task_id, idx.
    assert_eq!(
        got,
        [
            ("task0".into(), "__interrupt__".into(), -3, "I2".into()),
            ("task1".into(), "x".into(), 0, "X1".into()),
            ("task1".into(), "y".into(), 1, "Y1".into())
        ]
    );
    let thread = h.store.get_thread("t").await.unwrap().unwrap();
    assert_eq!(thread.writes, 3);
    h.finish().await;
}

pub async fn namespaces_and_lists(h: Harness) {
    for (i, id) in ["a1", "a2", "a3", "a4"].iter().enumerate() {
        let parent = (i > 0).then(|| ["a1", "a2", "a3"][i - 1]);
        h.store
            .put_checkpoint(put_with("t", "", id, parent, &[], |b| {
                let src = if i % 2 == 0 { "input" } else { "loop" };
                b.metadata =
                    Some(json!({"source": src, "step": i, "run_id": "r1"}).as_object().unwrap().clone());
            }))
            .await
            .unwrap();
    }
    h.store.put_checkpoint(put_with("t", "child:1", "b1", None, &[], |_| {})).await.unwrap();
    h.store.put_checkpoint(put_with("u", "", "c1", None, &[], |_| {})).await.unwrap();
    let list = |f: CheckpointFilter| {
        let store = h.store.clone();
        async move {
            let (page, next) = store.list_checkpoints(f).await.unwrap();
            (page.into_iter().map(|t| t.checkpoint_id).collect::<Vec<_>>(), next)
        }
    };
    let base = CheckpointFilter { limit: 100, max_bytes: 1 << 20, ..Default::default() };
    let thread_t = CheckpointFilter { thread: Some("t".into()), ..base.clone() };
    assert_eq!(list(thread_t.clone()).await.0, ["b1", "a4", "a3", "a2", "a1"]);
    assert_eq!(
        list(CheckpointFilter { ns: Some("".into()), ..thread_t.clone() }).await.0,
        ["a4", "a3", "a2", "a1"]
    );
    assert_eq!(list(CheckpointFilter { ns: Some("child:1".into()), ..thread_t.clone() }).await.0, ["b1"]);
    let meta = |m: serde_json::Value| CheckpointFilter { metadata: Some(m), ..thread_t.clone() };
    assert_eq!(list(meta(json!({"source": "input"}))).await.0, ["a3", "a1"]);
    assert_eq!(list(meta(json!({"source": "input", "step": 2}))).await.0, ["a3"]);
    assert_eq!(list(meta(json!({"source": "nope"}))).await.0, Vec::<String>::new());
    let before = CheckpointFilter { before: Some("a3".into()), limit: 1, ..thread_t.clone() };
    assert_eq!(list(before).await.0, ["a2"]);
    // Pages across threads, by cursor.
    let (p1, next) = list(CheckpointFilter { limit: 2, ..base.clone() }).await;
    assert_eq!(p1, ["c1", "b1"]);
    let (p2, _) = list(CheckpointFilter { limit: 2, after: next, ..base.clone() }).await;
    assert_eq!(p2, ["a4", "a3"]);
    // Full entries carry bytes and blobs.
    let (full, _) =
        h.store.list_checkpoints(CheckpointFilter { full: true, limit: 1, ..thread_t }).await.unwrap();
    assert!(full[0].checkpoint.is_some() && full[0].blobs.is_some());
    let threads = h.store.list_threads(ThreadFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(threads.iter().map(|t| t.thread.as_str()).collect::<Vec<_>>(), ["t", "u"]);
    assert_eq!(threads[0].checkpoints, 5);
    h.finish().await;
}

pub async fn delete_copy_and_runs(h: Harness) {
    h.store.put_checkpoint(put("t", "1", None, &[("a", "1", Some("A"))])).await.unwrap();
    h.store
        .put_checkpoint(put_with("t", "", "2", Some("1"), &[("a", "1", None)], |b| {
            b.metadata = Some(json!({"run_id": "run-2"}).as_object().unwrap().clone());
        }))
        .await
        .unwrap();
    h.store.put_checkpoint_writes(writes("t", "2", "task", &[("x", "X")])).await.unwrap();
    assert_eq!(h.store.copy_thread("t", "copy").await.unwrap(), 2);
    let c = h.store.get_checkpoint("copy", "", None).await.unwrap().unwrap();
    assert_eq!((c.checkpoint_id.as_str(), values(&c)["a"].as_str()), ("2", "A"));
    assert_eq!(c.pending_writes.unwrap().len(), 1);
    assert_eq!(h.store.copy_thread("t", "copy").await.unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(h.store.copy_thread("nope", "x").await.unwrap_err().code, ErrorCode::NotFound);
    // By run, across threads: checkpoint 2 of both, with its writes; blob `a` stays for 1.
    assert_eq!(h.store.delete_checkpoint_runs(vec!["run-2".into()]).await.unwrap(), 2);
    assert!(h.store.get_checkpoint("t", "", Some("2")).await.unwrap().is_none());
    assert_eq!(values(&h.store.get_checkpoint("t", "", None).await.unwrap().unwrap())["a"], "A");
    assert_eq!(h.store.delete_checkpoint_runs(vec![]).await.unwrap(), 0);
    assert_eq!(h.store.delete_thread("copy").await.unwrap(), 1);
    assert_eq!(h.store.delete_thread("copy").await.unwrap(), 0);
    assert!(h.store.get_thread("copy").await.unwrap().is_none());
    h.finish().await;
}

pub async fn prune_keeps_latest_and_delta_ancestors(h: Harness) {
    // 1 holds `items`; 2 and 3 rebuild it from writes (delta); 4 in another namespace.
    h.store
        .put_checkpoint(put("t", "1", None, &[("items", "1", Some("[a]")), ("k", "1", Some("K1"))]))
        .await
        .unwrap();
    for (id, parent, kv) in [("2", "1", "2"), ("3", "2", "3")] {
        let c = put_with("t", "", id, Some(parent), &[("items", "1", None), ("k", kv, Some("K"))], |b| {
            b.delta_channels = Some(vec!["items".into()]);
        });
        h.store.put_checkpoint(c).await.unwrap();
        h.store
            .put_checkpoint_writes(writes("t", parent, &format!("task{id}"), &[("items", id)]))
            .await
            .unwrap();
    }
    h.store.put_checkpoint(put_with("t", "sub", "4", None, &[], |_| {})).await.unwrap();
    h.store.put_checkpoint(put_with("t", "sub", "5", Some("4"), &[], |_| {})).await.unwrap();
    let before = h.store.get_checkpoint("t", "", None).await.unwrap().unwrap();
    let deleted = h.store.prune_threads(vec!["t".into()], 1).await.unwrap();
    assert_eq!(deleted, 1, "only the other namespace's older checkpoint goes: 3 needs 2 and 1");
    let after = h.store.get_checkpoint("t", "", None).await.unwrap().unwrap();
    assert_eq!(before, after);
    assert!(h.store.get_checkpoint("t", "", Some("1")).await.unwrap().is_some());
    assert!(h.store.get_checkpoint("t", "sub", Some("4")).await.unwrap().is_none());
    // Without deltas, keep-latest keeps one per namespace and collects the blobs it frees.
    h.store.put_checkpoint(put("v", "1", None, &[("k", "1", Some("K1"))])).await.unwrap();
    h.store.put_checkpoint(put("v", "2", Some("1"), &[("k", "2", Some("K2"))])).await.unwrap();
    assert_eq!(h.store.prune_threads(vec!["v".into()], 1).await.unwrap(), 1);
    let v = h.store.get_checkpoint("v", "", None).await.unwrap().unwrap();
    assert_eq!(v.parent_checkpoint_id, None, "the parent link of a pruned parent is cleared");
    assert_eq!(h.store.get_thread("v").await.unwrap().unwrap().blobs, 1);
    // Strategy delete (keep 0) removes everything.
    assert_eq!(h.store.prune_threads(vec!["v".into(), "absent".into()], 0).await.unwrap(), 1);
    h.finish().await;
}

/// Puts checkpoints "1" to `n` on `thread`, each the child of the one before, under `fence`.
async fn put_chain(h: &Harness, thread: &str, n: u32, fence: Option<checkpoint::Fence>) {
    for i in 1..=n {
        let parent = (i > 1).then(|| (i - 1).to_string());
        let mut c = put(thread, &i.to_string(), parent.as_deref(), &[]);
        c.fence = fence.clone();
        h.store.put_checkpoint(c).await.unwrap();
    }
}

/// Sets `thread`'s own `keep_last`.
async fn keep_last(h: &Harness, thread: &str, keep: i64) {
    let patch =
        checkpoint::ThreadPatch { thread: thread.into(), keep_last: Some(Some(keep)), ..Default::default() };
    h.store.patch_thread(patch).await.unwrap();
}

pub async fn retention_pass_expires_idle_and_applies_keep_last(h: Harness) {
    h.store.put_checkpoint(put("idle", "1", None, &[])).await.unwrap();
    h.clock.advance(10_000);
    put_chain(&h, "busy", 5, None).await;
    keep_last(&h, "busy", 2).await;
    // A thread whose last writing job still runs is left alone until the job ends.
    h.store.enqueue(vec![super::job("q")]).await.unwrap();
    let running = super::claim(&h, "q", 1).await.remove(0);
    put_chain(&h, "held", 4, Some(checkpoint::Fence { job_id: running.id, lease: running.lease.clone() }))
        .await;
    keep_last(&h, "held", 1).await;
    let sweep = CheckpointSweep { batch: 10, idle_ttl_ms: 5_000, keep_last: 0, grace_ms: 1_000 };
    // Within the grace period `busy` is left alone; `idle` is past its TTL.
    let out = h.store.sweep_checkpoints(sweep).await.unwrap();
    assert_eq!((out.threads_expired, out.checkpoints_pruned), (1, 0));
    assert!(h.store.get_thread("idle").await.unwrap().is_none());
    h.clock.advance(2_000);
    let out = h.store.sweep_checkpoints(sweep).await.unwrap();
    assert_eq!(out.checkpoints_pruned, 3);
    assert_eq!(h.store.get_thread("held").await.unwrap().unwrap().checkpoints, 4, "its job still runs");
    let again = h.store.sweep_checkpoints(sweep).await.unwrap();
    assert_eq!(again.checkpoints_pruned, 0, "a pruned thread is not pruned again until written");
    super::complete(&h, running.id, &running.lease).await.unwrap();
    assert_eq!(h.store.sweep_checkpoints(sweep).await.unwrap().checkpoints_pruned, 3, "its job ended");
    assert_eq!(h.store.get_thread("busy").await.unwrap().unwrap().checkpoints, 2);
    let deleted = event_of(&h, 0, EventType::ThreadDeleted).await;
    assert_eq!(deleted.data.as_ref().unwrap()["reason"], json!("idle_ttl"));
    h.finish().await;
}

pub async fn fenced_writes_need_the_current_lease(h: Harness) {
    let job = h.store.enqueue(vec![super::job("q")]).await.unwrap().remove(0);
    let claimed = super::claim(&h, "q", 1).await.remove(0);
    let fence = |lease: &str| checkpoint::Fence { job_id: claimed.id, lease: lease.into() };
    let mut ok = put("t", "1", None, &[]);
    ok.fence = Some(fence(&claimed.lease));
    h.store.put_checkpoint(ok).await.unwrap();
    assert_eq!(h.store.get_thread("t").await.unwrap().unwrap().last_job_id, Some(job.id));
    let mut stale = put("t", "2", None, &[]);
    stale.fence = Some(fence("1.not-the-lease"));
    assert_eq!(h.store.put_checkpoint(stale).await.unwrap_err().code, ErrorCode::StaleLease);
    let mut w = writes("t", "1", "task", &[("x", "X")]);
    w.fence = Some(fence("1.not-the-lease"));
    assert_eq!(h.store.put_checkpoint_writes(w).await.unwrap_err().code, ErrorCode::StaleLease);
    assert!(h.store.get_checkpoint("t", "", Some("2")).await.unwrap().is_none());
    assert_eq!(h.store.get_thread("t").await.unwrap().unwrap().writes, 0);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend.
macro_rules! checkpoints_rules {
    () => {
        domain_tests!(checkpoints:
            put_duplicate_replace_and_conflict, blobs_are_shared_and_missing_ones_refused,
            writes_insert_once_and_specials_replace, namespaces_and_lists, delete_copy_and_runs,
            prune_keeps_latest_and_delta_ancestors, retention_pass_expires_idle_and_applies_keep_last,
            fenced_writes_need_the_current_lease,
        );
    };
}
