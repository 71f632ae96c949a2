//! TLS on the inter-node API (rustls, ring provider): for links between
//! sites. Each node has a certificate and key for its cluster API; every
//! node trusts the cluster's CA (`tls_ca`) for its peers' certificates;
//! with `tls_client_auth` a peer must also present a certificate signed
//! by that CA (mutual TLS) before any request is read. The HMAC request
//! signature is checked either way.
//!
//! Serving is hyper's connection builder over a rustls stream (axum's
//! `serve` takes plain TCP only); the client side is ureq's rustls with
//! the cluster CA as the only root.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::ClusterConfig;

pub use crate::serve::tls::ServerTls;

/// The server side, when the configuration asks for TLS.
pub fn acceptor(cfg: &ClusterConfig) -> anyhow::Result<Option<TlsAcceptor>> {
    let (Some(cert), Some(key_path), Some(ca)) = (&cfg.tls_cert, &cfg.tls_key, &cfg.tls_ca) else { return Ok(None) };
    use crate::serve::tls::ClientCerts;
    let clients = if cfg.tls_client_auth { ClientCerts::Required(ca.as_path()) } else { ClientCerts::None };
    crate::serve::tls::server_config(cert, key_path, clients, &[b"http/1.1"]).map(Some)
}

/// The client side: trust only the cluster CA; present our certificate
/// when the cluster uses mutual TLS.
pub fn client_config(cfg: &ClusterConfig) -> anyhow::Result<Option<ureq::tls::TlsConfig>> {
    let Some(ca) = &cfg.tls_ca else { return Ok(None) };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let ca_pem = read(ca)?;
    let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&ca_pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if roots.is_empty() {
        anyhow::bail!("no CA certificate in {}", ca.display());
    }
    let mut builder = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        let chain_pem = read(cert)?;
        let chain: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&chain_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let key = ureq::tls::PrivateKey::from_pem(&read(key)?).context("the cluster TLS key")?;
        builder = builder.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    Ok(Some(builder.build()))
}

/// Serves `app` over TLS on `listener` until the process ends. A failed
/// handshake (wrong CA, no client certificate) is logged and the
/// connection dropped; nothing is read from it.
pub async fn serve(listener: TcpListener, tls: ServerTls, app: Router) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cluster API accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app) = (tls.current(), app.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "refused a cluster connection: TLS handshake failed");
                    return;
                }
            };
            let app = app.layer(axum::Extension(ConnectInfo::<SocketAddr>(peer)));
            let service = TowerToHyperService::new(app);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "cluster connection ended");
            }
        });
    }
}
