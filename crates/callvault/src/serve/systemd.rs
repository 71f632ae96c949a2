//! systemd integration for `Type=notify` units (the `sd-notify` crate, a
//! small pure-Rust client of the notification socket): READY once every
//! listener is bound and recovery is done, RELOADING/READY around a SIGHUP
//! reload, STOPPING at shutdown, and watchdog pings sent only while the
//! recorder core answers, so systemd restarts a node whose core is stuck
//! instead of being told it is fine. Without `$NOTIFY_SOCKET` (not under
//! systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

use super::core::{status, AdminTx};

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

pub fn ready(summary: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(summary)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: ending calls in progress")]);
}

/// Pings the watchdog at half its interval while the core answers within
/// a quarter of it; a core that does not answer gets no ping (and a log
/// line), so systemd's `WatchdogSec` restarts the node.
pub fn spawn_watchdog(admin: AdminTx) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let interval = Duration::from_micros(usec);
    tracing::info!(watchdog_ms = interval.as_millis() as u64, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tick.tick().await;
            match tokio::time::timeout(interval / 4, status(&admin)).await {
                Ok(Some(_)) => send(&[NotifyState::Watchdog]),
                _ => tracing::error!("recorder core did not answer: withholding the systemd watchdog ping"),
            }
        }
    });
}
