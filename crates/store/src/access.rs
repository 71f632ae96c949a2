//! What sign-in and the audit trail keep: sessions of this node and the
//! hash-chained audit log, behind [`AccessStore`] with its SQLite backend
//! (users and API tokens are cluster settings, in the settings table).

use std::fmt;

use async_trait::async_trait;
use model::access::{audit_next, audit_verify, AuditAction, AuditEvent, AuditRecord, ChainBreak};
use sqlx::Row;

use crate::db::SqliteIndex;
use crate::index::IndexError;

/// A sign-in session. `id_hash` is the SHA-256 of the cookie's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id_hash: String,
    pub username: String,
    /// The session's anti-CSRF token (sent in forms and `X-CSRF-Token`).
    pub csrf: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub client: String,
    pub revoked: bool,
}

/// Filters for reading the audit trail, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Another node's trail (its copy here); `None`: this node's own.
    pub node: Option<String>,
    pub actor: Option<String>,
    pub action: Option<AuditAction>,
    /// Substring of the target (a recording id, a user name ...).
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Keyset cursor: entries with a smaller sequence number.
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// What walking an audit trail from its first entry found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// Every entry continues the chain; `head` is the last entry's hash.
    Intact { entries: i64, head: Option<String> },
    /// The chain breaks at `at`, after `checked` good entries.
    Broken { checked: i64, at: ChainBreak },
}

/// Walks a trail in batches and checks its hash chain: this node's own
/// (`node` = `None`) or the copy held of another node's. One walk for the
/// API and the `audit verify` command.
pub async fn verify_audit_chain(store: &dyn AccessStore, node: Option<&str>) -> Result<ChainCheck, IndexError> {
    let mut last: Option<(i64, String)> = None;
    loop {
        let after = last.as_ref().map_or(0, |l| l.0);
        let batch = match node {
            None => store.audit_range(after, 5000).await?,
            Some(n) => store.audit_replica_range(n, after, 5000).await?,
        };
        if batch.is_empty() {
            break;
        }
        match audit_verify(last.clone(), &batch) {
            Ok(l) => last = l,
            Err(at) => return Ok(ChainCheck::Broken { checked: after, at }),
        }
    }
    Ok(ChainCheck::Intact { entries: last.as_ref().map_or(0, |l| l.0), head: last.map(|l| l.1) })
}

#[async_trait]
pub trait AccessStore: Send + Sync + fmt::Debug {
    async fn create_session(&self, s: &SessionRow) -> Result<(), IndexError>;
    async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>, IndexError>;
    async fn revoke_session(&self, id_hash: &str) -> Result<bool, IndexError>;
    /// Revokes every session of `username`; returns how many.
    async fn revoke_sessions_of(&self, username: &str) -> Result<u64, IndexError>;
    /// Forgets sessions that expired before `now_ms`.
    async fn purge_sessions(&self, now_ms: i64) -> Result<u64, IndexError>;

    /// Appends an event to the chain (after the current last entry, even
    /// when another process appends at the same time).
    async fn audit_append(&self, event: AuditEvent) -> Result<AuditRecord, IndexError>;
    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, IndexError>;
    /// Entries in chain order from `after_seq` (exclusive), for verifying.
    async fn audit_range(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>, IndexError>;

    /// Stores entries of another node's trail (already checked against its
    /// chain by the caller); entries already here are left as they are.
    async fn audit_put_replica(&self, node: &str, records: &[AuditRecord]) -> Result<(), IndexError>;
    /// The last entry held of `node`'s trail.
    async fn audit_replica_head(&self, node: &str) -> Result<Option<(i64, String)>, IndexError>;
    /// Entries of `node`'s trail held here, in chain order after `after_seq`.
    async fn audit_replica_range(&self, node: &str, after_seq: i64, limit: u32)
        -> Result<Vec<AuditRecord>, IndexError>;
    /// Nodes whose trails are held here.
    async fn audit_replica_nodes(&self) -> Result<Vec<String>, IndexError>;
}

fn session_row(r: &sqlx::sqlite::SqliteRow) -> SessionRow {
    SessionRow {
        id_hash: r.get(0),
        username: r.get(1),
        csrf: r.get(2),
        created_ms: r.get(3),
        expires_ms: r.get(4),
        client: r.get(5),
        revoked: r.get::<i64, _>(6) != 0,
    }
}

fn audit_row(r: &sqlx::sqlite::SqliteRow) -> AuditRecord {
    let action: String = r.get(4);
    AuditRecord {
        seq: r.get(0),
        event: AuditEvent {
            at_ms: r.get(1),
            actor: r.get(2),
            from: r.get(3),
            // An unknown action can only come from an edited file; the
            // chain check reports it (its hash no longer matches).
            action: AuditAction::parse(&action).unwrap_or(AuditAction::Denied),
            target: r.get(5),
            outcome: r.get(6),
            detail: r.get(7),
        },
        prev_hash: r.get(8),
        hash: r.get(9),
    }
}

const AUDIT_COLUMNS: &str = "seq, at, actor, client, action, target, outcome, detail, prev_hash, hash";

#[async_trait]
impl AccessStore for SqliteIndex {
    async fn create_session(&self, s: &SessionRow) -> Result<(), IndexError> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, username, csrf, created_at, expires_at, client, revoked)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&s.id_hash)
        .bind(&s.username)
        .bind(&s.csrf)
        .bind(s.created_ms)
        .bind(s.expires_ms)
        .bind(&s.client)
        .bind(s.revoked as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>, IndexError> {
        let row = sqlx::query(
            "SELECT id_hash, username, csrf, created_at, expires_at, client, revoked FROM sessions WHERE id_hash = ?1",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(session_row))
    }

    async fn revoke_session(&self, id_hash: &str) -> Result<bool, IndexError> {
        let n = sqlx::query("UPDATE sessions SET revoked = 1 WHERE id_hash = ?1 AND revoked = 0")
            .bind(id_hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn revoke_sessions_of(&self, username: &str) -> Result<u64, IndexError> {
        let n = sqlx::query("UPDATE sessions SET revoked = 1 WHERE username = ?1 AND revoked = 0")
            .bind(username)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    async fn purge_sessions(&self, now_ms: i64) -> Result<u64, IndexError> {
        let n = sqlx::query("DELETE FROM sessions WHERE expires_at < ?1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    async fn audit_append(&self, event: AuditEvent) -> Result<AuditRecord, IndexError> {
        // BEGIN IMMEDIATE holds the write lock from the read of the last
        // entry to the insert: two writers (the server and the CLI) never
        // chain to the same predecessor.
        let mut tx = self.write_tx().await?;
        let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)));
        let rec = audit_next(last.as_ref().map(|(s, h)| (*s, h.as_str())), event);
        sqlx::query(
            "INSERT INTO audit (seq, at, actor, client, action, target, outcome, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(rec.seq)
        .bind(rec.event.at_ms)
        .bind(&rec.event.actor)
        .bind(&rec.event.from)
        .bind(rec.event.action.as_str())
        .bind(&rec.event.target)
        .bind(&rec.event.outcome)
        .bind(&rec.event.detail)
        .bind(&rec.prev_hash)
        .bind(&rec.hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, IndexError> {
        let mut b = match &q.node {
            None => sqlx::QueryBuilder::new(format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE 1=1")),
            Some(n) => {
                let mut b = sqlx::QueryBuilder::new(format!("SELECT {AUDIT_COLUMNS} FROM audit_replica WHERE node = "));
                b.push_bind(n.clone());
                b
            }
        };
        if let Some(a) = &q.actor {
            b.push(" AND actor = ").push_bind(a.clone());
        }
        if let Some(a) = q.action {
            b.push(" AND action = ").push_bind(a.as_str());
        }
        if let Some(t) = &q.target {
            b.push(" AND instr(target, ").push_bind(t.clone()).push(") > 0");
        }
        if let Some(t) = q.since_ms {
            b.push(" AND at >= ").push_bind(t);
        }
        if let Some(t) = q.until_ms {
            b.push(" AND at < ").push_bind(t);
        }
        if let Some(s) = q.before_seq {
            b.push(" AND seq < ").push_bind(s);
        }
        b.push(" ORDER BY seq DESC LIMIT ").push_bind(if q.limit == 0 { 100 } else { q.limit.min(1000) } as i64);
        let rows = b.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    async fn audit_range(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>, IndexError> {
        let rows = sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"))
            .bind(after_seq)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    async fn audit_put_replica(&self, node: &str, records: &[AuditRecord]) -> Result<(), IndexError> {
        let mut tx = self.write_tx().await?;
        for r in records {
            sqlx::query(
                "INSERT INTO audit_replica (node, seq, at, actor, client, action, target, outcome, detail, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING",
            )
            .bind(node)
            .bind(r.seq)
            .bind(r.event.at_ms)
            .bind(&r.event.actor)
            .bind(&r.event.from)
            .bind(r.event.action.as_str())
            .bind(&r.event.target)
            .bind(&r.event.outcome)
            .bind(&r.event.detail)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit_replica_head(&self, node: &str) -> Result<Option<(i64, String)>, IndexError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_replica WHERE node = ?1 ORDER BY seq DESC LIMIT 1")
            .bind(node)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn audit_replica_range(
        &self,
        node: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, IndexError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_replica WHERE node = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        ))
        .bind(node)
        .bind(after_seq)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    async fn audit_replica_nodes(&self) -> Result<Vec<String>, IndexError> {
        let rows = sqlx::query("SELECT DISTINCT node FROM audit_replica ORDER BY node").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
