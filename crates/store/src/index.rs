//! The metadata index: what makes recordings searchable.
//!
//! The index is built from the recordings' own metadata (the JSON blob
//! next to each audio file is the source of truth) and can be rebuilt from
//! it. It sits behind [`RecordingIndex`] so the embedded SQLite backend
//! ([`crate::SqliteIndex`]) and a PostgreSQL one for scale-out answer the
//! same calls and pass the same conformance suite
//! ([`crate::conformance::recording_index`]).

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use model::replica::{Bucket, Lane, Version};
use model::{RecordingId, RecordingMeta, RecordingState};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored metadata of {id} is unreadable: {source}")]
    Corrupt { id: String, source: serde_json::Error },
    #[error("a stored column is unreadable: {0}")]
    Column(String),
}

/// Filters for listing recordings (all optional).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: Option<RecordingState>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Matches caller, callee or any participant number/name/AOR (substring).
    pub party: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
    pub min_duration_ms: Option<u64>,
    pub max_duration_ms: Option<u64>,
    /// Source kind (`siprec`, `forked`, `plain`).
    pub source: Option<String>,
    /// The node that recorded it.
    pub node: Option<String>,
    /// Exact match on any identifier (Call-ID, SIPREC session id, x-refci,
    /// UCID ...): `RecordingMeta::identifiers`.
    pub identifier: Option<String>,
    /// Only recordings a party of which matches one of these patterns
    /// (`model::access::Scope`); `None`: every recording.
    pub scope: Option<Vec<String>>,
    /// Keyset cursor: only recordings strictly older than this
    /// (`started_at` in ms, id), in the list order.
    pub before: Option<(i64, String)>,
    pub limit: u32,
    pub offset: u32,
}

/// The recordings index. Every method is safe to call concurrently.
#[async_trait]
pub trait RecordingIndex: Send + Sync + fmt::Debug {
    /// Inserts or updates recordings in one transaction. A final state is
    /// never overwritten by an older `active` snapshot arriving late.
    async fn upsert_many(&self, metas: &[&RecordingMeta]) -> Result<(), IndexError>;
    async fn get(&self, id: RecordingId) -> Result<Option<RecordingMeta>, IndexError>;
    /// Recordings newest first.
    async fn list(&self, q: &ListQuery) -> Result<Vec<RecordingMeta>, IndexError>;
    /// How many recordings match `q` (ignoring its cursor, limit and
    /// offset), counting no further than `cap`: an exact count of a broad
    /// search over millions costs more than the search.
    async fn count(&self, q: &ListQuery, cap: u64) -> Result<u64, IndexError>;
    /// Ids of recordings the index believes are active.
    async fn active_ids(&self) -> Result<Vec<RecordingId>, IndexError>;
    /// Number of recordings per state, by state name.
    async fn count_by_state(&self) -> Result<Vec<(String, i64)>, IndexError>;
    /// Cheap liveness check for /health/ready.
    async fn ping(&self) -> Result<(), IndexError>;
    async fn close(&self);

    async fn upsert(&self, meta: &RecordingMeta) -> Result<(), IndexError> {
        self.upsert_many(&[meta]).await
    }
}

/// A row of the replication outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub target: String,
    pub lane: Lane,
    pub id: RecordingId,
    pub due_at_ms: i64,
    pub enqueued_at_ms: i64,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// The outbox of one target, summed up.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    pub target: String,
    pub depth: u64,
    pub meta_depth: u64,
    pub oldest_enqueued_ms: Option<i64>,
    /// Items that failed at least once and wait for their retry.
    pub failing: u64,
    pub last_error: Option<String>,
}

/// A deleted recording.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tombstone {
    pub id: RecordingId,
    pub started_at_ms: i64,
    pub deleted_at_ms: i64,
    /// Hybrid-clock stamp of the deletion.
    pub stamp: String,
    pub reason: String,
}

/// A cluster setting as stored (the value is JSON, the stamp sorts as text).
/// One recording of a call, on the node that made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CallCopy {
    pub id: RecordingId,
    pub node: model::NodeId,
    pub state: RecordingState,
    pub duration_ms: u64,
}

impl CallCopy {
    pub fn of(m: &RecordingMeta) -> CallCopy {
        CallCopy { id: m.id, node: m.node_id.clone(), state: m.state, duration_ms: m.duration_ms }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSetting {
    pub key: String,
    pub value: String,
    pub stamp: String,
}

/// What the cluster keeps in the index besides the recordings: replicas,
/// anti-entropy buckets, tombstones, the outbox, settings and peers.
#[async_trait]
pub trait ClusterIndex: RecordingIndex {
    /// Stores metadata that came from a peer; `audio_here` says whether
    /// this node now holds the recording's verified audio. A tombstoned
    /// recording is refused (`Ok(false)`); so is a final recording
    /// replaced by an active one.
    async fn put_replica(&self, meta: &RecordingMeta, audio_here: bool) -> Result<bool, IndexError> {
        Ok(self.put_replicas(&[(meta, audio_here)]).await?.pop().unwrap_or(false))
    }
    /// [`ClusterIndex::put_replica`] for a batch, in one transaction; one result each.
    async fn put_replicas(&self, items: &[(&RecordingMeta, bool)]) -> Result<Vec<bool>, IndexError>;
    /// Records whether this node holds the recording's verified audio (a
    /// copy that arrived, or one that failed its checksum and was set aside).
    async fn set_audio_here(&self, id: RecordingId, here: bool) -> Result<(), IndexError> {
        self.set_audio_here_many(&[id], here).await
    }
    /// [`ClusterIndex::set_audio_here`] for several recordings, in one transaction.
    async fn set_audio_here_many(&self, ids: &[RecordingId], here: bool) -> Result<(), IndexError>;
    /// Whether this node holds the audio (`None`: no such recording here).
    async fn audio_here(&self, id: RecordingId) -> Result<Option<bool>, IndexError>;
    /// Anti-entropy buckets by hour (non-empty ones).
    async fn buckets(&self) -> Result<BTreeMap<i64, Bucket>, IndexError>;
    /// The version of every final recording and tombstone of these hours.
    async fn versions(&self, hours: &[i64]) -> Result<BTreeMap<RecordingId, Version>, IndexError>;
    /// Deletes a recording for good: its row goes, the tombstone stays.
    /// Returns the metadata that was deleted, if it was here.
    async fn tombstone(&self, t: &Tombstone) -> Result<Option<RecordingMeta>, IndexError>;
    async fn tombstoned(&self, id: RecordingId) -> Result<Option<Tombstone>, IndexError>;
    /// Final recordings started before `ms` (oldest first): retention candidates.
    async fn started_before(&self, ms: i64, limit: u32) -> Result<Vec<RecordingMeta>, IndexError>;
    /// Tombstones of deletions before `ms` are forgotten (past the horizon).
    async fn forget_tombstones(&self, deleted_before_ms: i64) -> Result<u64, IndexError>;
    /// Final recordings whose audio is here, by id after `after` (paging for the scrub).
    async fn audio_held(&self, after: Option<RecordingId>, limit: u32) -> Result<Vec<RecordingMeta>, IndexError>;
    /// Recordings of the same call (same call key).
    async fn same_call(&self, call_key: &str) -> Result<Vec<RecordingMeta>, IndexError>;
    /// The copies of a call (what [`Self::same_call`] finds, without their
    /// whole metadata): every search result lists them.
    async fn call_copies(&self, call_key: &str) -> Result<Vec<CallCopy>, IndexError> {
        Ok(self.same_call(call_key).await?.iter().map(CallCopy::of).collect())
    }

    /// Indexes this node's finished recordings and queues them for every
    /// target on every lane, in one transaction: a recording indexed is a
    /// recording queued, whatever happens next.
    async fn upsert_and_enqueue(
        &self,
        metas: &[&RecordingMeta],
        targets: &[String],
        lanes: &[Lane],
        now_ms: i64,
    ) -> Result<(), IndexError>;
    /// Queues `ids` on every lane for every target (already queued: unchanged).
    async fn enqueue(
        &self,
        targets: &[String],
        lanes: &[Lane],
        ids: &[RecordingId],
        now_ms: i64,
    ) -> Result<(), IndexError>;
    /// Items of `target` due at `now_ms`, metadata first, oldest first.
    async fn due(&self, target: &str, lanes: &[Lane], now_ms: i64, limit: u32) -> Result<Vec<OutboxItem>, IndexError>;
    /// The target confirmed the item: it leaves the queue.
    async fn outbox_done(&self, target: &str, lane: Lane, id: RecordingId) -> Result<(), IndexError> {
        self.outbox_done_many(target, lane, &[id]).await
    }
    /// [`ClusterIndex::outbox_done`] for several items, in one transaction.
    async fn outbox_done_many(&self, target: &str, lane: Lane, ids: &[RecordingId]) -> Result<(), IndexError>;
    /// The item failed; it is due again at `due_at_ms`.
    async fn outbox_failed(
        &self,
        target: &str,
        lane: Lane,
        id: RecordingId,
        due_at_ms: i64,
        error: &str,
    ) -> Result<(), IndexError>;
    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>, IndexError>;
    /// Makes every item of `target` (or of all targets) due now; returns how many.
    async fn outbox_retry(&self, target: Option<&str>, now_ms: i64) -> Result<u64, IndexError>;

    async fn settings(&self) -> Result<Vec<StoredSetting>, IndexError>;
    async fn setting(&self, key: &str) -> Result<Option<StoredSetting>, IndexError>;
    /// Stores a setting if its stamp is newer than the stored one; returns whether it did.
    async fn put_setting(&self, s: &StoredSetting) -> Result<bool, IndexError>;

    /// Remembers a node id heard from (so it stays a replication target).
    async fn note_node(&self, node_id: &str, now_ms: i64) -> Result<(), IndexError>;
    async fn known_nodes(&self) -> Result<Vec<String>, IndexError>;
    /// Forgets a node that left the cluster for good: it is no target any
    /// more and its queued items go. Returns how many items were dropped.
    async fn forget_node(&self, node_id: &str) -> Result<u64, IndexError>;
    async fn peers(&self) -> Result<Vec<String>, IndexError>;
    async fn add_peer(&self, url: &str, now_ms: i64) -> Result<bool, IndexError>;
    async fn remove_peer(&self, url: &str) -> Result<bool, IndexError>;
}
