//! The metadata index in SQLite (sqlx), WAL mode so the CLI can read while
//! the server writes. Migrations are embedded in the binary.

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use model::{RecordingId, RecordingMeta, RecordingState};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored metadata of {id} is unreadable: {source}")]
    Corrupt { id: String, source: serde_json::Error },
}

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>> {
        Box::pin(async {
            Ok(vec![Migration::new(
                1,
                Cow::Borrowed("init"),
                MigrationType::Simple,
                Cow::Borrowed(include_str!("../migrations/0001_init.sql")),
                false,
            )])
        })
    }
}

/// Filters for listing recordings (all optional).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: Option<RecordingState>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Matches caller, callee or any participant number/name/AOR (substring).
    pub party: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The recordings index.
#[derive(Debug, Clone)]
pub struct MetaDb {
    pool: SqlitePool,
}

impl MetaDb {
    /// Opens (creating and migrating) the database at `path`.
    pub async fn open(path: &Path) -> Result<MetaDb, DbError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        Migrator::new(Embedded).await?.run(&pool).await?;
        Ok(MetaDb { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Cheap liveness check for /health/ready.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Inserts or updates a recording. A final state is never overwritten
    /// by an older `active` snapshot arriving late.
    pub async fn upsert(&self, meta: &RecordingMeta) -> Result<(), DbError> {
        self.upsert_many(&[meta]).await
    }

    /// [`MetaDb::upsert`] for several recordings in one transaction (one
    /// commit, one fsync: what keeps call setup fast under load).
    pub async fn upsert_many(&self, metas: &[&RecordingMeta]) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        for meta in metas {
            Self::write(&mut tx, meta).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn write(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, meta: &RecordingMeta) -> Result<(), DbError> {
        let id = meta.id.to_string();
        let json = String::from_utf8(meta.to_json()).expect("JSON is UTF-8");
        let result = sqlx::query(
            "INSERT INTO recordings (id, node_id, source, state, reason, started_at, ended_at, duration_ms, direction,
                 caller, callee, call_id, audio_path, audio_bytes, sha256, meta_json, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
             ON CONFLICT (id) DO UPDATE SET
                 node_id = excluded.node_id, source = excluded.source, state = excluded.state,
                 reason = excluded.reason, started_at = excluded.started_at, ended_at = excluded.ended_at,
                 duration_ms = excluded.duration_ms, direction = excluded.direction, caller = excluded.caller,
                 callee = excluded.callee, call_id = excluded.call_id, audio_path = excluded.audio_path,
                 audio_bytes = excluded.audio_bytes, sha256 = excluded.sha256, meta_json = excluded.meta_json,
                 updated_at = excluded.updated_at
             WHERE recordings.state = 'active' OR excluded.state <> 'active'",
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
        .execute(&mut **tx)
        .await?;
        if result.rows_affected() == 0 {
            return Ok(()); // a stale active snapshot; the final one stays
        }
        sqlx::query("DELETE FROM participants WHERE recording_id = ?1").bind(&id).execute(&mut **tx).await?;
        for (i, p) in meta.participants.iter().enumerate() {
            sqlx::query(
                "INSERT INTO participants (recording_id, position, name, aor, number, role, channel)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(&id)
            .bind(i as i64)
            .bind(&p.name)
            .bind(&p.aor)
            .bind(&p.number)
            .bind(&p.role)
            .bind(p.channel.map(i64::from))
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query("DELETE FROM state_changes WHERE recording_id = ?1").bind(&id).execute(&mut **tx).await?;
        for (i, c) in meta.state_history.iter().enumerate() {
            sqlx::query("INSERT INTO state_changes (recording_id, seq, state, at, reason) VALUES (?1, ?2, ?3, ?4, ?5)")
                .bind(&id)
                .bind(i as i64)
                .bind(c.state.as_str())
                .bind(ms(c.at))
                .bind(&c.reason)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub async fn get(&self, id: RecordingId) -> Result<Option<RecordingMeta>, DbError> {
        let row = sqlx::query("SELECT meta_json FROM recordings WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decode(&id.to_string(), r.get::<String, _>(0))).transpose()
    }

    /// Recordings newest first.
    pub async fn list(&self, q: &ListQuery) -> Result<Vec<RecordingMeta>, DbError> {
        let mut sql = String::from("SELECT id, meta_json FROM recordings r WHERE 1=1");
        if q.state.is_some() {
            sql.push_str(" AND state = ?1");
        }
        if q.since.is_some() {
            sql.push_str(" AND started_at >= ?2");
        }
        if q.until.is_some() {
            sql.push_str(" AND started_at < ?3");
        }
        if q.party.is_some() {
            sql.push_str(
                " AND (caller LIKE ?4 OR callee LIKE ?4 OR EXISTS (SELECT 1 FROM participants p WHERE p.recording_id = r.id
                   AND (p.number LIKE ?4 OR p.name LIKE ?4 OR p.aor LIKE ?4)))",
            );
        }
        sql.push_str(" ORDER BY started_at DESC, id DESC LIMIT ?5 OFFSET ?6");
        let rows = sqlx::query(&sql)
            .bind(q.state.map(|s| s.as_str()))
            .bind(q.since.map(ms))
            .bind(q.until.map(ms))
            .bind(q.party.as_ref().map(|p| format!("%{}%", p.replace('%', "\\%"))))
            .bind(if q.limit == 0 { 100 } else { q.limit.min(10_000) } as i64)
            .bind(q.offset as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|r| decode(&r.get::<String, _>(0), r.get::<String, _>(1))).collect()
    }

    /// Ids of recordings the index believes are active.
    pub async fn active_ids(&self) -> Result<Vec<RecordingId>, DbError> {
        let rows = sqlx::query("SELECT id FROM recordings WHERE state = 'active'").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().filter_map(|r| r.get::<String, _>(0).parse().ok()).collect())
    }

    /// Number of recordings per state.
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, DbError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM recordings GROUP BY state ORDER BY state")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

fn decode(id: &str, json: String) -> Result<RecordingMeta, DbError> {
    RecordingMeta::from_json(json.as_bytes()).map_err(|source| DbError::Corrupt { id: id.to_owned(), source })
}
