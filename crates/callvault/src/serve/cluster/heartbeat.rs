//! Heartbeats and settings: every interval this worker sends this node's
//! status to every peer and learns theirs (membership, the leader), pushes
//! changed settings at once, and pulls a peer's settings when its digest
//! differs from ours — so a change on any node reaches every node within
//! a heartbeat or two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use background::{WorkState, Worker, WorkerStatus};
use cluster::{NodeStatus, Setting};

use super::settings::{all_settings, merge_settings};
use super::{now_ms, Cluster};

/// A peer's answer to a heartbeat: its status and the peers it sees alive.
#[derive(Debug, serde::Deserialize)]
struct HeartbeatReply {
    status: NodeStatus,
    #[serde(default)]
    peers: Vec<String>,
}

pub struct Heartbeat {
    c: Arc<Cluster>,
    interval: Duration,
    next: Instant,
    push_settings: bool,
    rounds: u64,
}

impl Heartbeat {
    pub fn new(c: Arc<Cluster>) -> Heartbeat {
        let interval = Duration::from_millis(c.cfg.heartbeat_ms.max(100));
        Heartbeat { c, interval, next: Instant::now(), push_settings: true, rounds: 0 }
    }

    async fn round(&mut self) {
        // Settings written to the database directly (the `callvault users`
        // command) change the digest too, so peers notice and pull them.
        super::settings::refresh_digest(&self.c).await;
        let me = self.c.my_status();
        let urls = self.c.membership.lock().expect("membership lock").urls();
        let body = serde_json::to_value(&me).expect("status serializes");
        let settings = if self.push_settings { Some(all_settings(&self.c).await) } else { None };
        let mut tasks = Vec::new();
        for url in urls {
            let (c, body, settings) = (self.c.clone(), body.clone(), settings.clone());
            tasks.push(tokio::task::spawn_blocking(move || {
                let r = c.client.json("POST", &url, "/cluster/v1/heartbeat", Some(&body));
                let pushed = settings.map(|s| {
                    c.client.json("PUT", &url, "/cluster/v1/settings", Some(&serde_json::to_value(s).expect("json")))
                });
                (url, r, pushed)
            }));
        }
        let mine = self.c.settings_digest.lock().expect("digest lock").clone();
        let mut pull_from = Vec::new();
        let mut learnt = Vec::new();
        let mut newly_known = Vec::new();
        for t in tasks {
            let Ok((url, r, _)) = t.await else { continue };
            let now = Instant::now();
            match r.map(|reply| (reply.ok(), serde_json::from_slice::<HeartbeatReply>(&reply.body), reply)) {
                Ok((true, Ok(HeartbeatReply { status, peers }), _)) => {
                    if status.settings_digest != mine && !status.settings_digest.is_empty() {
                        pull_from.push(url.clone());
                    }
                    let new_node = self.c.known_nodes.lock().expect("known nodes lock").insert(status.node.0.clone());
                    if new_node && status.node != self.c.me {
                        newly_known.push(status.node.0.clone());
                    }
                    let mut m = self.c.membership.lock().expect("membership lock");
                    m.heard(now, &url, status);
                    for p in peers {
                        if p != self.c.url && m.add(&p) {
                            learnt.push(p);
                        }
                    }
                }
                Ok((_, _, reply)) => {
                    let why = reply.describe();
                    tracing::debug!(url = %url, error = %why, "heartbeat refused");
                    self.c.membership.lock().expect("membership lock").failed(&url, why);
                }
                Err(e) => self.c.membership.lock().expect("membership lock").failed(&url, e),
            }
        }
        for node in newly_known {
            if let Err(e) = self.c.index.note_node(&node, now_ms()).await {
                tracing::warn!(error = %e, "could not remember the node");
            }
        }
        for url in learnt {
            tracing::info!(url = %url, "learnt a peer from another node");
            if let Err(e) = self.c.index.add_peer(&url, now_ms()).await {
                tracing::warn!(error = %e, "could not remember the peer");
            }
        }
        self.push_settings = false;
        for url in pull_from {
            let c = self.c.clone();
            let got =
                tokio::task::spawn_blocking(move || c.client.json("GET", &url, "/cluster/v1/settings", None)).await;
            if let Ok(Ok(reply)) = got {
                if let Ok(list) = serde_json::from_slice::<Vec<Setting>>(&reply.body) {
                    if let Err(e) = merge_settings(&self.c, list).await {
                        tracing::warn!(error = %e, "settings from a peer refused");
                    }
                }
            }
        }
        let was = self.c.leader.lock().expect("leader lock").clone();
        let leads = self.c.is_leader();
        let now_leader = self.c.leader.lock().expect("leader lock").clone();
        if was != now_leader {
            tracing::info!(leader = ?now_leader, this_node = leads, "job leader changed");
        }
        self.rounds += 1;
    }
}

#[async_trait]
impl Worker for Heartbeat {
    fn name(&self) -> String {
        "cluster-heartbeat".into()
    }

    async fn work(&mut self) -> Result<WorkState, String> {
        let now = Instant::now();
        if now < self.next && !self.push_settings {
            return Ok(WorkState::Idle);
        }
        self.next = now + self.interval;
        self.round().await;
        Ok(WorkState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let until = tokio::time::Instant::from_std(self.next);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.c.settings_changed.notified() => self.push_settings = true,
        }
    }

    fn status(&self) -> WorkerStatus {
        let view = self.c.membership.lock().expect("membership lock").view(Instant::now());
        let alive = view.iter().filter(|p| p.alive).count();
        WorkerStatus {
            progress: Some(format!("{alive} of {} peers alive, {} rounds", view.len(), self.rounds)),
            ..Default::default()
        }
    }
}
