//! The HTTP API's accept loop. A flood of idle connections must not take
//! the descriptors calls need: connections beyond `http.max_connections`
//! are closed at once, and a connection that sends no (next) request within
//! `http.idle_timeout_secs` is closed by hyper's header-read timeout.
//! Served by hyper's HTTP/1.1 connection builder.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub idle: Duration,
}

/// Connection counts, for metrics.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub open: AtomicU64,
    pub refused: AtomicU64,
}

pub async fn serve(listener: TcpListener, app: Router, limits: HttpLimits, stats: Arc<HttpStats>) {
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut last_warning = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if last_warning.elapsed() >= Duration::from_secs(10) {
                tracing::warn!(peer = %peer, max = limits.max_connections, "HTTP connection refused: connection cap reached");
                last_warning = std::time::Instant::now();
            }
            drop(tcp);
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let (app, stats) = (app.clone(), stats.clone());
        tokio::spawn(async move {
            let app = app.layer(axum::Extension(ConnectInfo::<SocketAddr>(peer)));
            let service = TowerToHyperService::new(app);
            // HTTP/1.1 only: the version sniffing of an auto builder waits
            // for a first byte without any timeout.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "HTTP connection ended");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(place);
        });
    }
}
