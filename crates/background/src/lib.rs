//! One shape for background work (as garage's `background` module):
//! replication to each target, anti-entropy, the leader's jobs. A
//! [`Worker`] does one step of work per call and says whether more is
//! waiting; the [`Runner`] calls it, waits when it is idle, backs off when
//! it fails (1.5^n seconds, capped), and publishes its status to a
//! [`Registry`] that the HTTP API, the CLI and the metrics read. The
//! worker's own queue (the outbox in the index, say) is what makes the
//! work durable; the runner only drives it.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

/// What a step of work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkState {
    /// More is waiting: call again at once.
    Busy,
    /// More is waiting but not yet allowed (a window, a rate cap): call again after this.
    Throttled(Duration),
    /// Nothing to do: wait for work.
    Idle,
    /// Finished for good.
    Done,
}

/// A worker's own figures, shown as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkerStatus {
    /// Items waiting, when the worker has a queue.
    pub queue_length: Option<u64>,
    /// Age of the oldest waiting item, seconds.
    pub oldest_item_secs: Option<f64>,
    /// Bytes per second over the last steps, when it moves bytes.
    pub bytes_per_sec: Option<f64>,
    pub bytes_total: u64,
    pub items_done: u64,
    /// The last error of an item (the queue keeps retrying it).
    pub last_item_error: Option<String>,
    /// Free-form progress (e.g. an anti-entropy round).
    pub progress: Option<String>,
    /// Duration and bytes exchanged of the last complete run (periodic workers).
    pub last_run_ms: Option<u64>,
    pub last_run_bytes: Option<u64>,
}

/// Background work. See the crate docs.
#[async_trait]
pub trait Worker: Send {
    fn name(&self) -> String;
    /// One step; `Err` is a failure of the worker itself (not of one item,
    /// which the worker retries through its queue), and backs it off.
    async fn work(&mut self) -> Result<WorkState, String>;
    /// Returns when there may be work again (a notification or a timer).
    async fn wait_for_work(&mut self);
    fn status(&self) -> WorkerStatus;
}

/// What the registry knows of one worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub name: String,
    /// `busy`, `idle`, `throttled`, `backoff` or `done`.
    pub state: &'static str,
    /// Failures of the worker in a row (reset by a success).
    pub consecutive_errors: u32,
    pub errors_total: u64,
    pub last_error: Option<String>,
    pub status: WorkerStatus,
}

/// Every worker of the node and its latest status.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<String, WorkerInfo>>>,
}

impl Registry {
    pub fn list(&self) -> Vec<WorkerInfo> {
        self.inner.lock().expect("registry lock").values().cloned().collect()
    }

    fn publish(&self, info: WorkerInfo) {
        self.inner.lock().expect("registry lock").insert(info.name.clone(), info);
    }

    fn remove(&self, name: &str) {
        self.inner.lock().expect("registry lock").remove(name);
    }
}

/// Runs workers until the stop signal.
#[derive(Debug, Clone)]
pub struct Runner {
    registry: Registry,
    stop: watch::Receiver<bool>,
}

/// Delay after `n` failures in a row: 1.5^n seconds, at most ~57 s (n ≤ 10).
pub fn error_backoff(n: u32) -> Duration {
    Duration::from_secs_f64(1.5f64.powi(n.min(10) as i32))
}

impl Runner {
    pub fn new(registry: Registry, stop: watch::Receiver<bool>) -> Runner {
        Runner { registry, stop }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Starts `worker` on the runtime.
    pub fn spawn(&self, mut worker: impl Worker + 'static) -> tokio::task::JoinHandle<()> {
        let registry = self.registry.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let name = worker.name();
            let mut info = WorkerInfo {
                name: name.clone(),
                state: "idle",
                consecutive_errors: 0,
                errors_total: 0,
                last_error: None,
                status: worker.status(),
            };
            let mut last_publish = Instant::now() - Duration::from_secs(1);
            loop {
                if *stop.borrow() {
                    break;
                }
                let result = worker.work().await;
                let mut pause = None;
                match result {
                    Ok(WorkState::Busy) => {
                        info.state = "busy";
                        info.consecutive_errors = 0;
                    }
                    Ok(WorkState::Throttled(d)) => {
                        info.state = "throttled";
                        info.consecutive_errors = 0;
                        pause = Some(d);
                    }
                    Ok(WorkState::Idle) => {
                        info.state = "idle";
                        info.consecutive_errors = 0;
                    }
                    Ok(WorkState::Done) => {
                        info.state = "done";
                        info.status = worker.status();
                        registry.publish(info.clone());
                        break;
                    }
                    Err(e) => {
                        info.consecutive_errors += 1;
                        info.errors_total += 1;
                        tracing::warn!(worker = %name, error = %e, failures = info.consecutive_errors, "background worker failed; backing off");
                        info.last_error = Some(e);
                        info.state = "backoff";
                        pause = Some(error_backoff(info.consecutive_errors));
                    }
                }
                // Publishing takes a lock: at most a few times a second while busy.
                if info.state != "busy" || last_publish.elapsed() >= Duration::from_millis(200) {
                    info.status = worker.status();
                    registry.publish(info.clone());
                    last_publish = Instant::now();
                }
                let idle = info.state == "idle";
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = async {
                        if let Some(d) = pause {
                            tokio::time::sleep(d).await;
                        } else if idle {
                            worker.wait_for_work().await;
                        } else {
                            tokio::task::yield_now().await;
                        }
                    } => {}
                }
            }
            if info.state != "done" {
                registry.remove(&name);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Countdown {
        left: u32,
        fail_first: u32,
        wake: Arc<tokio::sync::Notify>,
    }

    #[async_trait]
    impl Worker for Countdown {
        fn name(&self) -> String {
            "countdown".into()
        }
        async fn work(&mut self) -> Result<WorkState, String> {
            if self.fail_first > 0 {
                self.fail_first -= 1;
                return Err("disk on fire".into());
            }
            if self.left == 0 {
                return Ok(WorkState::Idle);
            }
            self.left -= 1;
            Ok(if self.left == 0 { WorkState::Idle } else { WorkState::Busy })
        }
        async fn wait_for_work(&mut self) {
            self.wake.notified().await;
        }
        fn status(&self) -> WorkerStatus {
            WorkerStatus { queue_length: Some(self.left as u64), ..Default::default() }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_until_idle_backs_off_on_errors_and_shows_its_status() {
        let (stop_tx, stop) = watch::channel(false);
        let runner = Runner::new(Registry::default(), stop);
        let wake = Arc::new(tokio::sync::Notify::new());
        let handle = runner.spawn(Countdown { left: 5, fail_first: 2, wake: wake.clone() });
        // Two failures: 1.5 s then 2.25 s of backoff (virtual time).
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let info = &runner.registry().list()[0];
        assert_eq!((info.state, info.consecutive_errors), ("backoff", 1));
        assert_eq!(info.last_error.as_deref(), Some("disk on fire"));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let info = &runner.registry().list()[0];
        assert_eq!(info.state, "idle");
        assert_eq!((info.errors_total, info.consecutive_errors), (2, 0));
        assert_eq!(info.status.queue_length, Some(0));
        stop_tx.send(true).unwrap();
        handle.await.unwrap();
        assert!(runner.registry().list().is_empty(), "a stopped worker leaves the registry");
        assert_eq!(error_backoff(2), Duration::from_secs_f64(2.25));
        assert!(error_backoff(50) < Duration::from_secs(60));
    }
}
