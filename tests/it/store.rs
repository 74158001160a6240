//! Tests for store: the transition table, durability across reopen, orphan sweeping, locking,
//! `done_by_key`, FIFO order and a 100k-job manifest.

use claid_hotfolder::store::records::{
    JobRecord, JobState, JobV1, ManifestRecord, ManifestState, ManifestV1,
};
use claid_hotfolder::store::{DoneInfo, JobId, Store, StoreError};

const ALL_STATES: [&str; 7] = [
    "queued",
    "submitting",
    "submitted",
    "downloading",
    "in_doubt",
    "done",
    "failed",
];

fn manifest(rel: &str) -> ManifestV1 {
    ManifestV1 {
        rel: rel.to_owned(),
        sha256: "ab".repeat(32),
        registered_at_ms: 1,
        n_jobs: 0,
        state: ManifestState::Active,
    }
}

fn job(idx: u32, key: &str) -> JobV1 {
    JobV1 {
        manifest: 0,
        idx,
        key: key.to_owned(),
        input: format!("storage://demo/p{idx}-64x64.png"),
        local: false,
        body: serde_json::json!({"operations": {"resizing": {"width": 32}}}).into(),
        output_rel: format!("m/p{idx}.webp"),
        state: JobState::Queued,
        attempts: 0,
        in_doubt: 0,
        polls: 0,
        request_ids: Vec::new(),
        updated_at_ms: 0,
    }
}

fn done_info(unchanged: bool) -> DoneInfo {
    DoneInfo {
        path: "m/p.webp".to_owned(),
        bytes: 10,
        sha256: "cd".repeat(32),
        width: 32,
        height: 32,
        task_id: Some(7),
        unchanged,
    }
}

fn open_tmp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    (dir, store)
}

fn one_job(store: &Store, key: &str) -> JobId {
    let (_, ids) = store
        .register_manifest(manifest("m.yaml"), vec![job(0, key)])
        .expect("register");
    ids[0]
}

/// Drives a fresh job into `state` through legal transitions only.
fn put_in_state(store: &Store, id: JobId, state: &str) {
    match state {
        "queued" => {}
        "submitting" => drop(store.mark_submitting(id).expect("submitting")),
        "submitted" => {
            put_in_state(store, id, "submitting");
            store
                .mark_submitted(id, 7, "http://x/7", Some("r1"))
                .expect("submitted");
        }
        "downloading" => {
            put_in_state(store, id, "submitted");
            store
                .mark_downloading(id, Some(7), "http://x/t.webp", 32, 32)
                .expect("dl");
        }
        "in_doubt" => {
            put_in_state(store, id, "submitting");
            store.mark_in_doubt(id).expect("in doubt");
        }
        "done" => {
            put_in_state(store, id, "downloading");
            store.mark_done(id, done_info(false)).expect("done");
        }
        "failed" => drop(
            store
                .mark_failed(id, "claid-error", "boom")
                .expect("failed"),
        ),
        other => panic!("unknown state {other}"),
    }
    assert_eq!(store.job(id).unwrap().unwrap().state.kind(), state);
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Submitting,
    Submitted,
    Downloading,
    Done,
    DoneUnchanged,
    Failed,
    InDoubt,
    Requeue,
    RequeueCounted,
}

fn apply(store: &Store, id: JobId, op: Op) -> Result<JobV1, StoreError> {
    match op {
        Op::Submitting => store.mark_submitting(id),
        Op::Submitted => store.mark_submitted(id, 9, "http://x/9", Some("r2")),
        Op::Downloading => store.mark_downloading(id, Some(9), "http://x/9.webp", 10, 20),
        Op::Done => store.mark_done(id, done_info(false)),
        Op::DoneUnchanged => store.mark_done(id, done_info(true)),
        Op::Failed => store.mark_failed(id, "invalid-operations", "bad width"),
        Op::InDoubt => store.mark_in_doubt(id),
        Op::Requeue => store.requeue(id, false),
        Op::RequeueCounted => store.requeue(id, true),
    }
}

/// `expect`: `Some(kind)` for a legal transition, `None` for a conflict.
fn check_transition(from: &str, op: Op, expect: Option<&str>) {
    let (_dir, store) = open_tmp();
    let id = one_job(&store, "k");
    put_in_state(&store, id, from);
    let before = store.job(id).unwrap().unwrap();
    let res = apply(&store, id, op);
    let after = store.job(id).unwrap().unwrap();
    let listed = store.unfinished().unwrap().iter().any(|(j, _)| *j == id);
    assert_eq!(
        listed,
        !after.state.is_terminal(),
        "{from} --{op:?}--> unfinished index"
    );
    let by_key = store.done_by_key("k").unwrap().map(|(j, _)| j);
    let is_done = matches!(after.state, JobState::Done { .. });
    assert_eq!(
        by_key,
        is_done.then_some(id),
        "{from} --{op:?}--> done_by_key"
    );
    match (expect, res) {
        (Some(to), Ok(job)) => {
            assert_eq!(job.state.kind(), to, "{from} --{op:?}-->");
            assert_eq!(after, job, "returned record is the stored one");
            let attempts = before.attempts + u32::from(matches!(op, Op::Submitting));
            assert_eq!(after.attempts, attempts, "{from} --{op:?}--> attempts");
            let in_doubt =
                before.in_doubt + u32::from(matches!(op, Op::InDoubt | Op::RequeueCounted));
            assert_eq!(after.in_doubt, in_doubt, "{from} --{op:?}--> in_doubt");
            if let JobState::Failed { attempts, .. } = after.state {
                assert_eq!(attempts, before.attempts);
            }
        }
        (None, Err(StoreError::Conflict { job, found, .. })) => {
            assert_eq!(job, id);
            assert_eq!(found, from, "{from} --{op:?}--> conflict names the state");
            assert_eq!(
                after, before,
                "{from} --{op:?}--> a conflict changes nothing"
            );
        }
        (expect, res) => panic!("{from} --{op:?}-->: expected {expect:?}, got {res:?}"),
    }
}

#[test]
fn every_transition_is_checked() {
    let table: [(Op, &[&str], &str); 9] = [
        (Op::Submitting, &["queued"], "submitting"),
        (Op::Submitted, &["submitting"], "submitted"),
        (
            Op::Downloading,
            &["submitting", "submitted", "downloading"],
            "downloading",
        ),
        (Op::Done, &["downloading"], "done"),
        (Op::DoneUnchanged, &["queued", "downloading"], "done"),
        (
            Op::Failed,
            &[
                "queued",
                "submitting",
                "submitted",
                "downloading",
                "in_doubt",
            ],
            "failed",
        ),
        (Op::InDoubt, &["submitting"], "in_doubt"),
        (Op::Requeue, &ALL_STATES, "queued"),
        (Op::RequeueCounted, &ALL_STATES, "queued"),
    ];
    for (op, allowed, to) in table {
        for from in ALL_STATES {
            let expect = allowed.contains(&from).then_some(to);
            check_transition(from, op, expect);
        }
    }
}

#[test]
fn unknown_job_is_not_found() {
    let (_dir, store) = open_tmp();
    let res = store.mark_submitting(12345);
    assert!(
        matches!(res, Err(StoreError::JobNotFound(12345))),
        "{res:?}"
    );
    assert!(store.job(12345).unwrap().is_none());
}

#[test]
fn reopen_sees_every_flushed_change() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest_id, ids) = {
        let store = Store::open(dir.path()).unwrap();
        let jobs = (0..4).map(|i| job(i, &format!("k{i}"))).collect();
        let (manifest_id, ids) = store
            .register_manifest(manifest("a/shoes.yaml"), jobs)
            .unwrap();
        store.mark_submitting(ids[0]).unwrap();
        put_in_state(&store, ids[1], "submitted");
        put_in_state(&store, ids[2], "done");
        put_in_state(&store, ids[3], "failed");
        store
            .set_manifest_state(manifest_id, ManifestState::Finished { at_ms: 5 })
            .unwrap();
        (manifest_id, ids)
    };
    let store = Store::open(dir.path()).unwrap();
    assert!(dir.path().join("v1").is_dir(), "schema version in the path");
    let m = store.manifest(manifest_id).unwrap().unwrap();
    assert_eq!(m.n_jobs, 4);
    assert_eq!(m.state, ManifestState::Finished { at_ms: 5 });
    let kinds: Vec<_> = ids
        .iter()
        .map(|id| store.job(*id).unwrap().unwrap().state.kind())
        .collect();
    assert_eq!(kinds, ["submitting", "submitted", "done", "failed"]);
    let job0 = store.job(ids[0]).unwrap().unwrap();
    assert_eq!((job0.attempts, job0.manifest), (1, manifest_id));
    match store.job(ids[1]).unwrap().unwrap().state {
        JobState::Submitted {
            task_id,
            ref result_url,
            ..
        } => {
            assert_eq!((task_id, result_url.as_str()), (7, "http://x/7"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.done_by_key("k2").unwrap().map(|(id, _)| id),
        Some(ids[2])
    );
}

#[test]
fn orphan_jobs_without_a_manifest_record_are_swept_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (kept_manifest, kept_ids) = {
        let store = Store::open(dir.path()).unwrap();
        store
            .register_manifest(manifest("kept.yaml"), vec![job(0, "a"), job(1, "b")])
            .unwrap()
    };
    // Simulate a crash between writing the jobs and the manifest record (the commit point).
    let orphan_manifest: u64 = 999_999_000;
    let orphan_jobs: [u64; 2] = [999_999_001, 999_999_002];
    {
        let db = sled::open(dir.path().join("v1")).unwrap();
        let jobs = db.open_tree("jobs").unwrap();
        let index = db.open_tree("jobs_by_manifest").unwrap();
        for (i, job_id) in orphan_jobs.iter().enumerate() {
            let mut record = job(i as u32, "orphan");
            record.manifest = orphan_manifest;
            let bytes = serde_json::to_vec(&JobRecord::V1(record)).unwrap();
            jobs.insert(job_id.to_be_bytes(), bytes).unwrap();
            let mut key = orphan_manifest.to_be_bytes().to_vec();
            key.extend_from_slice(&job_id.to_be_bytes());
            index.insert(key, &[]).unwrap();
        }
        db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    for job_id in orphan_jobs {
        assert!(
            store.job(job_id).unwrap().is_none(),
            "orphan {job_id} swept"
        );
    }
    assert!(store.jobs_of_manifest(orphan_manifest).unwrap().is_empty());
    let unfinished: Vec<_> = store
        .unfinished()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(unfinished, kept_ids);
    assert_eq!(store.jobs_of_manifest(kept_manifest).unwrap().len(), 2);
}

/// sled takes an exclusive `flock` on its database file; a second open, even from the same
/// process, fails, and the store reports that as `Locked` naming the path.
#[test]
fn second_open_is_locked() {
    let (dir, _store) = open_tmp();
    match Store::open(dir.path()) {
        Err(err @ StoreError::Locked { .. }) => {
            assert_eq!(err.code(), "store-locked");
            let text = err.to_string();
            assert!(
                text.contains(&dir.path().join("v1").display().to_string()),
                "{text}"
            );
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn done_by_key_follows_done_and_requeue() {
    let (_dir, store) = open_tmp();
    let first = one_job(&store, "same-key");
    assert!(store.done_by_key("same-key").unwrap().is_none());
    put_in_state(&store, first, "done");
    let (id, job) = store.done_by_key("same-key").unwrap().unwrap();
    assert_eq!(id, first);
    assert!(matches!(
        job.state,
        JobState::Done {
            unchanged: false,
            ..
        }
    ));

    // A later manifest's job with the same key, skipped as unchanged, takes over the key.
    let second = one_job(&store, "same-key");
    store.mark_done(second, done_info(true)).unwrap();
    assert_eq!(store.done_by_key("same-key").unwrap().unwrap().0, second);

    // Requeueing the old job does not drop the newer owner of the key.
    store.requeue(first, false).unwrap();
    assert_eq!(store.done_by_key("same-key").unwrap().unwrap().0, second);
    // Requeueing the owner does.
    store.requeue(second, false).unwrap();
    assert!(store.done_by_key("same-key").unwrap().is_none());
}

#[test]
fn unfinished_is_fifo_and_skips_terminal_jobs() {
    let (_dir, store) = open_tmp();
    let (_, a) = store
        .register_manifest(manifest("a.yaml"), (0..3).map(|i| job(i, "a")).collect())
        .unwrap();
    let (_, b) = store
        .register_manifest(manifest("b.yaml"), (0..3).map(|i| job(i, "b")).collect())
        .unwrap();
    put_in_state(&store, a[0], "done");
    put_in_state(&store, b[1], "failed");
    put_in_state(&store, b[2], "in_doubt");
    put_in_state(&store, a[2], "submitted");
    let ids: Vec<_> = store
        .unfinished()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, [a[1], a[2], b[0], b[2]]);
    assert!(
        a.iter().chain(&b).is_sorted(),
        "ids grow in registration order"
    );
}

#[test]
fn latest_manifest_by_rel_is_the_newest_registration() {
    let (_dir, store) = open_tmp();
    assert!(store.latest_manifest_by_rel("x/s.yaml").unwrap().is_none());
    let (first, _) = store
        .register_manifest(manifest("x/s.yaml"), vec![job(0, "k")])
        .unwrap();
    let (second, _) = store
        .register_manifest(manifest("x/s.yaml"), vec![])
        .unwrap();
    assert!(second > first);
    let (id, m) = store.latest_manifest_by_rel("x/s.yaml").unwrap().unwrap();
    assert_eq!((id, m.rel.as_str(), m.n_jobs), (second, "x/s.yaml", 0));
    let all: Vec<_> = store
        .manifests()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(all, [first, second]);
}

#[test]
fn counts_and_in_doubt_total() {
    let (_dir, store) = open_tmp();
    let (m, ids) = store
        .register_manifest(manifest("c.yaml"), (0..6).map(|i| job(i, "c")).collect())
        .unwrap();
    put_in_state(&store, ids[0], "done");
    put_in_state(&store, ids[1], "failed");
    put_in_state(&store, ids[2], "in_doubt");
    put_in_state(&store, ids[3], "submitting");
    store.requeue(ids[3], true).unwrap();
    put_in_state(&store, ids[4], "downloading");
    let counts = store.counts().unwrap();
    let c = counts[&m];
    assert_eq!(
        (
            c.queued,
            c.submitting,
            c.submitted,
            c.downloading,
            c.in_doubt,
            c.done,
            c.failed
        ),
        (2, 0, 0, 1, 1, 1, 1)
    );
    assert_eq!((c.total(), c.terminal()), (6, 2));
    assert_eq!(store.counts_of_manifest(m).unwrap(), c);
    assert_eq!(store.in_doubt_total().unwrap(), 2);
}

#[test]
fn polls_and_request_ids_are_recorded_keeping_the_last_eight() {
    let (_dir, store) = open_tmp();
    let id = one_job(&store, "k");
    put_in_state(&store, id, "submitted");
    for i in 0..10 {
        store.record_poll(id, Some(&format!("p{i}"))).unwrap();
    }
    store.record_poll(id, None).unwrap();
    store.record_request_id(id, "last").unwrap();
    let job = store.job(id).unwrap().unwrap();
    assert_eq!(job.polls, 11);
    let expected: Vec<String> = (3..10)
        .map(|i| format!("p{i}"))
        .chain(["last".into()])
        .collect();
    assert_eq!(job.request_ids, expected);
    assert_eq!(
        job.state.kind(),
        "submitted",
        "polls do not change the state"
    );
}

#[test]
fn registers_and_lists_100k_jobs() {
    let (_dir, store) = open_tmp();
    let n = 100_000;
    let jobs = (0..n).map(|i| job(i, &format!("key-{i}"))).collect();
    let (m, ids) = store.register_manifest(manifest("big.yaml"), jobs).unwrap();
    assert_eq!(ids.len(), n as usize);
    let unfinished = store.unfinished().unwrap();
    assert_eq!(unfinished.len(), n as usize);
    assert!(unfinished.iter().map(|(id, _)| id).eq(ids.iter()));
    assert!(
        unfinished
            .iter()
            .enumerate()
            .all(|(i, (_, j))| j.idx == i as u32)
    );
    assert_eq!(store.counts_of_manifest(m).unwrap().queued, u64::from(n));
    assert_eq!(store.manifest(m).unwrap().unwrap().n_jobs, n);
}

/// `durably` returns only after a flush that started after its writes, and the writes of
/// many concurrent callers are all on disk afterwards (they share flushes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durably_returns_after_a_flush_that_covers_its_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let (_, ids) = store
        .register_manifest(
            manifest("m.yaml"),
            (0..200).map(|i| job(i, &format!("k{i}"))).collect(),
        )
        .expect("register");

    let before = store.flushes();
    let first = ids[0];
    let job = store
        .durably(|s| s.mark_submitting(first))
        .await
        .expect("durably");
    assert_eq!(job.state.kind(), "submitting");
    assert!(
        store.flushes() > before,
        "a flush completed between the write and the return"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for &id in &ids[1..] {
        let store = store.clone();
        tasks.spawn(async move {
            let before = store.flushes();
            store
                .durably(|s| s.mark_submitting(id))
                .await
                .expect("durably");
            assert!(
                store.flushes() > before,
                "job {id}: returned before a flush"
            );
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    drop(store);
    let store = Store::open(dir.path()).expect("reopen");
    for &id in &ids {
        let job = store.job(id).unwrap().unwrap();
        assert_eq!(job.state.kind(), "submitting", "job {id} after reopen");
        assert_eq!(job.attempts, 1);
    }
}

/// A write that fails inside `durably` is returned as is, and nothing waits for a flush.
#[tokio::test]
async fn durably_passes_a_failed_write_through() {
    let (_dir, store) = open_tmp();
    let err = store
        .durably(|s| s.mark_submitting(424242))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::JobNotFound(424242)), "{err:?}");
}

/// The stored JSON format of V1 records: this literal must keep decoding in later versions.
#[test]
fn v1_records_keep_their_json_format() {
    let stored = r#"{"v":"V1","manifest":3,"idx":0,"key":"k","input":"storage://demo/a-8x8.png",
        "local":false,"body":{"operations":{}},"output_rel":"m/a.webp",
        "state":{"kind":"done","path":"/o/m/a.webp","bytes":5,"sha256":"ab","width":8,
        "height":8,"task_id":null,"unchanged":true},
        "attempts":0,"in_doubt":0,"polls":0,"request_ids":[],"updated_at_ms":1}"#;
    let JobRecord::V1(job) = serde_json::from_str(stored).unwrap();
    assert!(matches!(
        job.state,
        JobState::Done {
            unchanged: true,
            ..
        }
    ));
    let again = serde_json::to_value(JobRecord::V1(job)).unwrap();
    let stored: serde_json::Value = serde_json::from_str(stored).unwrap();
    assert_eq!(again, stored);

    let manifest = r#"{"v":"V1","rel":"a.yaml","sha256":"ab","registered_at_ms":1,"n_jobs":2,
        "state":{"kind":"finished","at_ms":9}}"#;
    let ManifestRecord::V1(m) = serde_json::from_str(manifest).unwrap();
    assert_eq!(m.state, ManifestState::Finished { at_ms: 9 });
}
