//! Spool → archive, crash recovery and the index, on real files and a real
//! SQLite database in a temp directory.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use media::wav::WavFormat;
use model::{NodeId, Participant, RecordingId, RecordingMeta, RecordingState, SourceKind};
use store::{sha256_file, Archive, DataDir, ListQuery, MetaDb};
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
    let archive = Archive::new(dir.clone());
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
    let wav = dir.resolve(audio.path.as_ref());
    assert_eq!(sha256_file(&wav).unwrap().0, audio.sha256.unwrap());
    let reader = hound::WavReader::open(&wav).unwrap();
    assert_eq!(reader.duration(), 8000);
    assert!(!dir.spool_wav(m.id).exists() && !dir.spool_json(m.id).exists());
    let json = archive.load(&PathBuf::from(audio.path.replace(".wav", ".json"))).unwrap();
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
    let archive = Archive::new(dir.clone());
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
async fn index_upserts_lists_and_never_reactivates() {
    let root = tempdir("db");
    let dir = DataDir::open(&root).unwrap();
    let db = MetaDb::open(&dir.db_path()).await.unwrap();
    let t = OffsetDateTime::from_unix_timestamp(1_763_000_000).unwrap();
    let mut a = meta(t, "+15550100");
    let b = meta(t + time::Duration::minutes(5), "+4420799");
    db.upsert(&a).await.unwrap();
    db.upsert(&b).await.unwrap();
    assert_eq!(db.active_ids().await.unwrap().len(), 2);

    let stale = a.clone();
    a.transition(RecordingState::Completed, t + time::Duration::seconds(30), "BYE");
    a.duration_ms = 30_000;
    db.upsert(&a).await.unwrap();
    db.upsert(&stale).await.unwrap(); // late active snapshot
    let got = db.get(a.id).await.unwrap().unwrap();
    assert_eq!(got.state, RecordingState::Completed);
    assert_eq!(got.duration_ms, 30_000);

    let all = db.list(&ListQuery::default()).await.unwrap();
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), vec![b.id, a.id], "newest first");
    let q = ListQuery { state: Some(RecordingState::Completed), ..Default::default() };
    assert_eq!(db.list(&q).await.unwrap().len(), 1);
    let q = ListQuery { party: Some("4420".into()), ..Default::default() };
    assert_eq!(db.list(&q).await.unwrap()[0].id, b.id);
    let q = ListQuery { party: Some("alice agent".into()), ..Default::default() };
    assert_eq!(db.list(&q).await.unwrap().len(), 2, "names match case-insensitively");
    let q = ListQuery { since: Some(t + time::Duration::minutes(1)), ..Default::default() };
    assert_eq!(db.list(&q).await.unwrap().len(), 1);
    assert_eq!(db.count_by_state().await.unwrap(), vec![("active".to_owned(), 1), ("completed".to_owned(), 1)]);
    db.close().await;

    // Reopening runs migrations idempotently and keeps data.
    let db = MetaDb::open(&dir.db_path()).await.unwrap();
    assert!(db.get(b.id).await.unwrap().is_some());
    db.close().await;
    fs::remove_dir_all(root).unwrap();
}
