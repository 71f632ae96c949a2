//! TLS pieces shared by SIP over TLS and the cluster API (rustls, ring
//! provider): PEM files read into rustls types, and server settings that a
//! reload (SIGHUP) replaces whole — connections accepted from then on use
//! the new certificate, open ones keep theirs.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use tokio_rustls::TlsAcceptor;

pub fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("certificates in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

pub fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading the private key from {}", path.display()))
}

pub fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).with_context(|| format!("CA certificate in {}", path.display()))?;
    }
    Ok(store)
}

/// A server's TLS settings, replaced whole by a reload.
#[derive(Clone)]
pub struct ServerTls(Arc<std::sync::RwLock<TlsAcceptor>>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    pub fn new(acceptor: TlsAcceptor) -> ServerTls {
        ServerTls(Arc::new(std::sync::RwLock::new(acceptor)))
    }

    pub fn current(&self) -> TlsAcceptor {
        self.0.read().expect("acceptor lock").clone()
    }

    pub fn replace(&self, acceptor: TlsAcceptor) {
        *self.0.write().expect("acceptor lock") = acceptor;
    }
}

/// Whether a TLS client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts<'a> {
    /// No client certificates asked for.
    None,
    /// Every client presents one signed by this CA.
    Required(&'a Path),
    /// A client may present one; if it does, this CA must have signed it
    /// (the caller decides per source who must).
    Optional(&'a Path),
}

/// A server config from certificate and key files and a client
/// certificate policy.
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    clients: ClientCerts,
    alpn: &[&[u8]],
) -> anyhow::Result<TlsAcceptor> {
    let builder = rustls::ServerConfig::builder();
    let builder = match clients {
        ClientCerts::Required(ca) | ClientCerts::Optional(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(ca)?));
            let verifier =
                if matches!(clients, ClientCerts::Optional(_)) { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().context("client certificate verifier")?)
        }
        ClientCerts::None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(cert)?, key(key_path)?).context("the TLS certificate and key")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}
