//! Spool → blob store, crash recovery, and the conformance suites of the
//! index and blob store backends, on real files and a real SQLite database
//! in a temp directory.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use media::wav::WavFormat;
use model::{NodeId, Participant, RecordingId, RecordingMeta, RecordingState, SourceKind};
use store::{conformance, sha256_file, Archive, BlobKey, DataDir, LocalBlobs, RecordingIndex, SqliteIndex};
use time::OffsetDateTime;

fn tempdir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("cv-store-{name}-{}", fastrand::u64(..)));
    fs::create_dir_all(&p).unwrap();
    p
}

fn meta(started: OffsetDateTime, caller: &str) -> RecordingMeta {
    let mut m = RecordingMeta::start(
        RecordingId::new(started),
        NodeId("n1".into()),
        SourceKind::Siprec,
        started,
        "udp:127.0.0.1:5070".into(),
        "INVITE accepted",
    );
    m.direction = Some("inbound".into());
    m.caller = Some(caller.into());
    m.callee = Some("+15550199".into());
    m.call_ids = vec!["c1".into()];
    m.participants =
        vec![Participant { name: Some("Alice Agent".into()), number: Some(caller.into()), ..Default::default() }];
    m
}

fn write_spool_wav(dir: &DataDir, id: RecordingId, frames: usize, torn: bool) {
    let fmt = WavFormat { sample_rate: 8000, channels: 2 };
    let mut f = fs::File::create(dir.spool_wav(id)).unwrap();
    f.write_all(&fmt.header(0)).unwrap();
    for i in 0..frames {
        f.write_all(&(i as i16).to_le_bytes()).unwrap();
        f.write_all(&(-(i as i16)).to_le_bytes()).unwrap();
    }
    if torn {
        f.write_all(&[1, 2, 3]).unwrap();
    }
}

#[test]
fn finished_recording_moves_to_archive_with_checksum() {
    let root = tempdir("fin");
    let dir = DataDir::open(&root).unwrap();
    let archive = Archive::local(dir.clone());
    let t = OffsetDateTime::from_unix_timestamp(1_763_000_000).unwrap();
    let mut m = meta(t, "+15550100");
    archive.save_spool(&m).unwrap();
    write_spool_wav(&dir, m.id, 8000, false);
    m.transition(RecordingState::Completed, t + time::Duration::seconds(1), "BYE");
    archive.finalize(&mut m).unwrap();
    archive.forget_spool(m.id).unwrap();

    let audio = m.audio.clone().unwrap();
    assert_eq!((audio.channels, audio.sample_rate, audio.duration_ms), (2, 8000, 1000));
    assert!(audio.path.starts_with("recordings/2025/11/13/"), "{}", audio.path);
    assert_eq!(BlobKey::parse(&audio.path), Some(BlobKey::audio(t, m.id)));
    let wav = root.join(&audio.path);
    assert_eq!(sha256_file(&wav).unwrap().0, audio.sha256.unwrap());
    let reader = hound::WavReader::open(&wav).unwrap();
    assert_eq!(reader.duration(), 8000);
    assert!(!dir.spool_wav(m.id).exists() && !dir.spool_json(m.id).exists());
    let json = archive.load(m.started_at, m.id).unwrap();
    assert_eq!(json.state, RecordingState::Completed);
    // Finalizing again (a crash between steps) changes nothing.
    let mut again = m.clone();
    archive.finalize(&mut again).unwrap();
    assert_eq!(again.audio, m.audio);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn recovery_interrupts_active_recordings_and_keeps_audio() {
    let root = tempdir("rec");
    let dir = DataDir::open(&root).unwrap();
    let archive = Archive::local(dir.clone());
    let t = OffsetDateTime::now_utc();
    let m = meta(t, "+15550100");
    archive.save_spool(&m).unwrap();
    write_spool_wav(&dir, m.id, 4000, true);
    // Audio whose JSON never made it, and a leftover temp file.
    let orphan = RecordingId::new(t);
    write_spool_wav(&dir, orphan, 800, false);
    fs::write(dir.spool_dir().join(".x.json.tmp-1234"), b"half").unwrap();

    let found = archive.recover(&NodeId("n1".into()), t).unwrap();
    assert_eq!(found.len(), 2);
    for mut r in found {
        assert_eq!(r.state, RecordingState::Interrupted);
        archive.finalize(&mut r).unwrap();
        archive.forget_spool(r.id).unwrap();
        if r.id == m.id {
            assert_eq!(r.audio.as_ref().unwrap().duration_ms, 500);
            assert_eq!(r.caller.as_deref(), Some("+15550100"));
        } else {
            assert_eq!(r.audio.as_ref().unwrap().duration_ms, 100);
            assert!(r.state_history[0].reason.contains("metadata lost"));
        }
    }
    assert_eq!(fs::read_dir(dir.spool_dir()).unwrap().count(), 0, "spool emptied, temp removed");
    fs::remove_dir_all(root).unwrap();
}

#[tokio::test]
async fn sqlite_index_passes_the_conformance_suite_and_survives_reopening() {
    let root = tempdir("db");
    let dir = DataDir::open(&root).unwrap();
    let db = SqliteIndex::open(&dir.db_path()).await.unwrap();
    conformance::recording_index(&db).await;
    let kept = db.list(&Default::default()).await.unwrap();
    db.close().await;
    // Reopening runs migrations idempotently and keeps data.
    let db = SqliteIndex::open(&dir.db_path()).await.unwrap();
    assert_eq!(db.list(&Default::default()).await.unwrap(), kept);
    db.close().await;
    fs::remove_dir_all(root).unwrap();
}

#[tokio::test]
async fn sqlite_access_store_passes_the_conformance_suite_and_refuses_edits() {
    let root = tempdir("access");
    let dir = DataDir::open(&root).unwrap();
    let db = SqliteIndex::open(&dir.db_path()).await.unwrap();
    conformance::access_store(&db).await;
    // The application cannot rewrite history.
    let err = sqlx::query("UPDATE audit SET actor = 'mallory' WHERE seq = 1").execute(db.pool()).await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(sqlx::query("DELETE FROM audit").execute(db.pool()).await.is_err());
    db.close().await;
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn local_blob_store_passes_the_conformance_suite() {
    let root = tempdir("blobs");
    let scratch = tempdir("blobs-scratch");
    conformance::blob_store(&LocalBlobs::new(&root), &scratch);
    fs::remove_dir_all(root).unwrap();
    fs::remove_dir_all(scratch).unwrap();
}

/// The copies of a call read from columns are what the whole metadata
/// says (search lists them for every result).
#[tokio::test]
async fn call_copies_match_the_recordings_of_the_same_call() {
    use store::{CallCopy, ClusterIndex};
    let root = tempdir("copies");
    let dir = DataDir::open(&root).unwrap();
    let db = SqliteIndex::open(&dir.db_path()).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let mut a = meta(now, "+15550100");
    a.call_key = Some("sess-1".into());
    a.state = RecordingState::Completed;
    a.duration_ms = 61_000;
    let mut b = meta(now + time::Duration::milliseconds(5), "+15550100");
    b.call_key = Some("sess-1".into());
    b.node_id = NodeId("n2".into());
    b.state = RecordingState::Interrupted;
    b.duration_ms = 12_000;
    let other = meta(now, "+15550101");
    for m in [&a, &b, &other] {
        db.upsert(m).await.unwrap();
    }
    let copies = db.call_copies("sess-1").await.unwrap();
    let expected: Vec<CallCopy> = db.same_call("sess-1").await.unwrap().iter().map(CallCopy::of).collect();
    assert_eq!(copies, expected);
    assert_eq!(copies.len(), 2);
    assert_eq!(
        (copies[1].node.0.as_str(), copies[1].state, copies[1].duration_ms),
        ("n2", RecordingState::Interrupted, 12_000)
    );
    assert!(db.call_copies("nobody").await.unwrap().is_empty());
    db.close().await;
    fs::remove_dir_all(root).unwrap();
}
