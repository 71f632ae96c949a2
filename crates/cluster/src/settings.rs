//! Cluster settings: values every node holds the same, changed on any node.
//!
//! A setting is a key, a JSON value and the hybrid-clock stamp of the
//! change that set it. Merging is last-writer-wins on the stamp: a change
//! replaces a setting only if its stamp is greater, so nodes that receive
//! the same changes in any order, any number of times, end with the same
//! values (the stamp's node id breaks exact ties). A node pushes a change
//! to every peer at once and heartbeats carry a digest of the settings, so
//! a node that missed a push notices within a heartbeat and pulls them all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hlc::Hlc;

/// Keys the cluster knows, and what their values must look like.
pub const KEYS: &[(&str, &str)] = &[
    ("retention.days", "days a finished recording is kept (0 = for ever)"),
    ("sources.allowed", "CIDRs allowed to send calls, e.g. [\"10.0.0.0/8\"] (empty = any)"),
    ("jobs.scrub.last_ms", "when the job leader last started a scrub (kept by the jobs)"),
    ("jobs.retention.last_ms", "when the job leader last ran the retention purge (kept by the jobs)"),
];

/// Key prefixes of users and API tokens (`user.<name>`, `token.<id>`):
/// cluster settings so they replicate, but kept out of the settings API
/// (they are managed through the users and tokens routes).
pub const USER_PREFIX: &str = "user.";
pub const TOKEN_PREFIX: &str = "token.";

/// Whether `key` is a user or token (not shown with the other settings).
pub fn is_access_key(key: &str) -> bool {
    key.starts_with(USER_PREFIX) || key.starts_with(TOKEN_PREFIX)
}

/// One setting with the stamp of its last change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub key: String,
    pub value: serde_json::Value,
    pub stamp: Hlc,
}

/// Checks a value for a known key.
pub fn validate(key: &str, value: &serde_json::Value) -> Result<(), String> {
    match key {
        "retention.days" => value
            .as_u64()
            .filter(|d| *d <= 36_500)
            .map(|_| ())
            .ok_or_else(|| "retention.days is a number of days".into()),
        "sources.allowed" => {
            let list = value.as_array().ok_or("sources.allowed is a list of CIDRs")?;
            for v in list {
                let s = v.as_str().ok_or("sources.allowed is a list of CIDRs")?;
                s.parse::<ipnet::IpNet>().map_err(|_| format!("{s:?} is not a CIDR"))?;
            }
            Ok(())
        }
        "jobs.scrub.last_ms" | "jobs.retention.last_ms" => {
            value.as_i64().map(|_| ()).ok_or_else(|| format!("{key} is a time in milliseconds"))
        }
        user if user.starts_with(USER_PREFIX) => {
            let name = &user[USER_PREFIX.len()..];
            if !model::access::valid_user_name(name) {
                return Err(format!("{name:?} is not a user name"));
            }
            let rec: model::access::UserRecord =
                serde_json::from_value(value.clone()).map_err(|e| format!("{user}: {e}"))?;
            rec.scope.validate()
        }
        token if token.starts_with(TOKEN_PREFIX) => {
            let id = &token[TOKEN_PREFIX.len()..];
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("{id:?} is not a token id"));
            }
            serde_json::from_value::<model::access::TokenRecord>(value.clone())
                .map(|_| ())
                .map_err(|e| format!("{token}: {e}"))
        }
        other => Err(format!("unknown setting {other:?}")),
    }
}

/// Should `incoming` replace `current`?
pub fn wins(incoming: &Setting, current: Option<&Setting>) -> bool {
    current.is_none_or(|c| incoming.stamp > c.stamp)
}

/// Applies changes to a set of settings; returns the keys that changed.
pub fn merge(into: &mut BTreeMap<String, Setting>, changes: impl IntoIterator<Item = Setting>) -> Vec<String> {
    let mut changed = Vec::new();
    for s in changes {
        if wins(&s, into.get(&s.key)) {
            changed.push(s.key.clone());
            into.insert(s.key.clone(), s);
        }
    }
    changed
}

/// A short digest of a set of settings (their keys and stamps).
pub fn digest<'a>(settings: impl IntoIterator<Item = &'a Setting>) -> String {
    let stamps: Vec<(String, String)> = settings.into_iter().map(|s| (s.key.clone(), s.stamp.to_string())).collect();
    digest_of(stamps.iter().map(|(k, st)| (k.as_str(), st.as_str())))
}

/// [`digest`] from keys and stamps as stored (text), without parsing the
/// values: what a heartbeat computes every round.
pub fn digest_of<'a>(keys_and_stamps: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    let mut items: Vec<(&str, &str)> = keys_and_stamps.into_iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    for (key, stamp) in items {
        h.update(key.as_bytes());
        h.update([0]);
        h.update(stamp.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::NodeId;
    use serde_json::json;

    fn set(key: &str, value: serde_json::Value, wall: u64, node: &str) -> Setting {
        Setting { key: key.into(), value, stamp: Hlc { wall_ms: wall, counter: 0, node: NodeId(node.into()) } }
    }

    /// Concurrent changes arriving in every order, repeated, converge.
    #[test]
    fn the_digest_of_stored_text_equals_the_digest_of_parsed_settings() {
        let a = set("retention.days", json!(30), 5, "n1");
        let b = set("user.alice", json!({"role": "admin"}), 7, "n2");
        let stored = [(b.key.clone(), b.stamp.to_string()), (a.key.clone(), a.stamp.to_string())];
        assert_eq!(digest([&a, &b]), digest_of(stored.iter().map(|(k, s)| (k.as_str(), s.as_str()))));
        assert_ne!(digest([&a]), digest([&a, &b]));
    }

    #[test]
    fn last_writer_wins_in_any_order() {
        let changes = vec![
            set("retention.days", json!(30), 100, "a"),
            set("retention.days", json!(90), 200, "b"),
            set("retention.days", json!(60), 200, "a"), // same millisecond: node id decides (b > a)
            set("sources.allowed", json!(["10.0.0.0/8"]), 150, "c"),
        ];
        let mut results = Vec::new();
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..50 {
            let mut order = changes.clone();
            rng.shuffle(&mut order);
            order.extend(changes.iter().take(rng.usize(0..4)).cloned()); // duplicates
            let mut s = BTreeMap::new();
            merge(&mut s, order);
            results.push(s);
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(results[0]["retention.days"].value, json!(90));
        assert_eq!(digest(results[0].values()), digest(results[1].values()));
        let mut other = results[0].clone();
        merge(&mut other, [set("retention.days", json!(7), 300, "c")]);
        assert_ne!(digest(other.values()), digest(results[0].values()));
    }

    #[test]
    fn values_are_checked() {
        assert!(validate("retention.days", &json!(30)).is_ok());
        assert!(validate("retention.days", &json!("30")).is_err());
        assert!(validate("sources.allowed", &json!(["10.0.0.0/8", "::1/128"])).is_ok());
        assert!(validate("sources.allowed", &json!(["nope"])).is_err());
        assert!(validate("colour", &json!(1)).is_err());
    }
}
