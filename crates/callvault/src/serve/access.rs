//! Wiring of the people-facing surface (the `web` crate) into the node:
//! where users and tokens are written (the cluster settings, replicated;
//! or the local index with a local clock stamp when the node is alone)
//! and the key that signs playback links.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use cluster::hlc::Hlc;
use model::NodeId;
use store::{ClusterIndex, StoredSetting};

use super::cluster::Cluster;

/// Writes cluster settings for the web crate (users, tokens).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub cluster: Option<Arc<Cluster>>,
    pub index: Arc<dyn ClusterIndex>,
    pub node: NodeId,
}

#[async_trait]
impl web::SettingsWriter for NodeSettings {
    async fn put(&self, key: &str, value: serde_json::Value) -> Result<(), String> {
        match &self.cluster {
            Some(c) => super::cluster::settings::set_setting(c, key, value).await.map(|_| ()),
            None => put_local(self.index.as_ref(), &self.node, key, value).await,
        }
    }
}

/// Stores a setting stamped after whatever is stored for it (the node is
/// alone, or this is the command line writing the database directly: the
/// running node's heartbeat digest then notices and the peers pull it).
pub async fn put_local(
    index: &dyn ClusterIndex,
    node: &NodeId,
    key: &str,
    value: serde_json::Value,
) -> Result<(), String> {
    cluster::settings::validate(key, &value)?;
    let prev: Option<Hlc> = index.setting(key).await.map_err(|e| e.to_string())?.and_then(|s| s.stamp.parse().ok());
    let now = super::cluster::now_ms() as u64;
    let stamp = match prev {
        Some(p) if p.wall_ms >= now => Hlc { wall_ms: p.wall_ms, counter: p.counter + 1, node: node.clone() },
        _ => Hlc { wall_ms: now, counter: 0, node: node.clone() },
    };
    let s = StoredSetting { key: key.to_owned(), value: value.to_string(), stamp: stamp.to_string() };
    index.put_setting(&s).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The secret playback links are signed with: derived from the cluster
/// secret (a link made on one node plays on every node), or a random key
/// kept in the data directory when the node is alone.
pub fn link_secret(cluster: Option<&Cluster>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(c) = cluster {
        return Ok(c.secret.clone());
    }
    let path = data_dir.join("link.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => Ok(k),
        _ => {
            let mut k = vec![0u8; 32];
            getrandom::getrandom(&mut k).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
            store::durable_write(&path, &k)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Ok(k)
        }
    }
}
