//! Users and API tokens, read from and written to the cluster settings
//! (`user.<name>`, `token.<id>`), so every node knows them.

use std::sync::Arc;

use async_trait::async_trait;
use cluster::settings::{TOKEN_PREFIX, USER_PREFIX};
use model::access::{TokenRecord, UserRecord};
use store::{ClusterIndex, IndexError};

/// Writes a cluster setting (and, in a cluster, pushes it to the peers).
/// The binary implements it: through the cluster when there is one, with
/// a local hybrid-clock stamp when the node is alone.
#[async_trait]
pub trait SettingsWriter: Send + Sync + std::fmt::Debug {
    async fn put(&self, key: &str, value: serde_json::Value) -> Result<(), String>;
}

#[derive(Debug, Clone)]
pub struct Directory {
    pub index: Arc<dyn ClusterIndex>,
    pub writer: Arc<dyn SettingsWriter>,
}

/// The secret part of an API token as presented: `cvt_<id>_<secret>`.
pub fn parse_token(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix("cvt_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

impl Directory {
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, IndexError> {
        if !model::access::valid_user_name(name) {
            return Ok(None);
        }
        let s = self.index.setting(&format!("{USER_PREFIX}{name}")).await?;
        Ok(s.and_then(|s| serde_json::from_str::<UserRecord>(&s.value).ok()).filter(|u| !u.deleted))
    }

    pub async fn users(&self) -> Result<Vec<(String, UserRecord)>, IndexError> {
        let all = self.index.settings().await?;
        Ok(all
            .into_iter()
            .filter_map(|s| {
                let name = s.key.strip_prefix(USER_PREFIX)?.to_owned();
                let u: UserRecord = serde_json::from_str(&s.value).ok()?;
                (!u.deleted).then_some((name, u))
            })
            .collect())
    }

    pub async fn put_user(&self, name: &str, u: &UserRecord) -> Result<(), String> {
        let v = serde_json::to_value(u).map_err(|e| e.to_string())?;
        self.writer.put(&format!("{USER_PREFIX}{name}"), v).await
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>, IndexError> {
        if id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        let s = self.index.setting(&format!("{TOKEN_PREFIX}{id}")).await?;
        Ok(s.and_then(|s| serde_json::from_str(&s.value).ok()))
    }

    pub async fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, IndexError> {
        let all = self.index.settings().await?;
        Ok(all
            .into_iter()
            .filter_map(|s| Some((s.key.strip_prefix(TOKEN_PREFIX)?.to_owned(), serde_json::from_str(&s.value).ok()?)))
            .collect())
    }

    pub async fn put_token(&self, id: &str, t: &TokenRecord) -> Result<(), String> {
        let v = serde_json::to_value(t).map_err(|e| e.to_string())?;
        self.writer.put(&format!("{TOKEN_PREFIX}{id}"), v).await
    }

    /// Issues a token for `user`; returns its id and the secret to show once.
    pub async fn issue_token(
        &self,
        user: &str,
        label: &str,
        now_ms: i64,
        expires_ms: Option<i64>,
    ) -> Result<(String, String), String> {
        let t = NewToken::make(user, label, now_ms, expires_ms);
        self.put_token(&t.id, &t.record).await?;
        Ok((t.id, t.bearer))
    }
}

/// A freshly made API token: its id, what is stored (the secret's
/// SHA-256, never the secret) and the bearer string shown once.
#[derive(Debug)]
pub struct NewToken {
    pub id: String,
    pub record: TokenRecord,
    /// `cvt_<id>_<secret>`.
    pub bearer: String,
}

impl NewToken {
    pub fn make(user: &str, label: &str, now_ms: i64, expires_ms: Option<i64>) -> NewToken {
        let id = crate::secrets::random_id();
        let secret = crate::secrets::random_secret();
        let record = TokenRecord {
            user: user.to_owned(),
            sha256: crate::secrets::sha256_hex(secret.as_bytes()),
            label: label.to_owned(),
            created_ms: now_ms,
            expires_ms,
            revoked: false,
        };
        let bearer = format!("cvt_{id}_{secret}");
        NewToken { id, record, bearer }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_parse() {
        assert_eq!(super::parse_token("cvt_ab12_secret_with_underscore"), Some(("ab12", "secret_with_underscore")));
        assert_eq!(super::parse_token("cvt__x"), None);
        assert_eq!(super::parse_token("bearer"), None);
    }
}
