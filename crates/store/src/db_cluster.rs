//! [`ClusterIndex`] on SQLite: replicas, anti-entropy buckets, tombstones,
//! the outbox, settings and peers (tables of migration 0002).

use std::collections::BTreeMap;

use async_trait::async_trait;
use model::replica::{Bucket, Lane, Version};
use model::{RecordingId, RecordingMeta};
use sqlx::Row;

use crate::db::{decode, toggle_bucket, SqliteIndex};
use crate::index::{CallCopy, ClusterIndex, IndexError, OutboxItem, OutboxStats, StoredSetting, Tombstone};

fn parse_id(s: &str) -> Option<RecordingId> {
    s.parse().ok()
}

#[async_trait]
impl ClusterIndex for SqliteIndex {
    async fn put_replicas(&self, items: &[(&RecordingMeta, bool)]) -> Result<Vec<bool>, IndexError> {
        let mut tx = self.write_tx().await?;
        let mut out = Vec::with_capacity(items.len());
        for (meta, audio_here) in items {
            let dead = sqlx::query("SELECT 1 FROM tombstones WHERE id = ?1")
                .bind(meta.id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            out.push(!dead && Self::write(&mut tx, meta, *audio_here).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn set_audio_here_many(&self, ids: &[RecordingId], here: bool) -> Result<(), IndexError> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            let row = sqlx::query("SELECT state, sha256, audio_here, started_at FROM recordings WHERE id = ?1")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(r) = row else { continue };
            let (state, sha, was, started): (String, Option<String>, bool, i64) =
                (r.get(0), r.get(1), r.get::<i64, _>(2) != 0, r.get(3));
            if was == here {
                continue;
            }
            if state != "active" {
                let version = |h: bool| if h { Version::Audio(sha.clone()) } else { Version::MetaOnly(sha.clone()) };
                toggle_bucket(&mut tx, *id, started, &version(was), false).await?;
                toggle_bucket(&mut tx, *id, started, &version(here), true).await?;
            }
            sqlx::query("UPDATE recordings SET audio_here = ?2 WHERE id = ?1")
                .bind(id.to_string())
                .bind(here as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audio_here(&self, id: RecordingId) -> Result<Option<bool>, IndexError> {
        let row = sqlx::query("SELECT audio_here FROM recordings WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) != 0))
    }

    async fn buckets(&self) -> Result<BTreeMap<i64, Bucket>, IndexError> {
        let rows = sqlx::query("SELECT hour, count, fp FROM buckets WHERE count > 0 OR fp <> 0 ORDER BY hour")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (r.get::<i64, _>(0), Bucket { count: r.get::<i64, _>(1).max(0) as u64, fp: r.get::<i64, _>(2) as u64 })
            })
            .collect())
    }

    async fn versions(&self, hours: &[i64]) -> Result<BTreeMap<RecordingId, Version>, IndexError> {
        let mut out = BTreeMap::new();
        for &h in hours {
            let (from, to) = (h * model::replica::HOUR_MS, (h + 1) * model::replica::HOUR_MS);
            let rows = sqlx::query(
                "SELECT id, sha256, audio_here FROM recordings WHERE started_at >= ?1 AND started_at < ?2 AND state <> 'active'",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                let Some(id) = parse_id(&r.get::<String, _>(0)) else { continue };
                let sha: Option<String> = r.get(1);
                let v = if r.get::<i64, _>(2) != 0 { Version::Audio(sha) } else { Version::MetaOnly(sha) };
                out.insert(id, v);
            }
            let rows = sqlx::query("SELECT id FROM tombstones WHERE started_at >= ?1 AND started_at < ?2")
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
            for r in rows {
                if let Some(id) = parse_id(&r.get::<String, _>(0)) {
                    out.insert(id, Version::Deleted);
                }
            }
        }
        Ok(out)
    }

    async fn tombstone(&self, t: &Tombstone) -> Result<Option<RecordingMeta>, IndexError> {
        let id = t.id.to_string();
        let mut tx = self.write_tx().await?;
        if sqlx::query("SELECT 1 FROM tombstones WHERE id = ?1").bind(&id).fetch_optional(&mut *tx).await?.is_some() {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT meta_json, state, sha256, audio_here, started_at, rowid, call_key FROM recordings WHERE id = ?1",
        )
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await?;
        let mut deleted = None;
        if let Some(r) = row {
            let state: String = r.get(1);
            if state != "active" {
                let sha: Option<String> = r.get(2);
                let v = if r.get::<i64, _>(3) != 0 { Version::Audio(sha) } else { Version::MetaOnly(sha) };
                toggle_bucket(&mut tx, t.id, r.get(4), &v, false).await?;
            }
            deleted = Some(decode(&id, r.get(0))?);
            sqlx::query("DELETE FROM recordings_fts WHERE rowid = ?1")
                .bind(r.get::<i64, _>(5))
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM recordings WHERE id = ?1").bind(&id).execute(&mut *tx).await?;
            if let Some(key) = r.get::<Option<String>, _>(6) {
                SqliteIndex::relist(&mut tx, &key).await?;
            }
        }
        sqlx::query("INSERT INTO tombstones (id, started_at, deleted_at, stamp, reason) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(&id)
            .bind(t.started_at_ms)
            .bind(t.deleted_at_ms)
            .bind(&t.stamp)
            .bind(&t.reason)
            .execute(&mut *tx)
            .await?;
        toggle_bucket(&mut tx, t.id, t.started_at_ms, &Version::Deleted, true).await?;
        sqlx::query("DELETE FROM outbox WHERE id = ?1").bind(&id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(deleted)
    }

    async fn tombstoned(&self, id: RecordingId) -> Result<Option<Tombstone>, IndexError> {
        let row = sqlx::query("SELECT started_at, deleted_at, stamp, reason FROM tombstones WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Tombstone {
            id,
            started_at_ms: r.get(0),
            deleted_at_ms: r.get(1),
            stamp: r.get(2),
            reason: r.get(3),
        }))
    }

    async fn started_before(&self, ms: i64, limit: u32) -> Result<Vec<RecordingMeta>, IndexError> {
        let rows = sqlx::query(
            "SELECT id, meta_json FROM recordings WHERE started_at < ?1 AND state <> 'active' ORDER BY started_at LIMIT ?2",
        )
        .bind(ms)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| decode(&r.get::<String, _>(0), r.get(1))).collect()
    }

    async fn forget_tombstones(&self, deleted_before_ms: i64) -> Result<u64, IndexError> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query("SELECT id, started_at FROM tombstones WHERE deleted_at < ?1")
            .bind(deleted_before_ms)
            .fetch_all(&mut *tx)
            .await?;
        for r in &rows {
            if let Some(id) = parse_id(&r.get::<String, _>(0)) {
                toggle_bucket(&mut tx, id, r.get(1), &Version::Deleted, false).await?;
            }
        }
        let n = sqlx::query("DELETE FROM tombstones WHERE deleted_at < ?1")
            .bind(deleted_before_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn audio_held(&self, after: Option<RecordingId>, limit: u32) -> Result<Vec<RecordingMeta>, IndexError> {
        let rows = sqlx::query(
            "SELECT id, meta_json FROM recordings WHERE audio_here = 1 AND state <> 'active' AND id > ?1
             ORDER BY id LIMIT ?2",
        )
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| decode(&r.get::<String, _>(0), r.get(1))).collect()
    }

    async fn same_call(&self, call_key: &str) -> Result<Vec<RecordingMeta>, IndexError> {
        let rows = sqlx::query("SELECT id, meta_json FROM recordings WHERE call_key = ?1 ORDER BY started_at, id")
            .bind(call_key)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|r| decode(&r.get::<String, _>(0), r.get(1))).collect()
    }

    async fn call_copies(&self, call_key: &str) -> Result<Vec<CallCopy>, IndexError> {
        let rows = sqlx::query(
            "SELECT id, node_id, state, duration_ms FROM recordings WHERE call_key = ?1 ORDER BY started_at, id",
        )
        .bind(call_key)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let id: String = r.get(0);
                let state: String = r.get(2);
                Ok(CallCopy {
                    id: id.parse().map_err(|_| IndexError::Column(format!("recording id {id:?}")))?,
                    node: model::NodeId(r.get(1)),
                    state: state.parse().map_err(IndexError::Column)?,
                    duration_ms: r.get::<i64, _>(3).max(0) as u64,
                })
            })
            .collect()
    }

    async fn upsert_and_enqueue(
        &self,
        metas: &[&RecordingMeta],
        targets: &[String],
        lanes: &[Lane],
        now_ms: i64,
    ) -> Result<(), IndexError> {
        let mut tx = self.write_tx().await?;
        for meta in metas {
            Self::write(&mut tx, meta, true).await?;
        }
        let ids: Vec<RecordingId> = metas.iter().map(|m| m.id).collect();
        insert_outbox(&mut tx, targets, lanes, &ids, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue(
        &self,
        targets: &[String],
        lanes: &[Lane],
        ids: &[RecordingId],
        now_ms: i64,
    ) -> Result<(), IndexError> {
        let mut tx = self.write_tx().await?;
        insert_outbox(&mut tx, targets, lanes, ids, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn due(&self, target: &str, lanes: &[Lane], now_ms: i64, limit: u32) -> Result<Vec<OutboxItem>, IndexError> {
        let mut out = Vec::new();
        for lane in lanes {
            if out.len() >= limit as usize {
                break;
            }
            let rows = sqlx::query(
                "SELECT id, due_at, enqueued_at, attempts, last_error FROM outbox
                 WHERE target = ?1 AND lane = ?2 AND due_at <= ?3 ORDER BY due_at, id LIMIT ?4",
            )
            .bind(target)
            .bind(lane.as_i64())
            .bind(now_ms)
            .bind((limit as usize - out.len()) as i64)
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                let Some(id) = parse_id(&r.get::<String, _>(0)) else { continue };
                out.push(OutboxItem {
                    target: target.to_owned(),
                    lane: *lane,
                    id,
                    due_at_ms: r.get(1),
                    enqueued_at_ms: r.get(2),
                    attempts: r.get::<i64, _>(3) as u32,
                    last_error: r.get(4),
                });
            }
        }
        Ok(out)
    }

    async fn outbox_done_many(&self, target: &str, lane: Lane, ids: &[RecordingId]) -> Result<(), IndexError> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            sqlx::query("DELETE FROM outbox WHERE target = ?1 AND lane = ?2 AND id = ?3")
                .bind(target)
                .bind(lane.as_i64())
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn outbox_failed(
        &self,
        target: &str,
        lane: Lane,
        id: RecordingId,
        due_at_ms: i64,
        error: &str,
    ) -> Result<(), IndexError> {
        sqlx::query(
            "UPDATE outbox SET due_at = ?4, attempts = attempts + 1, last_error = ?5
             WHERE target = ?1 AND lane = ?2 AND id = ?3",
        )
        .bind(target)
        .bind(lane.as_i64())
        .bind(id.to_string())
        .bind(due_at_ms)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox_stats(&self) -> Result<Vec<OutboxStats>, IndexError> {
        let rows = sqlx::query(
            "SELECT target, COUNT(*), SUM(lane = 0), MIN(enqueued_at), SUM(attempts > 0),
                    (SELECT last_error FROM outbox o2 WHERE o2.target = o.target AND last_error IS NOT NULL
                     ORDER BY due_at DESC LIMIT 1)
             FROM outbox o GROUP BY target ORDER BY target",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| OutboxStats {
                target: r.get(0),
                depth: r.get::<i64, _>(1) as u64,
                meta_depth: r.get::<Option<i64>, _>(2).unwrap_or(0) as u64,
                oldest_enqueued_ms: r.get(3),
                failing: r.get::<Option<i64>, _>(4).unwrap_or(0) as u64,
                last_error: r.get(5),
            })
            .collect())
    }

    async fn outbox_retry(&self, target: Option<&str>, now_ms: i64) -> Result<u64, IndexError> {
        let q = match target {
            Some(t) => {
                sqlx::query("UPDATE outbox SET due_at = ?1 WHERE target = ?2 AND due_at > ?1").bind(now_ms).bind(t)
            }
            None => sqlx::query("UPDATE outbox SET due_at = ?1 WHERE due_at > ?1").bind(now_ms),
        };
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    async fn settings(&self) -> Result<Vec<StoredSetting>, IndexError> {
        let rows = sqlx::query("SELECT key, value, stamp FROM settings ORDER BY key").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| StoredSetting { key: r.get(0), value: r.get(1), stamp: r.get(2) }).collect())
    }

    async fn setting(&self, key: &str) -> Result<Option<StoredSetting>, IndexError> {
        let row = sqlx::query("SELECT key, value, stamp FROM settings WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| StoredSetting { key: r.get(0), value: r.get(1), stamp: r.get(2) }))
    }

    async fn put_setting(&self, s: &StoredSetting) -> Result<bool, IndexError> {
        // Stamps sort as text the way the clock orders them.
        let n = sqlx::query(
            "INSERT INTO settings (key, value, stamp) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, stamp = excluded.stamp
             WHERE excluded.stamp > settings.stamp",
        )
        .bind(&s.key)
        .bind(&s.value)
        .bind(&s.stamp)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn note_node(&self, node_id: &str, now_ms: i64) -> Result<(), IndexError> {
        sqlx::query("INSERT INTO known_nodes (node_id, first_seen) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .bind(node_id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn known_nodes(&self) -> Result<Vec<String>, IndexError> {
        let rows = sqlx::query("SELECT node_id FROM known_nodes ORDER BY node_id").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    async fn forget_node(&self, node_id: &str) -> Result<u64, IndexError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM known_nodes WHERE node_id = ?1").bind(node_id).execute(&mut *tx).await?;
        let n =
            sqlx::query("DELETE FROM outbox WHERE target = ?1").bind(node_id).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn peers(&self) -> Result<Vec<String>, IndexError> {
        let rows = sqlx::query("SELECT url FROM peers ORDER BY url").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    async fn add_peer(&self, url: &str, now_ms: i64) -> Result<bool, IndexError> {
        let n = sqlx::query("INSERT INTO peers (url, added_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .bind(url)
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn remove_peer(&self, url: &str) -> Result<bool, IndexError> {
        let n = sqlx::query("DELETE FROM peers WHERE url = ?1").bind(url).execute(&self.pool).await?.rows_affected();
        Ok(n > 0)
    }
}

async fn insert_outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    targets: &[String],
    lanes: &[Lane],
    ids: &[RecordingId],
    now_ms: i64,
) -> Result<(), IndexError> {
    for t in targets {
        for lane in lanes {
            for id in ids {
                sqlx::query(
                    "INSERT INTO outbox (target, lane, id, due_at, enqueued_at) VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT DO NOTHING",
                )
                .bind(t)
                .bind(lane.as_i64())
                .bind(id.to_string())
                .bind(now_ms)
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    Ok(())
}
