//! Tests for store: the transition table, durability across reopen, orphan sweeping, locking,
//! `done_by_key`, FIFO order and a 100k-job manifest.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use claid_hotfolder::claid::wire::TaskRef;
use claid_hotfolder::codes::FailureCode;
use claid_hotfolder::store::records::{
    JobRecord, JobState, JobV1, ManifestRecord, ManifestState, ManifestV1,
};
use claid_hotfolder::store::{
    DoneInfo, JobId, NewRun, Registered, RunEnd, Store, StoreError, UnwrittenResult,
};

const ALL_STATES: [&str; 7] = [
    "queued",
    "submitting",
    "submitted",
    "downloading",
    "in-doubt",
    "done",
    "failed",
];

fn manifest(rel: &str) -> ManifestV1 {
    ManifestV1 {
        rel: rel.to_owned(),
        sha256: "ab".repeat(32),
        registered_at_ms: 1,
        n_jobs: 0,
        state: ManifestState::Running,
        counts: None,
        staging_cleanup: false,
    }
}

/// Outputs are distinct per call: runs that are active together may not share one.
fn job(idx: u32, key: &str) -> JobV1 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    JobV1 {
        manifest: 0,
        idx,
        key: key.to_owned(),
        input: format!("storage://demo/p{idx}-64x64.png"),
        local: false,
        body: serde_json::json!({"operations": {"resizing": {"width": 32}}}).into(),
        output_rel: format!("m/{n}/p{idx}.webp"),
        state: JobState::Queued,
        attempts: 0,
        in_doubt: 0,
        polls: 0,
        request_ids: Vec::new(),
        batch: None,
        batch_images: None,
        staged: None,
        replaces: None,
        submitted_to: None,
        input_seen: None,
        lost_answers: 0,
        accepted_unread: false,
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
        skipped: false,
    }
}

fn open_tmp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    (dir, store)
}

/// Registers a run (no job unchanged): its id and every job id.
async fn register(store: &Store, m: ManifestV1, jobs: Vec<JobV1>) -> (u64, Vec<JobId>) {
    let run = NewRun {
        record: m,
        extra_paths: Vec::new(),
    };
    match store
        .register_run(run, jobs.into_iter(), |_, _| None)
        .await
        .expect("register")
    {
        Registered::Run { id, queued, .. } => (id, queued),
        other => panic!("expected a registration, got {other:?}"),
    }
}

async fn one_job(store: &Store, key: &str) -> JobId {
    let (_, ids) = register(store, manifest("m.yaml"), vec![job(0, key)]).await;
    ids[0]
}

async fn jobs_of_manifest(store: &Store, id: u64) -> Vec<(JobId, JobV1)> {
    store
        .read(move |r| {
            let mut out = Vec::new();
            r.for_each_job_of_manifest(id, |job_id, job| {
                out.push((job_id, job));
                Ok::<_, StoreError>(())
            })?;
            Ok::<_, StoreError>(out)
        })
        .await
        .expect("jobs of manifest")
}

/// The ids `Store::unfinished` lists, in its order.
async fn unfinished_ids(store: &Store) -> Vec<JobId> {
    store
        .unfinished()
        .await
        .expect("unfinished")
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

async fn get(store: &Store, id: JobId) -> JobV1 {
    store.job(id).await.expect("read").expect("job exists")
}

/// Drives a fresh job into `state` through legal transitions only.
async fn put_in_state(store: &Store, id: JobId, state: &str) {
    let path: &[&str] = match state {
        "queued" => &[],
        "submitting" => &["submitting"],
        "submitted" => &["submitting", "submitted"],
        "downloading" => &["submitting", "submitted", "downloading"],
        "in-doubt" => &["submitting", "in-doubt"],
        "done" => &["submitting", "submitted", "downloading", "done"],
        "failed" => &["failed"],
        other => panic!("unknown state {other}"),
    };
    for step in path {
        match *step {
            "submitting" => drop(store.mark_submitting(id).await.expect("submitting")),
            "submitted" => drop(
                // Each job its own task: a task one job took is never another's.
                store
                    .mark_submitted(id, 7000 + id, "http://x/7", Some("r1"))
                    .await
                    .expect("submitted"),
            ),
            "downloading" => drop(
                store
                    .mark_downloading(id, Some(7), "http://x/t.webp", 32, 32)
                    .await
                    .expect("dl"),
            ),
            "in-doubt" => drop(store.mark_in_doubt(id).await.expect("in doubt")),
            "done" => drop(store.mark_done(id, done_info(false)).await.expect("done")),
            "failed" => drop(
                store
                    .mark_failed(id, FailureCode::ClaidError, "boom")
                    .await
                    .expect("failed"),
            ),
            _ => unreachable!(),
        }
    }
    assert_eq!(get(store, id).await.state.kind(), state);
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

async fn apply(store: &Store, id: JobId, op: Op) -> Result<JobV1, StoreError> {
    match op {
        Op::Submitting => store.mark_submitting(id).await,
        Op::Submitted => store.mark_submitted(id, 9, "http://x/9", Some("r2")).await,
        Op::Downloading => {
            store
                .mark_downloading(id, Some(9), "http://x/9.webp", 10, 20)
                .await
        }
        Op::Done => store.mark_done(id, done_info(false)).await,
        Op::DoneUnchanged => store.mark_done(id, done_info(true)).await,
        Op::Failed => {
            store
                .mark_failed(id, FailureCode::ClaidInvalidRequest, "bad width")
                .await
        }
        Op::InDoubt => store.mark_in_doubt(id).await,
        Op::Requeue => store.requeue(id, false).await,
        Op::RequeueCounted => store.requeue(id, true).await,
    }
}

/// `expect`: `Some(kind)` for a legal transition, `None` for a conflict.
async fn check_transition(from: &str, op: Op, expect: Option<&str>) {
    let (_dir, store) = open_tmp();
    let id = one_job(&store, "k").await;
    put_in_state(&store, id, from).await;
    let before = get(&store, id).await;
    let res = apply(&store, id, op).await;
    let after = get(&store, id).await;
    let listed = store
        .unfinished()
        .await
        .unwrap()
        .iter()
        .any(|(j, _)| *j == id);
    assert_eq!(
        listed,
        !after.state.is_terminal(),
        "{from} --{op:?}--> unfinished index"
    );
    let by_key = store.done_by_key("k").await.unwrap().map(|(j, _)| j);
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
            assert_eq!(
                found.as_str(),
                from,
                "{from} --{op:?}--> conflict names the state"
            );
            assert_eq!(
                after, before,
                "{from} --{op:?}--> a conflict changes nothing"
            );
        }
        (expect, res) => panic!("{from} --{op:?}-->: expected {expect:?}, got {res:?}"),
    }
}

#[tokio::test]
async fn every_transition_is_checked() {
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
                "in-doubt",
            ],
            "failed",
        ),
        (Op::InDoubt, &["submitting"], "in-doubt"),
        (Op::Requeue, &ALL_STATES, "queued"),
        (Op::RequeueCounted, &ALL_STATES, "queued"),
    ];
    for (op, allowed, to) in table {
        for from in ALL_STATES {
            let expect = allowed.contains(&from).then_some(to);
            check_transition(from, op, expect).await;
        }
    }
}

/// A task (or batch) one job took is never taken by another: Claid's answer naming it for a
/// second submit (a cache mixing answers up), or a webhook of it played again adopting a job
/// held in doubt, is refused as `TaskTaken`; the same job may record it again.
#[tokio::test]
async fn a_task_one_job_took_is_never_taken_by_another() {
    let (_dir, store) = open_tmp();
    let (_, ids) = register(
        &store,
        manifest("m.yaml"),
        vec![job(0, "a"), job(1, "b"), job(2, "c")],
    )
    .await;
    for id in &ids {
        store.mark_submitting(*id).await.expect("submitting");
    }
    store
        .mark_submitted(ids[0], 100, "http://x/100", None)
        .await
        .expect("first");
    let err = store
        .mark_submitted(ids[1], 100, "http://x/100", None)
        .await
        .expect_err("second");
    assert!(
        matches!(err, StoreError::TaskTaken { task: 100, owner } if owner == ids[0]),
        "{err}"
    );
    assert!(matches!(
        get(&store, ids[1]).await.state,
        JobState::Submitting { .. }
    ));
    store.mark_in_doubt(ids[1]).await.expect("held");
    let err = store
        .adopt_waiting(&[ids[1]], 100, "http://x/100", false)
        .await
        .expect_err("adoption");
    assert!(matches!(err, StoreError::TaskTaken { .. }), "{err}");
    // A batch with the same number is another task.
    store
        .mark_batch_submitted(&[ids[2]], 100, "http://x/b/100", None)
        .await
        .expect("a batch 100 is not task 100");
    assert_eq!(
        store.task_owner(TaskRef::Batch(100)).await.expect("read"),
        Some(ids[2])
    );
}

#[tokio::test]
async fn unknown_job_is_not_found() {
    let (_dir, store) = open_tmp();
    let res = store.mark_submitting(12345).await;
    assert!(
        matches!(res, Err(StoreError::JobNotFound(12345))),
        "{res:?}"
    );
    assert!(store.job(12345).await.unwrap().is_none());
}

/// A job that failed on a task Claid may still finish takes a late announcement only of its
/// own kind: single tasks and batches are numbered apart, so batch 7's results must not be
/// taken by the job whose single task 7 timed out (matched by file name, they could deliver
/// another image).
#[test]
fn a_timed_out_job_takes_only_an_announcement_of_its_own_kind() {
    let failed = |code, batch| {
        let mut j = job(0, "k");
        j.state = JobState::Failed {
            code,
            message: String::new(),
            attempts: 1,
            task_id: Some(7),
            unwritten: None,
        };
        j.batch = batch;
        j
    };
    let single = failed(FailureCode::TaskTimeout, None);
    assert!(single.timed_out_on(7, false));
    assert!(!single.timed_out_on(7, true), "batch 7 is not its task");
    assert!(!single.timed_out_on(8, false));
    let batched = failed(FailureCode::TaskLost, Some(7));
    assert!(batched.timed_out_on(7, true));
    assert!(
        !batched.timed_out_on(7, false),
        "single task 7 is not its batch"
    );
    assert!(!failed(FailureCode::ClaidError, None).timed_out_on(7, false));
}

/// Each store has an id of its own, made at its creation and kept across restarts: it names
/// the daemon's part of a shared staging prefix, so two daemons never share a staged object
/// (one's cleanup deleted objects the other had submitted).
#[tokio::test]
async fn a_store_keeps_its_own_id_and_two_stores_differ() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = Store::open(a.path()).unwrap().id().to_owned();
    let other = Store::open(b.path()).unwrap().id().to_owned();
    assert_eq!(first.len(), 16, "{first}");
    assert_ne!(first, other);
    assert_eq!(
        Store::open(a.path()).unwrap().id(),
        first,
        "kept across a restart"
    );
    let key = |owner: &str| {
        claid_hotfolder::storages::Staging::key_for(owner, "ab12", "photos/x.PNG", None)
    };
    assert_eq!(key(&first), format!("staging/{first}/ab12.png"));
    assert_ne!(key(&first), key(&other));
}

/// A single task and a batch with one id (Claid numbers them apart) each keep their own
/// announcement across a restart: one does not replace the other, and taking one leaves the
/// other kept.
#[tokio::test]
async fn a_single_task_and_a_batch_with_one_id_keep_their_announcements_apart() {
    use claid_hotfolder::claid::wire::TaskRef;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .keep_announcement(TaskRef::Async(7), b"single")
            .await
            .unwrap();
        store
            .keep_announcement(TaskRef::Batch(7), b"batch")
            .await
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let kept = store
        .kept_announcements(Duration::from_secs(60))
        .await
        .unwrap();
    let bodies: Vec<&[u8]> = kept.iter().map(|(_, body)| body.as_slice()).collect();
    assert_eq!(bodies, [&b"single"[..], &b"batch"[..]]);
    store.forget_announcement(&kept[1].0).await.unwrap();
    let kept = store
        .kept_announcements(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].1, b"single");
}

#[tokio::test]
async fn reopen_sees_every_flushed_change() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest_id, ids) = {
        let store = Store::open(dir.path()).unwrap();
        let jobs = (0..4).map(|i| job(i, &format!("k{i}"))).collect();
        let (manifest_id, ids) = register(&store, manifest("a/shoes.yaml"), jobs).await;
        store.mark_submitting(ids[0]).await.unwrap();
        put_in_state(&store, ids[1], "submitted").await;
        put_in_state(&store, ids[2], "done").await;
        put_in_state(&store, ids[3], "failed").await;
        store
            .end_run(manifest_id, RunEnd::Finished, false)
            .await
            .unwrap();
        (manifest_id, ids)
    };
    let store = Store::open(dir.path()).unwrap();
    assert!(dir.path().join("v1").is_dir(), "schema version in the path");
    let m = store.manifest(manifest_id).await.unwrap().unwrap();
    assert_eq!(m.n_jobs, 4);
    assert!(matches!(m.state, ManifestState::Finished { .. }), "{m:?}");
    let mut kinds = Vec::new();
    for id in &ids {
        kinds.push(get(&store, *id).await.state.kind());
    }
    assert_eq!(kinds, ["submitting", "submitted", "done", "failed"]);
    let job0 = get(&store, ids[0]).await;
    assert_eq!((job0.attempts, job0.manifest), (1, manifest_id));
    match get(&store, ids[1]).await.state {
        JobState::Submitted {
            task_id,
            ref result_url,
            ..
        } => {
            assert_eq!(
                (task_id, result_url.as_str()),
                (7000 + ids[1], "http://x/7")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.done_by_key("k2").await.unwrap().map(|(id, _)| id),
        Some(ids[2])
    );
}

/// Jobs a registration wrote before a crash cut it short (its `registering` mark, written
/// first, and jobs, but no manifest record: the commit point).
fn write_orphans(dir: &std::path::Path, orphan_manifest: u64, orphan_jobs: &[u64], marked: bool) {
    let db = open_raw(&dir.join("v1"));
    if marked {
        db.open_tree("registering")
            .unwrap()
            .insert(orphan_manifest.to_be_bytes(), "orphan.yaml")
            .unwrap();
    }
    let jobs = db.open_tree("jobs").unwrap();
    let index = db.open_tree("jobs_by_manifest").unwrap();
    let unfinished = db.open_tree("unfinished").unwrap();
    for (i, job_id) in orphan_jobs.iter().enumerate() {
        let mut record = job(i as u32, "orphan");
        record.manifest = orphan_manifest;
        let bytes = serde_json::to_vec(&JobRecord::V1(record)).unwrap();
        jobs.insert(job_id.to_be_bytes(), bytes).unwrap();
        unfinished.insert(job_id.to_be_bytes(), &[]).unwrap();
        let mut key = orphan_manifest.to_be_bytes().to_vec();
        key.extend_from_slice(&job_id.to_be_bytes());
        index.insert(key, &[]).unwrap();
    }
    if !marked {
        // A store written before registrations were marked has never had its whole sweep.
        db.open_tree("meta")
            .unwrap()
            .remove("orphan_sweep")
            .unwrap();
    }
    db.flush().unwrap();
}

/// A store an older version wrote (no `registering` marks, never swept whole) has its
/// orphans swept once, over the whole history.
#[tokio::test]
async fn orphan_jobs_of_a_store_never_swept_whole_are_swept_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (kept_manifest, kept_ids) = {
        let store = Store::open(dir.path()).unwrap();
        register(&store, manifest("kept.yaml"), vec![job(0, "a")]).await
    };
    let orphan_jobs: [u64; 2] = [999_999_001, 999_999_002];
    write_orphans(dir.path(), 999_999_000, &orphan_jobs, false);
    let (store, unfinished) = Store::open_for_resume(dir.path()).unwrap();
    for job_id in orphan_jobs {
        assert!(
            store.job(job_id).await.unwrap().is_none(),
            "orphan {job_id} swept"
        );
    }
    let ids: Vec<_> = unfinished.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, kept_ids);
    assert_eq!(jobs_of_manifest(&store, kept_manifest).await.len(), 1);
}

#[tokio::test]
async fn orphan_jobs_without_a_manifest_record_are_swept_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (kept_manifest, kept_ids) = {
        let store = Store::open(dir.path()).unwrap();
        register(
            &store,
            manifest("kept.yaml"),
            vec![job(0, "a"), job(1, "b")],
        )
        .await
    };
    // Simulate a crash between writing the jobs and the manifest record (the commit point).
    let orphan_manifest: u64 = 999_999_000;
    let orphan_jobs: [u64; 2] = [999_999_001, 999_999_002];
    write_orphans(dir.path(), orphan_manifest, &orphan_jobs, true);
    let (store, opened) = Store::open_for_resume(dir.path()).unwrap();
    for job_id in orphan_jobs {
        assert!(
            store.job(job_id).await.unwrap().is_none(),
            "orphan {job_id} swept"
        );
    }
    assert!(jobs_of_manifest(&store, orphan_manifest).await.is_empty());
    let unfinished = unfinished_ids(&store).await;
    assert_eq!(unfinished, kept_ids);
    // The pass that counted at open collected the same list.
    let opened: Vec<_> = opened.into_iter().map(|(id, _)| id).collect();
    assert_eq!(opened, kept_ids);
    assert_eq!(jobs_of_manifest(&store, kept_manifest).await.len(), 2);
}

/// A crash between a reservation and its index entry leaves a reservation `sweep_orphans`
/// cannot find; its owner has no record and no registration under way, so it holds nothing:
/// the manifest that is taken in again after the crash gets its paths (it is not refused as a
/// conflict with its own cut-short registration).
#[tokio::test]
async fn a_reservation_left_by_a_cut_short_registration_does_not_block_the_path() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_raw(&dir.path().join("v1"));
        let reserved = db.open_tree("reserved").unwrap();
        reserved
            .insert("m/out.jpg", &999_999_000u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let mut j = job(0, "k");
    j.output_rel = "m/out.jpg".to_owned();
    let run = NewRun {
        record: manifest("m.yaml"),
        extra_paths: Vec::new(),
    };
    match store
        .register_run(run, vec![j].into_iter(), |_, _| None)
        .await
        .expect("register")
    {
        Registered::Run { queued, .. } => assert_eq!(queued.len(), 1),
        other => panic!("the orphan reservation blocked the path: {other:?}"),
    }
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

#[tokio::test]
async fn done_by_key_follows_done_and_requeue() {
    let (_dir, store) = open_tmp();
    let first = one_job(&store, "same-key").await;
    assert!(store.done_by_key("same-key").await.unwrap().is_none());
    put_in_state(&store, first, "done").await;
    let (id, job) = store.done_by_key("same-key").await.unwrap().unwrap();
    assert_eq!(id, first);
    assert!(matches!(
        job.state,
        JobState::Done {
            unchanged: false,
            ..
        }
    ));

    // A later manifest's job with the same key, skipped as unchanged, takes over the key.
    let second = one_job(&store, "same-key").await;
    store.mark_done(second, done_info(true)).await.unwrap();
    assert_eq!(
        store.done_by_key("same-key").await.unwrap().unwrap().0,
        second
    );

    // Requeueing the old job does not drop the newer owner of the key.
    store.requeue(first, false).await.unwrap();
    assert_eq!(
        store.done_by_key("same-key").await.unwrap().unwrap().0,
        second
    );
    // Requeueing the owner does.
    store.requeue(second, false).await.unwrap();
    assert!(store.done_by_key("same-key").await.unwrap().is_none());
}

/// A job `on_output_exists: skip` left done (straight from the queue, no API call) kept a file
/// it did not make: it never answers for its key.
#[tokio::test]
async fn a_skipped_job_is_done_but_never_answers_for_its_key() {
    let (_dir, store) = open_tmp();
    let id = one_job(&store, "kept-key").await;
    let skipped = DoneInfo {
        task_id: None,
        skipped: true,
        ..done_info(false)
    };
    let job = store.mark_done(id, skipped).await.unwrap();
    assert!(job.state.is_skipped(), "{:?}", job.state);
    assert!(store.done_by_key("kept-key").await.unwrap().is_none());
}

#[tokio::test]
async fn unfinished_is_fifo_and_skips_terminal_jobs() {
    let (_dir, store) = open_tmp();
    let (_, a) = register(
        &store,
        manifest("a.yaml"),
        (0..3).map(|i| job(i, "a")).collect(),
    )
    .await;
    let (_, b) = register(
        &store,
        manifest("b.yaml"),
        (0..3).map(|i| job(i, "b")).collect(),
    )
    .await;
    put_in_state(&store, a[0], "done").await;
    put_in_state(&store, b[1], "failed").await;
    put_in_state(&store, b[2], "in-doubt").await;
    put_in_state(&store, a[2], "submitted").await;
    let ids = unfinished_ids(&store).await;
    assert_eq!(ids, [a[1], a[2], b[0], b[2]]);
    assert!(
        a.iter().chain(&b).is_sorted(),
        "ids grow in registration order"
    );
}

#[tokio::test]
async fn latest_manifest_by_rel_is_the_newest_registration() {
    let (_dir, store) = open_tmp();
    assert!(store.latest_run("x/s.yaml").await.unwrap().is_none());
    let (first, _) = register(&store, manifest("x/s.yaml"), vec![job(0, "k")]).await;
    let (second, _) = register(&store, manifest("x/s.yaml"), vec![]).await;
    assert!(second > first);
    let (id, m) = store.latest_run("x/s.yaml").await.unwrap().unwrap();
    assert_eq!((id, m.rel.as_str(), m.n_jobs), (second, "x/s.yaml", 0));
    let all: Vec<_> = store
        .manifests()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(all, [first, second]);
}

#[tokio::test]
async fn counts_and_in_doubt_total() {
    let (_dir, store) = open_tmp();
    let (m, ids) = register(
        &store,
        manifest("c.yaml"),
        (0..6).map(|i| job(i, "c")).collect(),
    )
    .await;
    put_in_state(&store, ids[0], "done").await;
    put_in_state(&store, ids[1], "failed").await;
    put_in_state(&store, ids[2], "in-doubt").await;
    put_in_state(&store, ids[3], "submitting").await;
    store.requeue(ids[3], true).await.unwrap();
    put_in_state(&store, ids[4], "downloading").await;
    let counts = store.counts();
    let c = counts
        .active
        .iter()
        .find(|(id, _)| *id == m)
        .map(|(_, c)| *c)
        .expect("counted");
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
    assert_eq!(store.counts_of_active(m), Some(c));
    assert_eq!(store.counts().totals.in_doubt_events, 2);
    // The same counts after a restart, from the stored records.
    let dir = _dir;
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.counts_of_active(m), Some(c));
    // An ended run keeps its counts in its record; the totals do not change.
    let totals = store.counts().totals;
    let ended = store.end_run(m, RunEnd::Finished, false).await.unwrap();
    assert_eq!(ended, c);
    assert_eq!(store.counts_of_active(m), None);
    assert_eq!(store.counts().totals, totals);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.counts().totals, totals);
}

#[tokio::test]
async fn polls_and_request_ids_are_recorded_keeping_the_last_eight() {
    let (_dir, store) = open_tmp();
    let id = one_job(&store, "k").await;
    put_in_state(&store, id, "submitted").await;
    for i in 0..10 {
        store.record_poll(id, Some(&format!("p{i}"))).await.unwrap();
    }
    store.record_poll(id, None).await.unwrap();
    store.record_request_id(id, "last").await.unwrap();
    let job = get(&store, id).await;
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

#[tokio::test]
async fn registers_and_lists_100k_jobs() {
    let (_dir, store) = open_tmp();
    let n = 100_000;
    let jobs = (0..n).map(|i| job(i, &format!("key-{i}"))).collect();
    let (m, ids) = register(&store, manifest("big.yaml"), jobs).await;
    assert_eq!(ids.len(), n as usize);
    let unfinished = store.unfinished().await.unwrap();
    assert_eq!(unfinished.len(), n as usize);
    assert!(unfinished.iter().map(|(id, _)| id).eq(ids.iter()));
    let all = jobs_of_manifest(&store, m).await;
    assert!(all.iter().enumerate().all(|(i, (_, j))| j.idx == i as u32));
    assert_eq!(store.counts_of_active(m).unwrap().queued, u64::from(n));
    assert_eq!(store.manifest(m).await.unwrap().unwrap().n_jobs, n);
}

/// A durability point returns only after a flush that started after its write, and the writes
/// of many concurrent callers are all on disk afterwards (they share flushes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_points_return_after_a_flush_that_covers_their_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let (_, ids) = register(
        &store,
        manifest("m.yaml"),
        (0..200).map(|i| job(i, &format!("k{i}"))).collect(),
    )
    .await;

    let before = store.flushes();
    let first = ids[0];
    let job = store.mark_submitting(first).await.expect("durable");
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
            store.mark_submitting(id).await.expect("durable");
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
        let job = get(&store, id).await;
        assert_eq!(job.state.kind(), "submitting", "job {id} after reopen");
        assert_eq!(job.attempts, 1);
    }
}

/// A write that fails at a durability point is returned as is, and nothing waits for a flush.
#[tokio::test]
async fn a_failed_write_is_returned_without_a_flush() {
    let (_dir, store) = open_tmp();
    let before = store.flushes();
    let err = store.mark_submitting(424242).await.unwrap_err();
    assert!(matches!(err, StoreError::JobNotFound(424242)), "{err:?}");
    assert_eq!(store.flushes(), before);
}

/// Two runs active at the same time may not write the same output or report; an ended run's
/// outputs are free again.
#[tokio::test]
async fn reservations_refuse_a_second_writer_until_the_first_run_ends() {
    let (_dir, store) = open_tmp();
    let mut a = job(0, "a");
    a.output_rel = "s/x.jpg".into();
    let run = |rel: &str, extra: &[&str]| NewRun {
        record: manifest(rel),
        extra_paths: extra.iter().map(|p| (*p).to_owned()).collect(),
    };
    let first = match store
        .register_run(
            run("s.yaml", &["s.report.json"]),
            vec![a].into_iter(),
            |_, _| None,
        )
        .await
        .unwrap()
    {
        Registered::Run { id, .. } => id,
        other => panic!("{other:?}"),
    };
    // Same report path (`s.json` beside `s.yaml`).
    let mut b = job(0, "b");
    b.output_rel = "s/y.jpg".into();
    match store
        .register_run(
            run("s.json", &["s.report.json"]),
            vec![b].into_iter(),
            |_, _| None,
        )
        .await
        .unwrap()
    {
        Registered::Conflict {
            path,
            wanted,
            owner,
            owner_rel,
        } => {
            assert_eq!(path, "s.report.json");
            assert_eq!(wanted, "s.report.json");
            assert_eq!(owner, first);
            assert_eq!(owner_rel.as_deref(), Some("s.yaml"));
        }
        other => panic!("{other:?}"),
    }
    // Same output, and a file where another needs a folder (and the other way round): the
    // conflict names the other run's path and the one this run would write.
    for (output, theirs) in [
        ("s/x.jpg", "s/x.jpg"),
        ("s/x.jpg/inner.jpg", "s/x.jpg"),
        ("s", "s/x.jpg"),
    ] {
        let mut c = job(0, "c");
        c.output_rel = output.into();
        let res = store
            .register_run(run("t.yaml", &[]), vec![c].into_iter(), |_, _| None)
            .await
            .unwrap();
        assert!(
            matches!(&res, Registered::Conflict { owner, path, wanted, .. }
                if *owner == first && path == theirs && wanted == output),
            "{output}: {res:?}"
        );
    }
    // A refused registration leaves nothing behind.
    assert!(store.latest_run("t.yaml").await.unwrap().is_none());
    assert_eq!(store.counts().active.len(), 1);
    store.end_run(first, RunEnd::Finished, false).await.unwrap();
    let mut d = job(0, "d");
    d.output_rel = "s/x.jpg".into();
    let res = store
        .register_run(
            run("t.yaml", &["s.report.json"]),
            vec![d].into_iter(),
            |_, _| None,
        )
        .await
        .unwrap();
    assert!(matches!(res, Registered::Run { .. }), "{res:?}");
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

/// A superseded run ends with jobs held in doubt, which stay unfinished. At the next open the
/// list the counting pass collects is what `unfinished()` returns: those jobs too, each once,
/// with the running run's jobs after them, in id order.
#[tokio::test]
async fn the_open_time_unfinished_list_has_jobs_of_ended_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let (held, running) = {
        let store = Store::open(dir.path()).unwrap();
        let (old, old_jobs) = register(
            &store,
            manifest("old.yaml"),
            vec![job(0, "h"), job(1, "i"), job(2, "d")],
        )
        .await;
        put_in_state(&store, old_jobs[0], "in-doubt").await;
        put_in_state(&store, old_jobs[1], "in-doubt").await;
        put_in_state(&store, old_jobs[2], "done").await;
        store.end_run(old, RunEnd::Superseded, false).await.unwrap();
        let (_, new_jobs) = register(
            &store,
            manifest("new.yaml"),
            (0..10).map(|i| job(i, "n")).collect(),
        )
        .await;
        put_in_state(&store, new_jobs[1], "submitted").await;
        put_in_state(&store, new_jobs[2], "done").await;
        (old_jobs[..2].to_vec(), new_jobs)
    };
    let (store, opened) = Store::open_for_resume(dir.path()).unwrap();
    let ids: Vec<JobId> = opened.iter().map(|(id, _)| *id).collect();
    let mut expected = held.clone();
    expected.extend(
        running
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, id)| *id),
    );
    assert_eq!(ids, expected, "each unfinished job once, in id order");
    let scanned = unfinished_ids(&store).await;
    assert_eq!(ids, scanned);
}

/// A registration refused halfway (a conflict) leaves the key of an output it would have
/// taken over as unchanged to the job that made the file.
#[tokio::test]
async fn a_refused_registration_leaves_done_by_key_to_the_job_that_made_the_file() {
    let (_dir, store) = open_tmp();
    let made = one_job(&store, "k").await;
    put_in_state(&store, made, "done").await;
    // A running run holds `taken/x.jpg`.
    let mut holder = job(0, "holder");
    holder.output_rel = "taken/x.jpg".into();
    register(&store, manifest("taken.yaml"), vec![holder]).await;
    // A run whose first row is unchanged (same key) and whose second collides.
    let mut collides = job(1, "other");
    collides.output_rel = "taken/x.jpg".into();
    let run = NewRun {
        record: manifest("again.yaml"),
        extra_paths: Vec::new(),
    };
    let res = store
        .register_run(run, vec![job(0, "k"), collides].into_iter(), |_, done| {
            Some(done.clone())
        })
        .await
        .unwrap();
    assert!(matches!(res, Registered::Conflict { .. }), "{res:?}");
    let (owner, _) = store.done_by_key("k").await.unwrap().expect("still known");
    assert_eq!(owner, made);
}

/// A step whose caller goes away once the step is queued (a dropped HTTP request, a timeout)
/// still moves the counts with the write: `/status`, `/metrics` and the counts an ended run
/// keeps in its record never fall behind what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_caller_goes_away_still_moves_the_counts_with_the_write() {
    let (_dir, store) = open_tmp();
    let (m, ids) = register(&store, manifest("gone.yaml"), vec![job(0, "gone")]).await;
    // Polled once (the step is queued on the store's thread), then dropped.
    let _ = tokio::time::timeout(Duration::ZERO, store.mark_submitting(ids[0])).await;
    crate::support::wait_until_async("the stored step", Duration::from_secs(30), || async {
        matches!(
            store.job(ids[0]).await,
            Ok(Some(JobV1 {
                state: JobState::Submitting { .. },
                ..
            }))
        )
    })
    .await;
    let c = store.counts_of_active(m).expect("counted");
    assert_eq!((c.queued, c.submitting), (0, 1), "{c:?}");
}

/// A run an older version registered (its jobs listed one by one in `jobs_by_manifest`, every
/// reservation also in `reserved_by_manifest`) is still read whole and released at its end:
/// the store changed how it lists jobs and reservations, not what it can read.
#[tokio::test]
async fn a_run_registered_by_an_older_version_is_listed_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = vec![job(0, "old-a"), job(1, "old-b"), job(2, "old-c")];
    let outputs: Vec<String> = jobs.iter().map(|j| j.output_rel.clone()).collect();
    let (m, ids) = {
        let store = Store::open(dir.path()).unwrap();
        register(&store, manifest("old.yaml"), jobs).await
    };
    {
        // The older layout: no ranges, one index entry per job and per reservation.
        let db = open_raw(&dir.path().join("v1"));
        db.open_tree("job_ranges").unwrap().clear().unwrap();
        let index = db.open_tree("jobs_by_manifest").unwrap();
        for id in &ids {
            let mut key = m.to_be_bytes().to_vec();
            key.extend_from_slice(&id.to_be_bytes());
            index.insert(key, &[]).unwrap();
        }
        let reserved_index = db.open_tree("reserved_by_manifest").unwrap();
        for output in &outputs {
            let mut key = m.to_be_bytes().to_vec();
            key.extend_from_slice(output.as_bytes());
            reserved_index.insert(key, &[]).unwrap();
        }
        db.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let listed: Vec<JobId> = jobs_of_manifest(&store, m)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, ids);
    for output in &outputs {
        assert_eq!(reserved(&store, output).await, Some(m), "{output}");
    }
    store.end_run(m, RunEnd::Finished, false).await.unwrap();
    for output in &outputs {
        assert_eq!(reserved(&store, output).await, None, "{output} released");
    }
}

/// A run's jobs are found through its ranges of ids and its outputs through its jobs: it lists
/// them in order, and its end releases every output it reserved (and its reports).
#[tokio::test]
async fn a_run_is_listed_through_its_ranges_and_released_through_its_jobs() {
    let (_dir, store) = open_tmp();
    let jobs: Vec<JobV1> = (0..600).map(|i| job(i, &format!("r-{i}"))).collect();
    let outputs: Vec<String> = jobs.iter().map(|j| j.output_rel.clone()).collect();
    let run = NewRun {
        record: manifest("ranges.yaml"),
        extra_paths: vec!["ranges.report.json".to_owned()],
    };
    let (m, ids) = match store
        .register_run(run, jobs.into_iter(), |_, _| None)
        .await
        .unwrap()
    {
        Registered::Run { id, queued, .. } => (id, queued),
        other => panic!("{other:?}"),
    };
    let listed: Vec<JobId> = jobs_of_manifest(&store, m)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(reserved(&store, "ranges.report.json").await, Some(m));
    assert_eq!(reserved(&store, &outputs[599]).await, Some(m));
    store.end_run(m, RunEnd::Finished, false).await.unwrap();
    assert_eq!(reserved(&store, "ranges.report.json").await, None);
    for output in &outputs {
        assert_eq!(reserved(&store, output).await, None, "{output} released");
    }
}

/// The run `path` is reserved for, read through the store.
async fn reserved(store: &Store, path: &str) -> Option<u64> {
    let path = path.to_owned();
    store
        .read(move |r| r.reserved_by(&path))
        .await
        .expect("reserved_by")
}

/// The store's sled database opened raw, to write what an older version left: a store dropped
/// a moment before may still hold sled's file lock while its IO threads finish (as
/// `Store::open` does, the lock is tried again for up to 2 s).
fn open_raw(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(err)
                if std::time::Instant::now() < deadline
                    && format!("{err:?}").contains("WouldBlock") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(err) => panic!("open {}: {err:?}", path.display()),
        }
    }
}

/// `status` lists every active run and the finished ones among the newest 50 records, and says
/// when it leaves a finished run out, also when the record just past the 50 is an active run
/// (held in doubt for days, say) and the finished one lies beyond it: only the 51st was looked
/// at, and the older run was left out without a word.
#[tokio::test]
async fn status_says_it_leaves_out_a_finished_run_that_lies_beyond_an_active_one() {
    let (_dir, store) = open_tmp();
    let (oldest, _) = register(&store, manifest("oldest.yaml"), vec![job(0, "k-oldest")]).await;
    store
        .end_run(oldest, RunEnd::Finished, false)
        .await
        .unwrap();
    let (held, _) = register(&store, manifest("held.yaml"), vec![job(0, "k-held")]).await;
    let view = claid_hotfolder::admin::status_view(&store, None)
        .await
        .unwrap();
    assert!(!view.older_runs_not_listed, "2 runs: all listed");
    for i in 0..50 {
        let (id, _) = register(
            &store,
            manifest(&format!("r{i}.yaml")),
            vec![job(0, &format!("k-r{i}"))],
        )
        .await;
        store.end_run(id, RunEnd::Finished, false).await.unwrap();
    }
    let view = claid_hotfolder::admin::status_view(&store, None)
        .await
        .unwrap();
    assert!(view.older_runs_not_listed, "the oldest run is left out");
    let ids: Vec<u64> = view.manifests.iter().map(|m| m.id).collect();
    assert!(ids.contains(&held), "every active run is listed: {ids:?}");
    assert!(!ids.contains(&oldest), "{ids:?}");
    assert_eq!(
        ids.len(),
        51,
        "the active run and the 50 newest finished: {ids:?}"
    );
}

/// A result whose write into the outbox failed is kept on the failed job, and a replay within
/// its day downloads it again (same task, same URL, the first time kept) instead of queueing
/// a new submit; a failed download keeps nothing, and a kept result past its day is sent
/// again.
#[tokio::test]
async fn a_result_whose_write_failed_is_kept_for_a_replay_within_its_day() {
    let (_dir, store) = open_tmp();
    // Claid made the result after its submit (an hour ago): its day counts from no sooner.
    let since = claid_hotfolder::store::now_ms() - 3_600_000;
    let mut at_claid = job(0, "k");
    at_claid.state = JobState::Submitted {
        task_id: 7,
        result_url: "http://x/7".to_owned(),
        at_ms: since,
    };
    let (run, _) = register(&store, manifest("m.yaml"), vec![at_claid]).await;
    let (id, _) = jobs_of_manifest(&store, run).await[0];
    store
        .mark_downloading(id, Some(7), "http://x/t.webp", 32, 32)
        .await
        .expect("downloading");
    store
        .mark_failed(id, FailureCode::OutputReadOnly, "EROFS")
        .await
        .expect("failed");
    let failed = get(&store, id).await.state;
    let JobState::Failed {
        unwritten: Some(kept),
        ..
    } = &failed
    else {
        panic!("no result kept: {failed:?}");
    };
    assert_eq!(
        (kept.url.as_str(), kept.width, kept.height, kept.at_ms),
        ("http://x/t.webp", 32, 32, since)
    );
    let now = claid_hotfolder::store::now_ms();
    assert!(failed.billed() && !failed.billed_again_by_replay(now));
    let replayed = store.requeue_replayable(id).await.expect("replayed");
    assert_eq!(
        replayed.state,
        JobState::Downloading {
            task_id: Some(7),
            url: "http://x/t.webp".to_owned(),
            width: 32,
            height: 32,
            copy_of: None,
            kept_since_ms: Some(since),
            submitted_at_ms: None,
        }
    );
    // Failing its write again keeps it from the first time: Claid's day counts from there.
    store
        .mark_failed(id, FailureCode::DiskFull, "ENOSPC")
        .await
        .expect("failed again");
    assert!(matches!(
        get(&store, id).await.state,
        JobState::Failed { unwritten: Some(UnwrittenResult { at_ms, .. }), .. } if at_ms == since
    ));
    // Past its day: sent again, and said to be billed again.
    let day = claid_hotfolder::store::UNWRITTEN_RESULT_KEPT.as_millis() as u64;
    let old = JobState::Failed {
        code: FailureCode::OutputReadOnly,
        message: String::new(),
        attempts: 1,
        task_id: None,
        unwritten: Some(UnwrittenResult {
            url: "http://x/t.webp".to_owned(),
            width: 32,
            height: 32,
            at_ms: now - day,
            sha256: None,
        }),
    };
    assert!(old.refetchable(now).is_none() && old.billed_again_by_replay(now));
    assert!(old.refetchable(now - 1).is_some());
    // A storage output's object whose local copy could not be written stays in the bucket:
    // past the day, it is still copied again, not made again.
    let object = JobState::Failed {
        code: FailureCode::OutputReadOnly,
        message: String::new(),
        attempts: 1,
        task_id: Some(7),
        unwritten: Some(UnwrittenResult {
            url: "storage://catalog-s3/out/a.png".to_owned(),
            width: 32,
            height: 32,
            at_ms: now - 2 * day,
            sha256: None,
        }),
    };
    assert!(object.refetchable(now).is_some() && !object.billed_again_by_replay(now));
    let mut expired = job(1, "k-old");
    expired.state = old;
    expired.batch = Some(5);
    expired.batch_images = Some(2);
    let (run, _) = register(&store, manifest("old.yaml"), vec![expired]).await;
    let (expired_id, _) = jobs_of_manifest(&store, run).await[0];
    let replayed = store
        .requeue_replayable(expired_id)
        .await
        .expect("replayed");
    assert_eq!(
        (replayed.state, replayed.batch, replayed.batch_images),
        (JobState::Queued, None, None),
        "sent again, alone or in a new batch"
    );
    // A download that failed keeps nothing: the replay submits again.
    let other = one_job(&store, "k2").await;
    put_in_state(&store, other, "downloading").await;
    store
        .mark_failed(other, FailureCode::ResultExpired, "410")
        .await
        .expect("failed");
    assert!(matches!(
        get(&store, other).await.state,
        JobState::Failed {
            unwritten: None,
            ..
        }
    ));
    let replayed = store.requeue_replayable(other).await.expect("replayed");
    assert_eq!(replayed.state, JobState::Queued);
}

/// A manifest row's local input gone from the inbox refuses a replay that would submit it,
/// not one that fetches its kept result again (which needs no input).
#[test]
fn a_kept_result_is_replayed_though_its_local_input_is_gone() {
    let inbox = tempfile::tempdir().expect("inbox");
    let mut row = job(0, "local");
    row.local = true;
    row.input = "gone.png".to_owned();
    let failed = |unwritten| JobState::Failed {
        code: FailureCode::OutputReadOnly,
        message: String::new(),
        attempts: 1,
        task_id: None,
        unwritten,
    };
    row.state = failed(None);
    let why = claid_hotfolder::pipeline::local_input_gone(inbox.path(), 1, &row);
    assert!(why.is_some_and(|why| why.contains("no longer in the inbox")));
    row.state = failed(Some(UnwrittenResult {
        url: "http://x/t.webp".to_owned(),
        width: 32,
        height: 32,
        at_ms: claid_hotfolder::store::now_ms(),
        sha256: None,
    }));
    assert_eq!(
        claid_hotfolder::pipeline::local_input_gone(inbox.path(), 1, &row),
        None
    );
}

/// A run whose file was saved again (draining) is not replayed: its newer version makes its
/// images, and a job requeued into it would be cancelled or left hanging. The refusal says so.
#[tokio::test]
async fn a_draining_run_is_not_replayed_and_says_why() {
    let (_dir, store) = open_tmp();
    let id = one_job(&store, "k").await;
    put_in_state(&store, id, "failed").await;
    let run = get(&store, id).await.manifest;
    store.mark_draining(run).await.expect("draining");
    let folders = tempfile::tempdir().expect("folders");
    let (replayed, runs) = claid_hotfolder::pipeline::requeue_for_replay(
        &store,
        (folders.path(), folders.path()),
        vec![id],
    )
    .await
    .expect("replay");
    assert_eq!(replayed.requeued, 0);
    assert!(runs.is_empty());
    assert!(
        replayed
            .refused
            .iter()
            .any(|why| why.contains("a newer version of it was saved")),
        "{:?}",
        replayed.refused
    );
    assert_eq!(get(&store, id).await.state.kind(), "failed");
}
