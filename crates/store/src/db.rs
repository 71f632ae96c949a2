//! The metadata index in SQLite (sqlx), WAL mode so the CLI can read while
//! the server writes. Migrations are embedded in the binary.
//!
//! Why sqlx: async, one query API for SQLite and the PostgreSQL backend
//! that scale-out needs, embedded migrations (docs/dependencies.md).

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use model::replica::{fingerprint, hour_of, Version};
use model::{RecordingId, RecordingMeta};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::index::{IndexError, ListQuery, RecordingIndex};
use time::OffsetDateTime;

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>> {
        Box::pin(async {
            Ok(vec![
                Migration::new(
                    1,
                    Cow::Borrowed("init"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0001_init.sql")),
                    false,
                ),
                Migration::new(
                    2,
                    Cow::Borrowed("cluster"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0002_cluster.sql")),
                    false,
                ),
                Migration::new(
                    3,
                    Cow::Borrowed("access"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0003_access.sql")),
                    false,
                ),
                Migration::new(
                    4,
                    Cow::Borrowed("search"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0004_search.sql")),
                    false,
                ),
                Migration::new(
                    5,
                    Cow::Borrowed("audit replica"),
                    MigrationType::Simple,
                    Cow::Borrowed(include_str!("../migrations/0005_audit_replica.sql")),
                    false,
                ),
            ])
        })
    }
}

pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The recordings index in an embedded SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteIndex {
    pub(crate) pool: SqlitePool,
}

impl SqliteIndex {
    /// Opens (creating and migrating) the database at `path`.
    pub async fn open(path: &Path) -> Result<SqliteIndex, IndexError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Background writers (archive, replication, anti-entropy) queue for
            // the one write lock; the recorder never waits for it.
            .busy_timeout(Duration::from_secs(15));
        // Connections are renewed now and then, so one left in a bad state by
        // a failed commit does not stay in the pool for ever.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .max_lifetime(Duration::from_secs(600))
            .connect_with(opts)
            .await?;
        Migrator::new(Embedded).await?.run(&pool).await?;
        let index = SqliteIndex { pool };
        index.backfill_search_tables().await?;
        // What the migrations wrote goes into the database file now, not
        // left in the write-ahead log until it holds 1,000 pages.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&index.pool).await?;
        Ok(index)
    }

    /// The connection pool, for tools and tests that check the database itself.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction that takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred one that reads first fails outright
    /// (SQLITE_BUSY_SNAPSHOT) when another connection wrote meanwhile,
    /// instead of waiting its turn.
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, IndexError> {
        match self.pool.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => Ok(tx),
            // A connection whose last COMMIT failed (disk I/O error, file too
            // large) keeps sqlx's transaction depth above zero and refuses a
            // custom BEGIN; a plain one still works on it. Take the write lock
            // with the first statement instead (a write that changes nothing).
            Err(sqlx::Error::InvalidSavePointStatement) => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE settings SET key = key WHERE 0").execute(&mut *tx).await?;
                Ok(tx)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fills `parties` and `identifiers` for recordings indexed before
    /// they existed (a database from an older version), once.
    async fn backfill_search_tables(&self) -> Result<(), IndexError> {
        // Done once (PRAGMA user_version 1): the check scans every row.
        let version: i64 = sqlx::query("PRAGMA user_version").fetch_one(&self.pool).await?.get(0);
        if version >= 1 {
            return Ok(());
        }
        loop {
            let rows = sqlx::query(
                "SELECT id, meta_json FROM recordings r WHERE NOT EXISTS
                   (SELECT 1 FROM identifiers i WHERE i.recording_id = r.id) AND NOT EXISTS
                   (SELECT 1 FROM parties p WHERE p.recording_id = r.id) LIMIT 500",
            )
            .fetch_all(&self.pool)
            .await?;
            let mut filled = 0;
            let mut tx = self.write_tx().await?;
            for r in &rows {
                let meta = decode(&r.get::<String, _>(0), r.get::<String, _>(1))?;
                filled += Self::insert_search_rows(&mut tx, &meta.id.to_string(), &meta).await?;
            }
            tx.commit().await?;
            if filled == 0 {
                sqlx::query("PRAGMA user_version = 1").execute(&self.pool).await?;
                return Ok(());
            }
        }
    }

    /// The search rows (parties, identifiers) of one recording, whose
    /// old rows are gone; returns how many it has.
    async fn insert_search_rows(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        id: &str,
        meta: &RecordingMeta,
    ) -> Result<usize, IndexError> {
        let (parties, ids) = (meta.party_users(), meta.identifiers());
        for (table, column, values) in [("parties", "party", &parties), ("identifiers", "value", &ids)] {
            if values.is_empty() {
                continue;
            }
            let mut b = sqlx::QueryBuilder::new(format!("INSERT INTO {table} (recording_id, {column}) "));
            b.push_values(values.iter(), |mut row, v| {
                row.push_bind(id).push_bind(v);
            });
            b.build().execute(&mut **tx).await?;
        }
        Ok(parties.len() + ids.len())
    }

    /// Marks which copy of a call search lists (the others stay findable
    /// by id and as `copies`).
    pub(crate) async fn relist(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, call_key: &str) -> Result<(), IndexError> {
        sqlx::query(
            "UPDATE recordings SET listed = (id = (SELECT r2.id FROM recordings r2 WHERE r2.call_key = ?1
                 ORDER BY CASE r2.state WHEN 'completed' THEN 0 WHEN 'active' THEN 1 WHEN 'interrupted' THEN 2 ELSE 3 END,
                          r2.duration_ms DESC, r2.node_id, r2.id LIMIT 1))
             WHERE call_key = ?1",
        )
        .bind(call_key)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Bytes the database file holds once the write-ahead log is folded in
    /// (pages in use × page size): what a table costs, for benchmarks.
    pub async fn size_bytes(&self) -> Result<u64, IndexError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await?;
        let pages: i64 = sqlx::query("PRAGMA page_count").fetch_one(&self.pool).await?.get(0);
        let free: i64 = sqlx::query("PRAGMA freelist_count").fetch_one(&self.pool).await?.get(0);
        let size: i64 = sqlx::query("PRAGMA page_size").fetch_one(&self.pool).await?.get(0);
        Ok(((pages - free).max(0) * size) as u64)
    }

    /// Writes one recording (and keeps its anti-entropy bucket up to
    /// date). Returns false when nothing changed: a stale active snapshot
    /// of a recording already final.
    pub(crate) async fn write(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        meta: &RecordingMeta,
        audio_here: bool,
    ) -> Result<bool, IndexError> {
        let id = meta.id.to_string();
        let json = String::from_utf8(meta.to_json()).expect("JSON is UTF-8");
        let before = sqlx::query("SELECT state, sha256, audio_here, started_at FROM recordings WHERE id = ?1")
            .bind(&id)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| {
                let state: String = r.get(0);
                (state, r.get::<Option<String>, _>(1), r.get::<i64, _>(2) != 0, r.get::<i64, _>(3))
            });
        let result = sqlx::query(
            "INSERT INTO recordings (id, node_id, source, state, reason, started_at, ended_at, duration_ms, direction,
                 caller, callee, call_id, audio_path, audio_bytes, sha256, meta_json, updated_at, call_key, audio_here)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
             ON CONFLICT (id) DO UPDATE SET
                 node_id = excluded.node_id, source = excluded.source, state = excluded.state,
                 reason = excluded.reason, started_at = excluded.started_at, ended_at = excluded.ended_at,
                 duration_ms = excluded.duration_ms, direction = excluded.direction, caller = excluded.caller,
                 callee = excluded.callee, call_id = excluded.call_id, audio_path = excluded.audio_path,
                 audio_bytes = excluded.audio_bytes, sha256 = excluded.sha256, meta_json = excluded.meta_json,
                 updated_at = excluded.updated_at, call_key = excluded.call_key,
                 audio_here = max(recordings.audio_here, excluded.audio_here)
             WHERE recordings.state = 'active' OR excluded.state <> 'active'
             RETURNING rowid",
        )
        .bind(&id)
        .bind(&meta.node_id.0)
        .bind(serde_json::to_value(meta.source).ok().and_then(|v| v.as_str().map(str::to_owned)))
        .bind(meta.state.as_str())
        .bind(meta.reason())
        .bind(ms(meta.started_at))
        .bind(meta.ended_at.map(ms))
        .bind(meta.duration_ms as i64)
        .bind(&meta.direction)
        .bind(&meta.caller)
        .bind(&meta.callee)
        .bind(meta.call_ids.first())
        .bind(meta.audio.as_ref().map(|a| a.path.clone()))
        .bind(meta.audio.as_ref().map(|a| a.bytes as i64))
        .bind(meta.audio.as_ref().and_then(|a| a.sha256.clone()))
        .bind(&json)
        .bind(ms(OffsetDateTime::now_utc()))
        .bind(&meta.call_key)
        .bind(audio_here as i64)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(rowid) = result.map(|r| r.get::<i64, _>(0)) else {
            return Ok(false); // a stale active snapshot; the final one stays
        };
        // A recording indexed for the first time has no old rows to replace.
        let fresh = before.is_none();
        // Anti-entropy: the old version leaves its bucket, the new one enters.
        let sha = meta.audio.as_ref().and_then(|a| a.sha256.clone());
        if let Some((state, old_sha, old_here, old_started)) = &before {
            if state != "active" {
                let v = if *old_here { Version::Audio(old_sha.clone()) } else { Version::MetaOnly(old_sha.clone()) };
                toggle_bucket(tx, meta.id, *old_started, &v, false).await?;
            }
        }
        if meta.state.is_final() {
            let here = audio_here || before.as_ref().is_some_and(|b| b.2);
            let v = if here { Version::Audio(sha) } else { Version::MetaOnly(sha) };
            toggle_bucket(tx, meta.id, ms(meta.started_at), &v, true).await?;
        }
        if !fresh {
            for table in ["participants", "state_changes", "parties", "identifiers"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE recording_id = ?1"))
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query("DELETE FROM recordings_fts WHERE rowid = ?1").bind(rowid).execute(&mut **tx).await?;
        }
        if !meta.participants.is_empty() {
            let mut b = sqlx::QueryBuilder::new(
                "INSERT INTO participants (recording_id, position, name, aor, number, role, channel) ",
            );
            b.push_values(meta.participants.iter().enumerate(), |mut row, (i, p)| {
                row.push_bind(&id)
                    .push_bind(i as i64)
                    .push_bind(&p.name)
                    .push_bind(&p.aor)
                    .push_bind(&p.number)
                    .push_bind(&p.role)
                    .push_bind(p.channel.map(i64::from));
            });
            b.build().execute(&mut **tx).await?;
        }
        if !meta.state_history.is_empty() {
            let mut b = sqlx::QueryBuilder::new("INSERT INTO state_changes (recording_id, seq, state, at, reason) ");
            b.push_values(meta.state_history.iter().enumerate(), |mut row, (i, c)| {
                row.push_bind(&id)
                    .push_bind(i as i64)
                    .push_bind(c.state.as_str())
                    .push_bind(ms(c.at))
                    .push_bind(&c.reason);
            });
            b.build().execute(&mut **tx).await?;
        }
        Self::insert_search_rows(tx, &id, meta).await?;
        sqlx::query("INSERT INTO recordings_fts (rowid, parties) VALUES (?1, ?2)")
            .bind(rowid)
            .bind(party_text(meta))
            .execute(&mut **tx)
            .await?;
        if let Some(key) = &meta.call_key {
            Self::relist(tx, key).await?;
        }
        Ok(true)
    }
}

/// Adds or removes one (id, version) in its hour's anti-entropy bucket.
pub(crate) async fn toggle_bucket(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: RecordingId,
    started_ms: i64,
    version: &Version,
    add: bool,
) -> Result<(), IndexError> {
    let fp = fingerprint(id, version) as i64;
    sqlx::query(
        "INSERT INTO buckets (hour, count, fp) VALUES (?1, ?2, ?3)
         ON CONFLICT (hour) DO UPDATE SET count = count + excluded.count, fp = (fp | excluded.fp) & ~(fp & excluded.fp)",
    )
    .bind(hour_of(started_ms))
    .bind(if add { 1i64 } else { -1 })
    .bind(fp)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl RecordingIndex for SqliteIndex {
    async fn close(&self) {
        self.pool.close().await;
    }

    /// Cheap liveness check for /health/ready.
    async fn ping(&self) -> Result<(), IndexError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// One transaction, one commit: what keeps call setup fast under load.
    async fn upsert_many(&self, metas: &[&RecordingMeta]) -> Result<(), IndexError> {
        let mut tx = self.write_tx().await?;
        for meta in metas {
            Self::write(&mut tx, meta, true).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, id: RecordingId) -> Result<Option<RecordingMeta>, IndexError> {
        let row = sqlx::query("SELECT meta_json FROM recordings WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decode(&id.to_string(), r.get::<String, _>(0))).transpose()
    }

    /// Recordings newest first.
    async fn list(&self, q: &ListQuery) -> Result<Vec<RecordingMeta>, IndexError> {
        // A party substring matching many recordings is found fastest by
        // walking the time index and checking each against the trigram
        // matches; a rare one by fetching its few matches and sorting them.
        let broad = match fts_phrase(q) {
            Some(phrase) => {
                let n: i64 = sqlx::query(
                    "SELECT COUNT(*) FROM (SELECT rowid FROM recordings_fts WHERE recordings_fts MATCH ?1 LIMIT ?2)",
                )
                .bind(phrase)
                .bind(BROAD_PARTY)
                .fetch_one(&self.pool)
                .await?
                .get(0);
                n >= BROAD_PARTY
            }
            None => false,
        };
        let mut b = sqlx::QueryBuilder::new("SELECT id, meta_json FROM recordings r WHERE 1=1");
        push_filters(&mut b, q, true, broad);
        b.push(" ORDER BY started_at DESC, id DESC LIMIT ");
        b.push_bind(if q.limit == 0 { 100 } else { q.limit.min(10_000) } as i64);
        b.push(" OFFSET ");
        b.push_bind(q.offset as i64);
        let rows = b.build().fetch_all(&self.pool).await?;
        rows.into_iter().map(|r| decode(&r.get::<String, _>(0), r.get::<String, _>(1))).collect()
    }

    async fn count(&self, q: &ListQuery, cap: u64) -> Result<u64, IndexError> {
        let mut b = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM (SELECT 1 FROM recordings r WHERE 1=1");
        push_filters(&mut b, q, false, false);
        b.push(" LIMIT ").push_bind(cap.min(i64::MAX as u64) as i64).push(")");
        let n: i64 = b.build().fetch_one(&self.pool).await?.get(0);
        Ok(n as u64)
    }

    /// Ids of recordings the index believes are active.
    async fn active_ids(&self) -> Result<Vec<RecordingId>, IndexError> {
        let rows = sqlx::query("SELECT id FROM recordings WHERE state = 'active'").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().filter_map(|r| r.get::<String, _>(0).parse().ok()).collect())
    }

    /// Number of recordings per state.
    async fn count_by_state(&self) -> Result<Vec<(String, i64)>, IndexError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM recordings GROUP BY state ORDER BY state")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Every party's name, number and address in one text, for the trigram index.
fn party_text(meta: &RecordingMeta) -> String {
    let mut text = String::new();
    let parts = meta
        .caller
        .iter()
        .chain(meta.callee.iter())
        .chain(meta.participants.iter().flat_map(|p| p.name.iter().chain(p.number.iter()).chain(p.aor.iter())));
    for part in parts {
        text.push_str(part);
        text.push(' ');
    }
    text
}

/// Trigram matches from which a party search walks the time index instead.
const BROAD_PARTY: i64 = 2_000;

/// The trigram query of a party filter of 3+ characters.
fn fts_phrase(q: &ListQuery) -> Option<String> {
    let p = q.party.as_ref().filter(|p| p.chars().count() >= 3)?;
    Some(format!("\"{}\"", p.replace('"', "\"\"")))
}

/// The WHERE clauses of a search (`with_cursor`: also the keyset cursor;
/// `broad`: the party filter matches many, see [`SqliteIndex::list`]).
fn push_filters(b: &mut sqlx::QueryBuilder<'_, sqlx::Sqlite>, q: &ListQuery, with_cursor: bool, broad: bool) {
    if let Some(state) = q.state {
        b.push(" AND state = ").push_bind(state.as_str());
    }
    if let Some(t) = q.since {
        b.push(" AND started_at >= ").push_bind(ms(t));
    }
    if let Some(t) = q.until {
        b.push(" AND started_at < ").push_bind(ms(t));
    }
    if let Some(d) = &q.direction {
        b.push(" AND direction = ").push_bind(d.clone());
    }
    if let Some(d) = q.min_duration_ms {
        b.push(" AND duration_ms >= ").push_bind(d as i64);
    }
    if let Some(d) = q.max_duration_ms {
        b.push(" AND duration_ms <= ").push_bind(d as i64);
    }
    if let Some(s) = &q.source {
        b.push(" AND source = ").push_bind(s.clone());
    }
    if let Some(n) = &q.node {
        b.push(" AND node_id = ").push_bind(n.clone());
    }
    if let Some(v) = &q.identifier {
        b.push(" AND r.id IN (SELECT recording_id FROM identifiers WHERE value = ").push_bind(v.clone()).push(")");
    }
    if let Some(p) = &q.party {
        if let Some(phrase) = fts_phrase(q) {
            // The trigram index finds any substring of 3+ characters. `+`
            // keeps the planner from fetching every match by rowid.
            b.push(if broad { " AND +r.rowid IN" } else { " AND r.rowid IN" });
            b.push(" (SELECT rowid FROM recordings_fts WHERE recordings_fts MATCH ").push_bind(phrase).push(")");
        } else {
            let pat = format!("%{}%", like_escape(p));
            b.push(" AND (caller LIKE ").push_bind(pat.clone()).push(" ESCAPE '\\' OR callee LIKE ");
            b.push_bind(pat.clone()).push(
                " ESCAPE '\\' OR EXISTS (SELECT 1 FROM participants p WHERE p.recording_id = r.id AND (p.number LIKE ",
            );
            b.push_bind(pat.clone()).push(" ESCAPE '\\' OR p.name LIKE ").push_bind(pat.clone());
            b.push(" ESCAPE '\\' OR p.aor LIKE ").push_bind(pat).push(" ESCAPE '\\')))");
        }
    }
    if let Some(scope) = &q.scope {
        // An empty scope sees nothing.
        b.push(" AND EXISTS (SELECT 1 FROM parties pa WHERE pa.recording_id = r.id AND (0");
        for p in scope {
            match p.strip_suffix('*') {
                Some(prefix) => {
                    b.push(" OR pa.party LIKE ").push_bind(format!("{}%", like_escape(prefix))).push(" ESCAPE '\\'")
                }
                None => b.push(" OR pa.party = ").push_bind(p.clone()),
            };
        }
        b.push("))");
    }
    if let (true, Some((at, id))) = (with_cursor, &q.before) {
        b.push(" AND (started_at < ").push_bind(*at).push(" OR (started_at = ").push_bind(*at);
        b.push(" AND id < ").push_bind(id.clone()).push("))");
    }
    // One logical recording per call: of the copies sharing a call key
    // (the call forked to several recorders), the best one is listed.
    b.push(" AND +r.listed = 1");
}

/// `text` as a literal inside a LIKE pattern (with `ESCAPE '\'`).
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(crate) fn decode(id: &str, json: String) -> Result<RecordingMeta, IndexError> {
    RecordingMeta::from_json(json.as_bytes()).map_err(|source| IndexError::Corrupt { id: id.to_owned(), source })
}
