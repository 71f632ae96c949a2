//! The conformance suites: what every backend of [`RecordingIndex`] and
//! [`BlobStore`] must do. Each backend's tests call these with a fresh,
//! empty instance (SQLite and the local directory in `tests/store.rs`;
//! PostgreSQL and S3 run the same functions when they arrive). A failed
//! expectation panics with what differed.

use std::path::Path;

use model::{NodeId, Participant, RecordingId, RecordingMeta, RecordingState, SourceKind};
use time::OffsetDateTime;

use crate::access::{AccessStore, AuditQuery, SessionRow};
use crate::blob::{BlobError, BlobKey, BlobPut, BlobStore};
use crate::index::{ListQuery, RecordingIndex};

fn meta(started: OffsetDateTime, caller: &str, name: &str) -> RecordingMeta {
    let mut m = RecordingMeta::start(
        RecordingId::new(started),
        NodeId("conformance".into()),
        SourceKind::Siprec,
        started,
        "udp:127.0.0.1:5070".into(),
        "INVITE accepted",
    );
    m.caller = Some(caller.into());
    m.callee = Some("+15550199".into());
    m.call_ids = vec![format!("call-{caller}")];
    m.participants = vec![Participant { name: Some(name.into()), number: Some(caller.into()), ..Default::default() }];
    m
}

/// Every [`RecordingIndex`] backend: upserts, the never-reactivate rule,
/// filters, order, paging, counts.
pub async fn recording_index(idx: &dyn RecordingIndex) {
    idx.ping().await.expect("ping");
    let t = OffsetDateTime::from_unix_timestamp(1_763_000_000).unwrap();
    let mut a = meta(t, "+15550100", "Alice Agent");
    let b = meta(t + time::Duration::minutes(5), "+4420799", "Bob Broker");
    let c = meta(t + time::Duration::minutes(9), "+3312345", "Alice Other");
    idx.upsert_many(&[&a, &b]).await.expect("upsert_many");
    idx.upsert(&c).await.expect("upsert");
    let mut active = idx.active_ids().await.unwrap();
    active.sort();
    let mut want = vec![a.id, b.id, c.id];
    want.sort();
    assert_eq!(active, want, "all three active");

    // A final state is never overwritten by an older active snapshot.
    let stale = a.clone();
    a.transition(RecordingState::Completed, t + time::Duration::seconds(30), "BYE");
    a.duration_ms = 30_000;
    idx.upsert(&a).await.unwrap();
    idx.upsert(&stale).await.unwrap();
    let got = idx.get(a.id).await.unwrap().expect("stored");
    assert_eq!(got, a, "the final metadata round-trips whole and stays final");
    assert!(idx.get(RecordingId::new(t)).await.unwrap().is_none(), "unknown id");

    let all = idx.list(&ListQuery::default()).await.unwrap();
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), vec![c.id, b.id, a.id], "newest first");
    let q = ListQuery { state: Some(RecordingState::Completed), ..Default::default() };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![a.id], "by state");
    let q = ListQuery { party: Some("4420".into()), ..Default::default() };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![b.id], "number substring");
    let q = ListQuery { party: Some("alice".into()), ..Default::default() };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![c.id, a.id], "names, case-insensitive");
    let q = ListQuery { party: Some("100%".into()), ..Default::default() };
    assert!(idx.list(&q).await.unwrap().is_empty(), "% is a character, not a wildcard");
    let q = ListQuery { party: Some("+44_0".into()), ..Default::default() };
    assert!(idx.list(&q).await.unwrap().is_empty(), "_ is a character, not a wildcard");
    let q = ListQuery {
        since: Some(t + time::Duration::minutes(1)),
        until: Some(t + time::Duration::minutes(6)),
        ..Default::default()
    };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![b.id], "time range, until exclusive");
    let q = ListQuery { limit: 1, offset: 1, ..Default::default() };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![b.id], "paging");

    // Keyset paging walks the same order without offsets, and the count
    // ignores the cursor.
    let first = idx.list(&ListQuery { limit: 2, ..Default::default() }).await.unwrap();
    let last = first.last().unwrap();
    let cursor = Some((last.started_at.unix_timestamp() * 1000, last.id.to_string()));
    let q = ListQuery { before: cursor, limit: 2, ..Default::default() };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![a.id], "the page after the cursor");
    assert_eq!(idx.count(&q, 100).await.unwrap(), 3, "count ignores the cursor");
    assert_eq!(idx.count(&q, 2).await.unwrap(), 2, "and stops at its cap");
    let q = ListQuery { identifier: Some("call-+4420799".into()), ..Default::default() };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![b.id], "by Call-ID");
    let q = ListQuery { identifier: Some("call-+4420".into()), ..Default::default() };
    assert!(idx.list(&q).await.unwrap().is_empty(), "identifiers match whole");
    let q = ListQuery { min_duration_ms: Some(10_000), ..Default::default() };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![a.id], "by duration");
    let q = ListQuery { scope: Some(vec!["+4420*".into(), "+15550100".into()]), ..Default::default() };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![b.id, a.id], "scope: prefix and exact");
    assert_eq!(idx.count(&q, 100).await.unwrap(), 2);
    let q = ListQuery { scope: Some(vec!["+1555".into()]), ..Default::default() };
    assert!(idx.list(&q).await.unwrap().is_empty(), "an exact pattern is not a prefix");
    let q = ListQuery { scope: Some(vec![]), ..Default::default() };
    assert_eq!(idx.count(&q, 100).await.unwrap(), 0, "an empty scope sees nothing");
    let q = ListQuery { scope: Some(vec!["+15550199".into()]), party: Some("bob".into()), ..Default::default() };
    assert_eq!(ids(&idx.list(&q).await.unwrap()), vec![b.id], "scope and filters combine");
    assert_eq!(
        idx.count_by_state().await.unwrap(),
        vec![("active".to_owned(), 2), ("completed".to_owned(), 1)],
        "counts by state"
    );
}

/// Every [`AccessStore`] backend: sessions and the audit chain.
pub async fn access_store(st: &dyn AccessStore) {
    let s = SessionRow {
        id_hash: "h1".into(),
        username: "alice".into(),
        csrf: "c1".into(),
        created_ms: 1_000,
        expires_ms: 5_000,
        client: "127.0.0.1".into(),
        revoked: false,
    };
    st.create_session(&s).await.unwrap();
    st.create_session(&SessionRow { id_hash: "h2".into(), expires_ms: 9_000, ..s.clone() }).await.unwrap();
    assert_eq!(st.session("h1").await.unwrap(), Some(s.clone()));
    assert!(st.session("nope").await.unwrap().is_none());
    assert!(st.revoke_session("h1").await.unwrap());
    assert!(!st.revoke_session("h1").await.unwrap(), "already revoked");
    assert!(st.session("h1").await.unwrap().unwrap().revoked);
    assert_eq!(st.revoke_sessions_of("alice").await.unwrap(), 1, "h2 only; h1 was");
    assert_eq!(st.purge_sessions(6_000).await.unwrap(), 1, "h1 expired");
    assert!(st.session("h2").await.unwrap().is_some());

    use model::access::{audit_verify, AuditAction, AuditEvent};
    let ev = |i: i64, actor: &str, action| AuditEvent {
        at_ms: 10_000 + i,
        actor: actor.into(),
        from: "127.0.0.1".into(),
        action,
        target: format!("target-{i}"),
        outcome: "ok".into(),
        detail: String::new(),
    };
    for i in 0..5 {
        let action = if i % 2 == 0 { AuditAction::Search } else { AuditAction::Play };
        let rec = st.audit_append(ev(i, if i < 3 { "alice" } else { "bob" }, action)).await.unwrap();
        assert_eq!(rec.seq, i + 1);
    }
    let all = st.audit_range(0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(audit_verify(None, &all).unwrap().unwrap().0, 5, "the stored chain verifies");
    let q = AuditQuery { actor: Some("alice".into()), ..Default::default() };
    let seqs = |l: Vec<model::access::AuditRecord>| l.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(st.audit_list(&q).await.unwrap()), vec![3, 2, 1], "by actor, newest first");
    let q = AuditQuery { action: Some(AuditAction::Play), ..Default::default() };
    assert_eq!(seqs(st.audit_list(&q).await.unwrap()), vec![4, 2], "by action");
    let q = AuditQuery { before_seq: Some(3), limit: 1, ..Default::default() };
    assert_eq!(seqs(st.audit_list(&q).await.unwrap()), vec![2], "keyset paging");
    let q = AuditQuery { target: Some("get-4".into()), ..Default::default() };
    assert_eq!(seqs(st.audit_list(&q).await.unwrap()), vec![5], "target substring");
    assert_eq!(seqs(st.audit_range(3, 10).await.unwrap()), vec![4, 5]);

    // Another node's trail, held here: stored once, read back in order.
    assert_eq!(st.audit_replica_head("node-x").await.unwrap(), None);
    st.audit_put_replica("node-x", &all[..3]).await.unwrap();
    st.audit_put_replica("node-x", &all[1..]).await.unwrap();
    assert_eq!(st.audit_replica_head("node-x").await.unwrap(), Some((5, all[4].hash.clone())));
    let copy = st.audit_replica_range("node-x", 0, 100).await.unwrap();
    assert_eq!(copy, all, "the copy is the chain");
    assert_eq!(st.audit_replica_nodes().await.unwrap(), vec!["node-x".to_owned()]);
    let q = AuditQuery { node: Some("node-x".into()), actor: Some("bob".into()), ..Default::default() };
    assert_eq!(seqs(st.audit_list(&q).await.unwrap()), vec![5, 4]);
}

fn ids(ms: &[RecordingMeta]) -> Vec<RecordingId> {
    ms.iter().map(|m| m.id).collect()
}

/// Every [`BlobStore`] backend: batch writes from bytes and from a file,
/// ranges, hashes, replacing, deleting and quarantining. `scratch` is an
/// empty directory on local disk for the source files.
pub fn blob_store(store: &dyn BlobStore, scratch: &Path) {
    let t = OffsetDateTime::from_unix_timestamp(1_763_000_000).unwrap();
    let id = RecordingId::new(t);
    let audio = BlobKey::audio(t, id);
    let json = BlobKey::meta(t, id);
    assert_eq!(audio.as_str(), format!("recordings/2025/11/13/{id}.wav"));
    assert!(BlobKey::parse("../etc/passwd").is_none() && BlobKey::parse("/abs").is_none());
    assert_eq!(BlobKey::parse(audio.as_str()), Some(audio.clone()));
    assert_eq!(store.len(&audio).unwrap(), None, "empty store");

    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let src = scratch.join("source.wav");
    std::fs::write(&src, &data).unwrap();
    let results = store.put_all(vec![
        BlobPut::MoveFile { key: audio.clone(), path: src.clone() },
        BlobPut::Bytes { key: json.clone(), data: b"{\"v\":1}".to_vec() },
    ]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(!src.exists(), "a moved file is the store's now");
    assert_eq!(store.len(&audio).unwrap(), Some(data.len() as u64));
    assert_eq!(store.read(&audio).unwrap(), data);
    assert_eq!(store.read_range(&audio, 1000, 1010).unwrap(), data[1000..1010]);
    assert_eq!(store.read_range(&audio, 0, 0).unwrap(), Vec::<u8>::new());
    assert!(matches!(store.read_range(&audio, 10, 200_001), Err(BlobError::Range { .. })));
    let (sha, len) = store.sha256(&audio).unwrap();
    assert_eq!(len, data.len() as u64);
    assert_eq!(sha, crate::blob::hex(&<sha2::Sha256 as sha2::Digest>::digest(&data)));

    // Writing a key again replaces it whole.
    let r = store.put_all(vec![BlobPut::Bytes { key: json.clone(), data: b"{\"v\":2}".to_vec() }]);
    assert!(r[0].is_ok());
    assert_eq!(store.read(&json).unwrap(), b"{\"v\":2}");

    // A quarantined blob is no longer served; deleting twice is fine.
    store.quarantine(&json).unwrap();
    assert_eq!(store.len(&json).unwrap(), None);
    assert!(matches!(store.read(&json), Err(BlobError::NotFound(_))));
    store.delete(&audio).unwrap();
    store.delete(&audio).unwrap();
    assert_eq!(store.len(&audio).unwrap(), None);
    assert!(matches!(store.sha256(&audio), Err(BlobError::NotFound(_))));

    // One failing entry of a batch does not fail the others.
    let missing = scratch.join("not-there.wav");
    let r = store.put_all(vec![
        BlobPut::MoveFile { key: audio.clone(), path: missing },
        BlobPut::Bytes { key: json.clone(), data: b"x".to_vec() },
    ]);
    assert!(r[0].is_err() && r[1].is_ok(), "{r:?}");
    assert_eq!(store.read(&json).unwrap(), b"x");
}
