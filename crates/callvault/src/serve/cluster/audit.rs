//! Copies every peer's audit trail to this node, so an auditor on any node
//! searches every node's trail and a lost node's trail survives. Each peer
//! serves its own entries after a sequence number (`GET /cluster/v1/audit`);
//! a batch is stored only when it continues the chain held so far (checked
//! with `model::access::audit_verify`), so a peer whose trail was altered
//! after we copied it is reported, and what we hold stays as it was.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use background::{WorkState, Worker, WorkerStatus};
use model::access::{audit_verify, AuditRecord};

use super::Cluster;

/// Entries per request.
pub const BATCH: u32 = 1000;

pub struct AuditCopy {
    c: Arc<Cluster>,
    interval: Duration,
    next: Instant,
    copied: u64,
    last_problem: Option<String>,
}

impl AuditCopy {
    pub fn new(c: Arc<Cluster>) -> AuditCopy {
        // As often as the heartbeat (at most every 5 s): the trails are small.
        let interval = Duration::from_millis(c.cfg.heartbeat_ms.clamp(100, 5_000));
        AuditCopy { c, interval, next: Instant::now(), copied: 0, last_problem: None }
    }

    /// Copies what `node` (at `url`) has beyond what we hold; returns how
    /// many entries were stored.
    async fn copy_from(&mut self, node: &str, url: &str) -> Result<u64, String> {
        let access = self.c.access.clone().ok_or("no access store")?;
        let mut head = access.audit_replica_head(node).await.map_err(|e| e.to_string())?;
        let mut stored = 0;
        loop {
            let after = head.as_ref().map_or(0, |h| h.0);
            let (c, u) = (self.c.clone(), url.to_owned());
            let path = format!("/cluster/v1/audit?after={after}");
            let reply = tokio::task::spawn_blocking(move || c.client.json("GET", &u, &path, None))
                .await
                .map_err(|e| e.to_string())??;
            if !reply.ok() {
                return Err(reply.describe());
            }
            let batch: Vec<AuditRecord> = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
            if batch.is_empty() {
                return Ok(stored);
            }
            match audit_verify(head.clone(), &batch) {
                Ok(new_head) => {
                    access.audit_put_replica(node, &batch).await.map_err(|e| e.to_string())?;
                    stored += batch.len() as u64;
                    head = new_head;
                }
                Err(b) => {
                    self.c.counters.audit_chain_breaks.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("the audit trail of {node} breaks at entry {}: {}", b.seq, b.why));
                }
            }
            if batch.len() < BATCH as usize {
                return Ok(stored);
            }
        }
    }
}

#[async_trait]
impl Worker for AuditCopy {
    fn name(&self) -> String {
        "audit-copy".into()
    }

    async fn work(&mut self) -> Result<WorkState, String> {
        if Instant::now() < self.next {
            return Ok(WorkState::Idle);
        }
        self.next = Instant::now() + self.interval;
        let peers: Vec<(String, String)> = self
            .c
            .membership
            .lock()
            .expect("membership lock")
            .view(Instant::now())
            .into_iter()
            .filter(|p| p.alive)
            .filter_map(|p| Some((p.status?.node.0, p.url)))
            .filter(|(node, _)| *node != self.c.me.0)
            .collect();
        let mut problem = None;
        for (node, url) in peers {
            match self.copy_from(&node, &url).await {
                Ok(n) => {
                    self.copied += n;
                    self.c.counters.audit_copied.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(node, error = %e, "copying a peer's audit trail");
                    problem = Some(e);
                }
            }
        }
        self.last_problem = problem.clone();
        match problem {
            Some(e) => Err(e),
            None => Ok(WorkState::Idle),
        }
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(self.next)).await;
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            items_done: self.copied,
            last_item_error: self.last_problem.clone(),
            progress: Some(format!("{} entries copied from peers", self.copied)),
            ..Default::default()
        }
    }
}
