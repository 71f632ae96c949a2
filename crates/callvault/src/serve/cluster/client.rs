//! Talking to peers: signed HTTP requests to their cluster API.
//!
//! `ureq` (blocking, small) on blocking threads: the calls are few per
//! second and the large ones stream files, which is blocking work anyway.
//! Every request carries the HMAC of the cluster secret (cluster::auth).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use cluster::auth::{self, Signed};
use model::NodeId;

/// A peer's answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A short description of a failed answer, for logs and queue errors.
    pub fn describe(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        format!("HTTP {}: {}", self.status, text.chars().take(200).collect::<String>())
    }
}

/// A streamed answer: status, headers, body reader.
pub type StreamReply = (u16, Vec<(String, String)>, Box<dyn Read + Send>);

/// Signs and sends requests to peers.
#[derive(Clone)]
pub struct PeerClient {
    /// Replaced whole when the TLS files are reloaded (SIGHUP).
    agent: Arc<std::sync::RwLock<ureq::Agent>>,
    timeout: Duration,
    secret: Arc<Vec<u8>>,
    me: NodeId,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient").field("me", &self.me).finish()
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl PeerClient {
    pub fn new(me: NodeId, secret: Vec<u8>, timeout: Duration, tls: Option<ureq::tls::TlsConfig>) -> PeerClient {
        let agent = Arc::new(std::sync::RwLock::new(Self::agent(timeout, tls)));
        PeerClient { agent, timeout, secret: Arc::new(secret), me }
    }

    fn agent(timeout: Duration, tls: Option<ureq::tls::TlsConfig>) -> ureq::Agent {
        let mut cfg = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_idle_connections_per_host(4);
        if let Some(tls) = tls {
            cfg = cfg.tls_config(tls);
        }
        cfg.build().new_agent()
    }

    /// New TLS settings (reloaded certificate, key or CA) for the requests
    /// that start from now on; those in flight finish on the old ones.
    pub fn replace_tls(&self, tls: Option<ureq::tls::TlsConfig>) {
        *self.agent.write().expect("agent lock") = Self::agent(self.timeout, tls);
    }

    fn current(&self) -> ureq::Agent {
        self.agent.read().expect("agent lock").clone()
    }

    fn signed_headers(&self, method: &str, path: &str, content_sha256: &str) -> Vec<(&'static str, String)> {
        let time_ms = now_ms();
        let signed = Signed { method, path_and_query: path, node: &self.me.0, time_ms, content_sha256 };
        vec![
            (auth::HEADER_NODE, self.me.0.clone()),
            (auth::HEADER_TIME, time_ms.to_string()),
            (auth::HEADER_CONTENT, content_sha256.to_owned()),
            (auth::HEADER_SIGNATURE, auth::sign(&self.secret, &signed)),
        ]
    }

    /// `method` `base` + `path` with `body`; `extra` headers are not signed
    /// (they carry nothing the body digest does not cover, or are hints).
    pub fn send(
        &self,
        method: &str,
        base: &str,
        path: &str,
        body: Option<&[u8]>,
        extra: &[(&str, String)],
        limit: u64,
    ) -> Result<Reply, String> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let sha = body.map(auth::content_sha256).unwrap_or_else(|| auth::EMPTY_SHA256.to_owned());
        let headers = self.signed_headers(method, path, &sha);
        let result = match method {
            "GET" | "DELETE" => {
                let agent = self.current();
                let mut r = if method == "GET" { agent.get(&url) } else { agent.delete(&url) };
                for (k, v) in headers.iter().map(|(k, v)| (*k, v)).chain(extra.iter().map(|(k, v)| (*k, v))) {
                    r = r.header(k, v);
                }
                r.call()
            }
            _ => {
                let mut r = match method {
                    "PUT" => self.current().put(&url),
                    _ => self.current().post(&url),
                };
                for (k, v) in headers.iter().map(|(k, v)| (*k, v)).chain(extra.iter().map(|(k, v)| (*k, v))) {
                    r = r.header(k, v);
                }
                r.send(body.unwrap_or(&[]))
            }
        };
        let mut resp = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let body =
            resp.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| format!("{method} {url}: {e}"))?;
        Ok(Reply { status, body })
    }

    /// An audio chunk, signed without its body digest (the signed query
    /// carries the whole file's SHA-256, which the target checks).
    pub fn put_chunk(&self, base: &str, path: &str, body: &[u8]) -> Result<Reply, String> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut r = self.current().put(&url).header("content-type", "application/octet-stream");
        for (k, v) in self.signed_headers("PUT", path, auth::UNSIGNED_PAYLOAD) {
            r = r.header(k, v);
        }
        let mut resp = r.send(body).map_err(|e| format!("PUT {url}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(1 << 20).read_to_vec().map_err(|e| format!("PUT {url}: {e}"))?;
        Ok(Reply { status, body })
    }

    /// JSON request and answer (small bodies).
    pub fn json(
        &self,
        method: &str,
        base: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, String> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON serializes"));
        let ct = [("content-type", "application/json".to_owned())];
        self.send(method, base, path, bytes.as_deref(), if bytes.is_some() { &ct } else { &[] }, 64 * 1024 * 1024)
    }

    /// A GET whose body is read as a stream (audio): status, headers, reader.
    pub fn get_stream(&self, base: &str, path: &str, range: Option<&str>) -> Result<StreamReply, String> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut r = self.current().get(&url);
        for (k, v) in self.signed_headers("GET", path, auth::EMPTY_SHA256) {
            r = r.header(k, v);
        }
        if let Some(range) = range {
            r = r.header("range", range);
        }
        let resp = r.call().map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
            .collect();
        Ok((status, headers, Box::new(resp.into_body().into_reader())))
    }
}
