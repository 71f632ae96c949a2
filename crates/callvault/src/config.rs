//! Node configuration: built-in defaults, then an optional TOML file, then
//! `CALLVAULT_*` environment variables (`__` separates sections, e.g.
//! `CALLVAULT_SIP__UDP=0.0.0.0:5070`), then command-line flags.
//! Every key is documented in `docs/configuration.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of this node; generated and remembered in the data directory if unset.
    pub node_id: Option<String>,
    /// Where audio, metadata and the database live.
    pub data_dir: PathBuf,
    pub sip: SipConfig,
    pub media: MediaConfig,
    pub http: HttpConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
}

/// The cluster: peers, trust, replication targets, timing. A node with no
/// `listen` address is a single node (no cluster API, nothing replicated).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Listen address of the inter-node API, e.g. `0.0.0.0:7070`; empty: no cluster.
    pub listen: String,
    /// URL peers reach this node at (default: `http://` + the listen address).
    pub advertise_url: Option<String>,
    /// Cluster API URLs of other nodes (seeds); nodes that announce
    /// themselves are added and remembered.
    pub peers: Vec<String>,
    /// The shared secret every node of the cluster has (or `secret_file`).
    pub secret: Option<String>,
    /// A file holding the secret (first line); wins over `secret`.
    pub secret_file: Option<PathBuf>,
    /// Data-centre / site name, shown in status and used to prefer local copies.
    pub site: String,
    /// 1 is preferred: the live node with the lowest number runs the maintenance jobs.
    pub priority: u32,
    /// Milliseconds between heartbeats to each peer.
    pub heartbeat_ms: u64,
    /// A peer not heard from for this long is dead (ms).
    pub dead_after_ms: u64,
    /// A node must have been up this long before it takes the job lease (ms).
    pub leader_hold_down_ms: u64,
    /// Requests and clock stamps further than this from our clock are refused (ms).
    pub max_clock_skew_ms: u64,
    /// Seconds between anti-entropy rounds with each peer.
    pub anti_entropy_secs: u64,
    /// Days a deletion (tombstone) is remembered; a node offline longer is
    /// quarantined until it pulled the tombstones (docs/cluster.md).
    pub tombstone_horizon_days: u64,
    /// Hours between integrity scrubs of the stored audio (0 = never).
    pub scrub_interval_hours: u64,
    /// Seconds between retention passes of the job leader.
    pub retention_check_secs: u64,
    /// Per-target replication settings, by node id; targets not listed
    /// take audio continuously without a cap.
    pub targets: std::collections::BTreeMap<String, TargetConfig>,
    /// Only replicate to the nodes listed in `targets` (default: every peer).
    pub only_listed_targets: bool,
    /// PEM certificate (chain) and key of this node's cluster API: TLS on.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that sign every node's certificate.
    pub tls_ca: Option<PathBuf>,
    /// Peers must present a certificate signed by `tls_ca` (mutual TLS).
    pub tls_client_auth: bool,
}

/// How one target takes audio.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TargetConfig {
    /// Daily windows (`"01:00-05:00"`) when audio may be sent; empty = continuous.
    pub windows: Vec<String>,
    /// IANA time zone of the windows.
    pub timezone: String,
    /// Bandwidth cap in kbit/s (0 = none).
    pub bandwidth_kbps: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// UDP listen address; empty disables UDP.
    pub udp: String,
    /// TCP listen address; empty disables TCP.
    pub tcp: String,
    /// SIP over TLS listen address (e.g. `0.0.0.0:5061`); empty disables it.
    pub tls: String,
    /// Certificate chain and private key (PEM) for SIP over TLS; reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// With a CA file (PEM), every SIP TLS client must present a
    /// certificate it signed (mutual TLS), or only those of
    /// `tls_client_cert_from` when that list is set.
    pub tls_client_ca: Option<PathBuf>,
    /// Sources (CIDR) that must present a client certificate signed by
    /// `tls_client_ca`; others may connect without one (a certificate they
    /// do present is still checked). Empty: every client must.
    pub tls_client_cert_from: Vec<IpNet>,
    /// Address written into SDP and Contact (defaults to the address the
    /// request was sent to, or the listen address).
    pub advertised_address: Option<IpAddr>,
    /// Networks allowed to send recording sessions (CIDR); empty allows all.
    pub allowed_sources: Vec<IpNet>,
    /// Active recordings above which new calls get 503 (0 = unlimited).
    pub max_calls: usize,
    /// Seconds in the Retry-After of a 503.
    pub retry_after_secs: u32,
    /// Smallest accepted Session-Expires (RFC 4028), seconds.
    pub min_session_expires_secs: u32,
    /// Largest SIP message accepted over TCP, bytes.
    pub max_message_bytes: usize,
    /// RFC 3261 T1 in milliseconds (retransmission base).
    pub t1_ms: u64,
    /// SO_RCVBUF of the SIP UDP socket, bytes: absorbs INVITE bursts (a
    /// platform failing over sends hundreds at once). Capped by net.core.rmem_max.
    pub udp_recv_buffer_bytes: usize,
    /// Open SIP TCP connections at most, in total (0 = derived from the
    /// open-files limit, keeping room for calls, storage and HTTP).
    pub max_tcp_connections: usize,
    /// Open SIP TCP connections at most from one source address.
    pub max_tcp_connections_per_source: usize,
    /// A SIP TCP connection with no traffic for this long is closed, seconds
    /// (RFC 5626 CRLF keepalives count as traffic).
    pub tcp_idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address RTP sockets bind to.
    pub bind: IpAddr,
    /// First and last port of the RTP range (even ports carry RTP, odd RTCP).
    pub port_min: u16,
    pub port_max: u16,
    /// Ingest threads.
    pub threads: usize,
    /// Seconds without RTP (on streams not on hold) before a call is completed.
    pub media_timeout_secs: u64,
    /// Seconds after its start a stream without any RTP raises an alarm
    /// (metadata, metric, health details); the call goes on recording.
    pub no_rtp_alarm_secs: u64,
    /// Milliseconds audio is held for reordering before it is written.
    pub playout_delay_ms: u64,
    /// Milliseconds between fdatasync of recording files (0 = never; a
    /// killed process still loses nothing the kernel has).
    pub sync_interval_ms: u64,
    /// SO_RCVBUF for each RTP socket, bytes (0 = system default).
    pub recv_buffer_bytes: usize,
    /// `accept`: plain RTP and SRTP (SDES) offers; `require`: plain offers get 488.
    pub srtp: SrtpMode,
    /// Rate of recordings whose codecs include a wideband one (G.722,
    /// Opus): 16000 keeps their bandwidth, 8000 writes every call as
    /// narrowband (half the disk). Narrowband-only calls are always 8000.
    pub max_sample_rate: u32,
}

/// Which media protection calls must use.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SrtpMode {
    #[default]
    Accept,
    Require,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// HTTP listen address (health, API, metrics); empty disables it.
    pub listen: String,
    /// Open HTTP connections at most; more are closed at once.
    pub max_connections: usize,
    /// A connection that sends no (next) request for this long is closed.
    pub idle_timeout_secs: u64,
    /// How long a sign-in lasts, seconds (then the user signs in again).
    pub session_timeout_secs: u64,
    /// Mark the session cookie `Secure`: set it when the UI is reached over
    /// HTTPS (a TLS-terminating reverse proxy in front of the node).
    pub secure_cookies: bool,
    /// Serve /metrics without authentication (Prometheus on a trusted
    /// network); otherwise scrape it with an admin API token.
    pub public_metrics: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// New calls are refused (503) when the data directory has less free space, MiB.
    pub min_free_mib: u64,
    /// Seconds between storage health probes.
    pub probe_interval_secs: u64,
    /// A new call whose metadata is not fsynced within this many ms is
    /// refused with 503 (the 200 OK waits for it).
    pub metadata_save_timeout_ms: u64,
    /// New calls are refused (503 "Storage too slow") while more audio
    /// than this waits for the disk, MiB; taken again below half of it.
    pub max_write_backlog_mib: u64,
    /// New calls are refused (503 "Storage too slow") while this many
    /// answers already wait for their metadata fsync.
    pub max_pending_saves: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// tracing filter, e.g. `info` or `callvault=debug,info`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            data_dir: PathBuf::from("callvault-data"),
            sip: SipConfig::default(),
            media: MediaConfig::default(),
            http: HttpConfig::default(),
            storage: StorageConfig::default(),
            log: LogConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: "0.0.0.0:5060".into(),
            tcp: "0.0.0.0:5060".into(),
            tls: String::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_cert_from: Vec::new(),
            advertised_address: None,
            allowed_sources: Vec::new(),
            max_calls: 0,
            retry_after_secs: 60,
            min_session_expires_secs: 90,
            max_message_bytes: 65_535,
            t1_ms: 500,
            udp_recv_buffer_bytes: 4 * 1024 * 1024,
            max_tcp_connections: 0,
            max_tcp_connections_per_source: 256,
            tcp_idle_timeout_secs: 300,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind: IpAddr::from([0, 0, 0, 0]),
            port_min: 20_000,
            port_max: 29_999,
            threads: 1,
            media_timeout_secs: 30,
            no_rtp_alarm_secs: 10,
            playout_delay_ms: 200,
            sync_interval_ms: 1000,
            recv_buffer_bytes: 256 * 1024,
            srtp: SrtpMode::Accept,
            max_sample_rate: 16000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".into(),
            max_connections: 512,
            idle_timeout_secs: 60,
            session_timeout_secs: 8 * 3600,
            secure_cookies: false,
            public_metrics: false,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            min_free_mib: 256,
            probe_interval_secs: 5,
            metadata_save_timeout_ms: 4000,
            max_write_backlog_mib: 64,
            max_pending_saves: 512,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: String::new(),
            advertise_url: None,
            peers: Vec::new(),
            secret: None,
            secret_file: None,
            site: "default".into(),
            priority: 10,
            heartbeat_ms: 2000,
            dead_after_ms: 6000,
            leader_hold_down_ms: 10_000,
            max_clock_skew_ms: 300_000,
            anti_entropy_secs: 600,
            tombstone_horizon_days: 180,
            scrub_interval_hours: 168,
            retention_check_secs: 3600,
            targets: Default::default(),
            only_listed_targets: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_client_auth: false,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// The cluster secret, from `secret_file` or `secret`.
    pub fn secret(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(f) = &self.secret_file {
            let text =
                std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cluster.secret_file {}: {e}", f.display()))?;
            let line = text.lines().next().unwrap_or("").trim();
            if line.is_empty() {
                anyhow::bail!("cluster.secret_file {} is empty", f.display());
            }
            return Ok(line.as_bytes().to_vec());
        }
        match &self.secret {
            Some(s) if !s.is_empty() => Ok(s.as_bytes().to_vec()),
            _ => anyhow::bail!("cluster.listen is set but there is no cluster.secret or cluster.secret_file"),
        }
    }

    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    pub fn advertise(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        self.advertise_url.clone().unwrap_or_else(|| format!("{scheme}://{}", self.listen))
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), level: "info".into() }
    }
}

/// Every configuration key as a dotted path (`sip.udp`), from the defaults.
fn known_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v.as_object() {
            // A section (or a map whose entries are per-node settings).
            Some(map) if !map.is_empty() || prefix.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk("", &serde_json::to_value(Config::default()).expect("defaults serialize"), &mut out);
    out
}

/// Is `key` (dotted, lowercase) a configuration key? Per-target settings
/// (`cluster.targets.<node>.<key>`) are keys for any node name.
fn is_known_key(known: &[String], key: &str) -> bool {
    if let Some(rest) = key.strip_prefix("cluster.targets.") {
        return matches!(rest.rsplit_once('.'), Some((_, "windows" | "timezone" | "bandwidth_kbps")));
    }
    known.iter().any(|k| k == key)
}

impl Config {
    /// Defaults ← `file` (if any) ← environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let cfg: Config = Self::figment(file)?.extract()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The layered sources. Only `CALLVAULT_*` variables that name a
    /// documented key are read: others (an orchestrator's service links
    /// such as `CALLVAULT_PORT=tcp://…`, a typo) are ignored with a warning
    /// instead of stopping the node.
    pub fn figment(file: Option<&Path>) -> anyhow::Result<Figment> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("configuration file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        let known = known_keys();
        for (name, _) in std::env::vars() {
            let Some(rest) = name.strip_prefix("CALLVAULT_") else { continue };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if key != "config" && !is_known_key(&known, &key) {
                eprintln!(
                    "warning: ignoring environment variable {name}: not a callvault setting (docs/configuration.md)"
                );
            }
        }
        let env = Env::prefixed("CALLVAULT_")
            .split("__")
            .ignore(&["config"])
            .filter(move |k| is_known_key(&known, &k.as_str().to_ascii_lowercase()));
        Ok(fig.merge(env))
    }

    /// Every key's effective value and where it came from (`callvault config check`).
    pub fn explain(file: Option<&Path>) -> anyhow::Result<Vec<(String, String, String)>> {
        let fig = Self::figment(file)?;
        let cfg: Config = fig.extract()?;
        cfg.validate()?;
        let value = serde_json::to_value(&cfg)?;
        let mut out = Vec::new();
        fn walk(fig: &Figment, prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String, String)>) {
            match v.as_object() {
                Some(map) if !map.is_empty() => {
                    for (k, v) in map {
                        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                        walk(fig, &key, v, out);
                    }
                }
                _ => {
                    let source = fig
                        .find_metadata(prefix)
                        .map(|m| match (&m.source, m.name.contains("Config")) {
                            (_, true) => "default".to_owned(),
                            (Some(figment::Source::File(p)), _) => format!("file {}", p.display()),
                            _ => m.name.to_string(),
                        })
                        .unwrap_or_else(|| "default".into());
                    out.push((prefix.to_owned(), v.to_string(), source));
                }
            }
        }
        walk(&fig, "", &value, &mut out);
        Ok(out)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if ![8000, 16000].contains(&self.media.max_sample_rate) {
            anyhow::bail!("media.max_sample_rate must be 8000 or 16000");
        }
        if self.media.port_min >= self.media.port_max {
            anyhow::bail!("media.port_min must be below media.port_max");
        }
        if self.sip.udp.is_empty() && self.sip.tcp.is_empty() {
            anyhow::bail!("at least one of sip.udp and sip.tcp must be set");
        }
        if !self.sip.tls.is_empty() && (self.sip.tls_cert.is_none() || self.sip.tls_key.is_none()) {
            anyhow::bail!("sip.tls needs sip.tls_cert and sip.tls_key");
        }
        for (name, v) in [
            ("sip.udp", &self.sip.udp),
            ("sip.tcp", &self.sip.tcp),
            ("sip.tls", &self.sip.tls),
            ("http.listen", &self.http.listen),
        ] {
            if !v.is_empty() && v.parse::<SocketAddr>().is_err() {
                anyhow::bail!("{name} = {v:?} is not an address:port");
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            anyhow::bail!("log.format must be \"text\" or \"json\"");
        }
        let c = &self.cluster;
        if c.enabled() {
            if c.listen.parse::<SocketAddr>().is_err() {
                anyhow::bail!("cluster.listen = {:?} is not an address:port", c.listen);
            }
            c.secret()?;
            if c.advertise_url.is_none() && c.listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_unspecified()) {
                anyhow::bail!("cluster.listen binds all addresses: set cluster.advertise_url to the URL peers use");
            }
            match (&c.tls_cert, &c.tls_key, &c.tls_ca) {
                (None, None, None) => {
                    if c.tls_client_auth {
                        anyhow::bail!("cluster.tls_client_auth needs cluster.tls_cert, tls_key and tls_ca");
                    }
                }
                (Some(_), Some(_), Some(_)) => {}
                _ => anyhow::bail!("cluster TLS needs all of cluster.tls_cert, cluster.tls_key and cluster.tls_ca"),
            }
            if c.dead_after_ms <= c.heartbeat_ms {
                anyhow::bail!("cluster.dead_after_ms must be larger than cluster.heartbeat_ms");
            }
            for (node, t) in &c.targets {
                let zone = if t.timezone.is_empty() { "UTC" } else { &t.timezone };
                cluster::Schedule::parse(&t.windows, zone)
                    .map_err(|e| anyhow::anyhow!("cluster.targets.{node}: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file_and_file_and_env_override() {
        let dir = std::env::temp_dir().join(format!("cv-cfg-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("callvault.toml");
        std::fs::write(&f, "data_dir = \"/srv/rec\"\n[sip]\nudp = \"127.0.0.1:5070\"\nallowed_sources = [\"10.0.0.0/8\"]\n[media]\nport_min = 30000\nport_max = 31000\n").unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/rec"));
        assert_eq!(c.sip.udp, "127.0.0.1:5070");
        assert_eq!(c.sip.tcp, "0.0.0.0:5060", "untouched keys keep defaults");
        assert_eq!(c.sip.allowed_sources[0].to_string(), "10.0.0.0/8");
        std::fs::write(&f, "[sip]\nudpp = \"x\"\n").unwrap();
        assert!(Config::load(Some(&f)).is_err(), "unknown keys are errors");
        std::fs::write(&f, "[media]\nport_min = 5\nport_max = 4\n").unwrap();
        assert!(Config::load(Some(&f)).is_err());
        assert!(Config::load(Some(&dir.join("missing.toml"))).is_err());
        assert!(is_known_key(&known_keys(), "sip.udp") && is_known_key(&known_keys(), "cluster.targets.rec-b.windows"));
        assert!(!is_known_key(&known_keys(), "port") && !is_known_key(&known_keys(), "sip.udpp"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
