//! Cluster settings on this node: reading them from the index, merging
//! what peers and operators send (last writer wins on the hybrid clock,
//! cluster::settings), and the digest heartbeats compare.

use cluster::Setting;
use store::StoredSetting;

use super::{now_ms, Cluster};

/// Merges settings from a peer or an operator (last writer wins on the
/// stamp); returns the keys that changed. Invalid values are refused.
pub async fn merge_settings(c: &Cluster, list: Vec<Setting>) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    for s in list {
        cluster::settings::validate(&s.key, &s.value)?;
        if let Err(e) = c.clock.lock().expect("clock lock").observe(now_ms() as u64, &s.stamp) {
            return Err(e.to_string());
        }
        let stored = StoredSetting { key: s.key.clone(), value: s.value.to_string(), stamp: s.stamp.to_string() };
        if c.index.put_setting(&stored).await.map_err(|e| e.to_string())? {
            changed.push(s.key);
        }
    }
    if !changed.is_empty() {
        refresh_digest(c).await;
        tracing::info!(keys = ?changed, "cluster settings changed");
    }
    Ok(changed)
}

/// Sets a value on this node (an operator's change) and pushes it.
pub async fn set_setting(c: &Cluster, key: &str, value: serde_json::Value) -> Result<Setting, String> {
    cluster::settings::validate(key, &value)?;
    let stamp = c.clock.lock().expect("clock lock").now(now_ms() as u64);
    let s = Setting { key: key.to_owned(), value, stamp };
    merge_settings(c, vec![s.clone()]).await?;
    c.settings_changed.notify_one();
    Ok(s)
}

pub async fn all_settings(c: &Cluster) -> Vec<Setting> {
    c.index.settings().await.map(|l| l.iter().filter_map(to_setting).collect()).unwrap_or_default()
}

/// Recomputes the digest heartbeats compare, from the stored keys and
/// stamps (values are not parsed: this runs every heartbeat round, and
/// users and tokens live among the settings).
pub async fn refresh_digest(c: &Cluster) {
    let Ok(stored) = c.index.settings().await else { return };
    let newest = stored.iter().filter_map(|s| s.stamp.parse::<cluster::Hlc>().ok()).max();
    if let Some(max) = newest {
        c.clock.lock().expect("clock lock").resume_after(&max);
    }
    *c.settings_digest.lock().expect("digest lock") =
        cluster::settings::digest_of(stored.iter().map(|s| (s.key.as_str(), s.stamp.as_str())));
}

pub fn to_setting(s: &StoredSetting) -> Option<Setting> {
    Some(Setting { key: s.key.clone(), value: serde_json::from_str(&s.value).ok()?, stamp: s.stamp.parse().ok()? })
}
