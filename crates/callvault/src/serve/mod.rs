//! `callvault serve`: one recording node.
//!
//! Start-up order matters for "no recording ever stays active":
//! 1. take the data-directory lock (one server per directory);
//! 2. open the index, then **recover** — every recording a previous run
//!    left in progress is finished as `interrupted` with the audio that
//!    reached disk, and indexed; stale `active` index rows are closed too;
//! 3. start the media engine, SIP transports and HTTP;
//! 4. write `listen.json` (actual bound addresses) — the ready signal.
//!
//! SIGTERM/SIGINT: calls in progress get a BYE and end `interrupted`, audio
//! is flushed and archived, then the process exits. Use drain mode first
//! (`POST /api/drain`) for a rolling upgrade that interrupts nothing.

mod access;
pub use access::put_local as put_local_setting;
pub mod cluster;
pub mod core;
mod download;
pub mod http;
mod http_listener;
mod memory;
pub mod metrics;
pub mod persist;
mod systemd;
pub mod tls;
pub mod transport;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use media_engine::{EngineConfig, EngineEvent, MediaEngine, UdpPortPool};
use model::{NodeId, RecordingState};
use recorder::{Recorder, RecorderConfig};
use serde_json::json;
use sip_proto::TimerConfig;
use store::{Archive, ClusterIndex, DataDir, Stores};
use time::OffsetDateTime;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

use self::core::{AdminCmd, CoreTask};
use self::persist::PersistJob;
use self::transport::Transports;
use crate::config::Config;

/// Finishes what a previous run left behind. Returns how many recordings
/// were recovered.
pub async fn recover(
    archive: &Archive,
    db: &dyn ClusterIndex,
    replication: &persist::Replication,
    node: &NodeId,
) -> anyhow::Result<usize> {
    let now = OffsetDateTime::now_utc();
    let a = archive.clone();
    let n = node.clone();
    let mut found = tokio::task::spawn_blocking(move || a.recover(&n, now)).await??;
    let recovered: std::collections::HashSet<_> = found.iter().map(|m| m.id).collect();
    for meta in &found {
        tracing::warn!(recording = %meta.id, state = %meta.state, reason = meta.reason().unwrap_or(""), "finishing recording left by the previous run");
    }
    // Index rows still active without spool files: their audio is gone or
    // was archived before a crash; close them so nothing stays active.
    for id in db.active_ids().await? {
        if recovered.contains(&id) {
            continue;
        }
        if let Some(mut meta) = db.get(id).await? {
            meta.transition(RecordingState::Interrupted, now, "recorder restarted; no audio left in the spool");
            found.push(meta);
        }
    }
    let total = found.len();
    let failed = persist::finish_all(archive, db, replication, found).await;
    if failed > 0 {
        tracing::error!(failed, "recordings could not be finished; they stay in the spool for the next start");
    }
    Ok(total)
}

/// What a storage probe found wrong.
#[derive(Debug)]
enum ProbeError {
    Storage(String),
    /// The probe file could not be opened for lack of descriptors: says
    /// nothing about the storage.
    OutOfDescriptors,
}

/// Writes and syncs a small file in the spool and checks the free space;
/// returns the free bytes.
fn probe_storage(dir: &DataDir, min_free_mib: u64) -> Result<u64, ProbeError> {
    let probe = dir.spool_dir().join(".probe");
    if let Err(e) = store::durable_write(&probe, b"probe") {
        if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
            return Err(ProbeError::OutOfDescriptors);
        }
        return Err(ProbeError::Storage(format!("spool not writable: {e}")));
    }
    let _ = std::fs::remove_file(&probe);
    let st = rustix::fs::statvfs(dir.root()).map_err(|e| ProbeError::Storage(format!("statvfs: {e}")))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let free_mib = free / (1024 * 1024);
    if free_mib < min_free_mib {
        return Err(ProbeError::Storage(format!("only {free_mib} MiB free (minimum {min_free_mib} MiB)")));
    }
    match dir.ensure_spool_reserve() {
        Ok(true) => tracing::info!("spool reserve for metadata on a full disk is in place"),
        Ok(false) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
            return Err(ProbeError::OutOfDescriptors)
        }
        // Best effort: without it a full disk may cost a failed
        // recording its reason after a crash, nothing more.
        Err(e) => tracing::warn!(error = %e, "cannot make the spool reserve for metadata on a full disk"),
    }
    Ok(free)
}

fn fallback_ip(cfg: &Config) -> IpAddr {
    // A specific listen address is the best guess for SDP; 0.0.0.0 is not.
    for a in [&cfg.sip.udp, &cfg.sip.tcp] {
        if let Ok(sa) = a.parse::<SocketAddr>() {
            if !sa.ip().is_unspecified() {
                return sa.ip();
            }
        }
    }
    // The interface the default route uses (no packet is sent by connect).
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Applies a new log filter (the logging layer's reload handle).
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What a reload (SIGHUP) can change while calls run.
pub struct Reload {
    /// The configuration file the node was started with.
    pub file: Option<PathBuf>,
    pub set_log_level: SetLogLevel,
}

pub async fn run(cfg: Config, reload: Reload) -> anyhow::Result<()> {
    // A file-size limit must make writes fail (EFBIG, handled like a full
    // disk), not kill the recorder: listening for SIGXFSZ replaces its
    // default action (terminate).
    let mut xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))?;
    tokio::spawn(async move {
        while xfsz.recv().await.is_some() {
            tracing::error!("file size limit reached (SIGXFSZ); the write fails and the recording is marked failed");
        }
    });
    let open_files = raise_open_files_limit();
    let dir = DataDir::open(&cfg.data_dir).with_context(|| format!("data directory {}", cfg.data_dir.display()))?;
    let _lock =
        dir.try_lock()?.with_context(|| format!("another callvault is already serving {}", cfg.data_dir.display()))?;
    let node = NodeId(dir.node_id(cfg.node_id.as_deref())?);
    tracing::info!(node = %node, data_dir = %cfg.data_dir.display(), "starting");
    let stores = Stores::open_local(&dir).await.context("opening the metadata index")?;
    let (db, archive) = (stores.index.clone(), stores.archive.clone());
    let (stop_workers_tx, stop_workers) = watch::channel(false);
    let runner = background::Runner::new(background::Registry::default(), stop_workers);
    let cluster = if cfg.cluster.enabled() {
        let blobs = stores.archive.blobs().clone();
        Some(
            cluster::start(
                node.clone(),
                cfg.cluster.clone(),
                db.clone(),
                stores.access.clone(),
                blobs,
                dir.root(),
                &runner,
            )
            .await?,
        )
    } else {
        None
    };
    let replication = persist::Replication(cluster.as_ref().map(|s| s.cluster.clone()));
    let recovered = recover(&archive, db.as_ref(), &replication, &node).await?;
    if recovered > 0 {
        tracing::warn!(recovered, "recordings left in progress by the previous run were finished as interrupted");
    }

    // Media.
    let pool = UdpPortPool::new(cfg.media.bind, cfg.media.port_min, cfg.media.port_max, cfg.media.recv_buffer_bytes);
    let pending = pool.pending();
    let (notice_tx, notice_rx) = mpsc::unbounded_channel();
    let (persist_tx, persist_rx) = mpsc::unbounded_channel::<PersistJob>();
    let (saved_tx, saved_rx) = mpsc::unbounded_channel();
    let mut ecfg = EngineConfig::new(dir.spool_dir());
    ecfg.shards = cfg.media.threads.max(1);
    ecfg.media_timeout = Duration::from_secs(cfg.media.media_timeout_secs.max(1));
    ecfg.no_rtp_alarm = Duration::from_secs(cfg.media.no_rtp_alarm_secs.max(1));
    ecfg.playout_delay = Duration::from_millis(cfg.media.playout_delay_ms);
    ecfg.sync_interval = if cfg.media.sync_interval_ms == 0 {
        Duration::from_secs(86_400 * 365)
    } else {
        Duration::from_millis(cfg.media.sync_interval_ms)
    };
    let engine_persist = persist_tx.clone();
    let media_alarms = Arc::new(metrics::MediaAlarmCounts::default());
    let ended_alarms = media_alarms.clone();
    let engine = MediaEngine::start(
        ecfg,
        pending,
        Arc::new(move |e| match e {
            EngineEvent::Notice(n) => {
                let _ = notice_tx.send(n);
            }
            EngineEvent::Closed { meta, error, .. } => {
                if let Some(alarm) = meta.media_alarm {
                    ended_alarms.count(alarm);
                    tracing::warn!(recording = %meta.id, alarm = alarm.as_str(), "recording ended with a media alarm");
                }
                let _ = engine_persist.send(PersistJob::Closed { meta, error });
            }
        }),
    )?;

    // SIP transports.
    let (inbox_tx, inbox_rx) = mpsc::channel(8192);
    let udp = match cfg.sip.udp.as_str() {
        "" => None,
        a => Some(Arc::new(
            bind_sip_udp(a, cfg.sip.udp_recv_buffer_bytes).with_context(|| format!("binding SIP UDP {a}"))?,
        )),
    };
    let tcp = match cfg.sip.tcp.as_str() {
        "" => None,
        a => Some(TcpListener::bind(a).await.with_context(|| format!("binding SIP TCP {a}"))?),
    };
    let tls = match cfg.sip.tls.as_str() {
        "" => None,
        a => {
            let listener = TcpListener::bind(a).await.with_context(|| format!("binding SIP TLS {a}"))?;
            Some((listener, tls::ServerTls::new(sip_tls_acceptor(&cfg)?)))
        }
    };
    let sip_tls = tls.as_ref().map(|(_, t)| t.clone());
    let udp_addr = udp.as_ref().map(|s| s.local_addr()).transpose()?;
    let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
    let tls_addr = tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let tcp_limits = transport::TcpLimits {
        max_total: if cfg.sip.max_tcp_connections > 0 {
            cfg.sip.max_tcp_connections
        } else {
            // Half of what a reserve of 256 descriptors leaves (calls, files, HTTP, peers need the rest).
            (open_files.saturating_sub(256) as usize / 2).clamp(16, 10_000)
        },
        max_per_source: cfg.sip.max_tcp_connections_per_source.max(1),
        idle: Duration::from_secs(cfg.sip.tcp_idle_timeout_secs.max(1)),
    };
    tracing::info!(
        max_total = tcp_limits.max_total,
        max_per_source = tcp_limits.max_per_source,
        idle_secs = tcp_limits.idle.as_secs(),
        "SIP TCP connection limits"
    );
    let transports = Transports::new(udp.clone(), inbox_tx, cfg.sip.max_message_bytes, tcp_limits);
    let tcp_stats = transports.stats.clone();
    if let Some(sock) = udp.clone() {
        tokio::spawn(transports.clone().run_udp(sock));
    }
    if let Some(l) = tcp {
        tokio::spawn(transports.clone().run_tcp(l));
    }
    if let Some((l, server_tls)) = tls {
        let cert_from = if cfg.sip.tls_client_ca.is_some() { cfg.sip.tls_client_cert_from.clone() } else { Vec::new() };
        tokio::spawn(transports.clone().run_tls(l, server_tls, cert_from));
    }

    // The recorder core.
    let mut rcfg = RecorderConfig::new(node.clone());
    rcfg.allowed_sources = cfg.sip.allowed_sources.to_vec();
    rcfg.max_calls = cfg.sip.max_calls;
    rcfg.srtp_required = cfg.media.srtp == crate::config::SrtpMode::Require;
    rcfg.max_sample_rate = cfg.media.max_sample_rate;
    rcfg.advertised_ip = cfg.sip.advertised_address;
    rcfg.fallback_ip = fallback_ip(&cfg);
    rcfg.sip_udp = udp_addr;
    rcfg.sip_tcp = tcp_addr;
    rcfg.sip_tls = tls_addr;
    rcfg.retry_after_secs = cfg.sip.retry_after_secs;
    rcfg.min_session_expires = cfg.sip.min_session_expires_secs;
    rcfg.timers = TimerConfig { t1: Duration::from_millis(cfg.sip.t1_ms.max(1)), ..TimerConfig::default() };
    rcfg.media_timeout = Duration::from_secs(cfg.media.media_timeout_secs);
    rcfg.save_timeout = Duration::from_millis(cfg.storage.metadata_save_timeout_ms.max(1));
    rcfg.max_pending_answers = cfg.storage.max_pending_saves.max(1);
    let recorder = Recorder::new(rcfg, Box::new(pool));
    let (admin_tx, admin_rx) = mpsc::channel(256);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let backlog = persist::Backlog::default();
    let core = CoreTask {
        backlog: backlog.clone(),
        max_write_backlog: cfg.storage.max_write_backlog_mib.saturating_mul(1024 * 1024),
        recorder,
        engine,
        transports,
        inbox: inbox_rx,
        notices: notice_rx,
        admin: admin_rx,
        persist: persist_tx,
        saved: saved_rx,
        shutdown: shutdown_rx,
    };
    let core_handle = tokio::spawn(core.run());
    let metadata_sync = persist::SyncLatency::default();
    let persist_handle = tokio::spawn(persist::run(
        persist_rx,
        persist::PersistWiring {
            acks: saved_tx,
            backlog,
            archive,
            db: db.clone(),
            replication: replication.clone(),
            runner: runner.clone(),
            sync_latency: metadata_sync.clone(),
        },
    ));
    if let Some(s) = &cluster {
        feed_local_state(s.cluster.clone(), admin_tx.clone(), dir.clone(), cfg.sip.max_calls);
    }

    memory::spawn_trimmer(Duration::from_secs(60));

    // Storage health.
    let storage_probe = Arc::new(metrics::StorageProbeStats::default());
    {
        let stats = storage_probe.clone();
        let admin = admin_tx.clone();
        let dir = dir.clone();
        let min_free = cfg.storage.min_free_mib;
        let every = Duration::from_secs(cfg.storage.probe_interval_secs.max(1));
        tokio::spawn(async move {
            loop {
                let d = dir.clone();
                let result = tokio::task::spawn_blocking(move || probe_storage(&d, min_free)).await;
                let (ok, reason) = match result {
                    Ok(Ok(free)) => {
                        stats.free_bytes_plus_one.store(free.saturating_add(1), Ordering::Relaxed);
                        (true, String::new())
                    }
                    Ok(Err(ProbeError::OutOfDescriptors)) => {
                        stats.out_of_descriptors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("storage probe: out of file descriptors (open-files limit reached)");
                        tokio::time::sleep(every).await;
                        continue;
                    }
                    Ok(Err(ProbeError::Storage(r))) => (false, r),
                    Err(e) => (false, e.to_string()),
                };
                if admin.send(AdminCmd::SetStorage { ok, reason }).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    // HTTP.
    let mut http_addr = None;
    let http_stats = Arc::new(http_listener::HttpStats::default());
    if !cfg.http.listen.is_empty() {
        let listener =
            TcpListener::bind(&cfg.http.listen).await.with_context(|| format!("binding HTTP {}", cfg.http.listen))?;
        http_addr = Some(listener.local_addr()?);
        let cluster_ref = cluster.as_ref().map(|s| s.cluster.clone());
        let settings = access::NodeSettings { cluster: cluster_ref.clone(), index: db.clone(), node: node.clone() };
        let surface = Arc::new(web::Web::new(
            db.clone(),
            stores.access.clone(),
            Arc::new(settings),
            &access::link_secret(cluster_ref.as_deref(), dir.root())?,
            web::WebConfig {
                session_ttl_s: cfg.http.session_timeout_secs.max(1) as i64,
                secure_cookies: cfg.http.secure_cookies,
                public_metrics: cfg.http.public_metrics,
                ..Default::default()
            },
            node.0.clone(),
        ));
        // Expired sessions are forgotten (they are refused as soon as they expire).
        let sessions = stores.access.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(600)).await;
                match sessions.purge_sessions(web::now_ms()).await {
                    Ok(n) if n > 0 => tracing::debug!(sessions = n, "expired sessions forgotten"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purging expired sessions"),
                }
            }
        });
        let node_routes = http::router(http::AppState {
            admin: admin_tx.clone(),
            db: db.clone() as Arc<dyn store::RecordingIndex>,
            blobs: stores.archive.blobs().clone(),
            node_id: node.0.clone(),
            cluster: cluster.as_ref().map(|s| s.cluster.clone()),
            workers: runner.registry().clone(),
            tcp: tcp_stats.clone(),
            open_files,
            storage_probe: storage_probe.clone(),
            media_alarms: media_alarms.clone(),
            metadata_sync: metadata_sync.clone(),
            http: http_stats.clone(),
        });
        let app = web::guarded(node_routes.merge(web::routes().with_state(surface.clone())), surface);
        let limits = http_listener::HttpLimits {
            max_connections: cfg.http.max_connections.max(1),
            idle: Duration::from_secs(cfg.http.idle_timeout_secs.max(1)),
        };
        tokio::spawn(http_listener::serve(listener, app, limits, http_stats.clone()));
    }

    let listen = json!({
        "node": node.0,
        "pid": std::process::id(),
        "sip_udp": udp_addr.map(|a| a.to_string()),
        "sip_tcp": tcp_addr.map(|a| a.to_string()),
        "sip_tls": tls_addr.map(|a| a.to_string()),
        "http": http_addr.map(|a| a.to_string()),
        "cluster": cluster.as_ref().map(|s| s.cluster.url.clone()),
        "cluster_listen": cluster.as_ref().map(|s| s.addr.to_string()),
    });
    store::durable_write(&dir.root().join("listen.json"), listen.to_string().as_bytes())?;
    tracing::info!(sip_udp = ?udp_addr, sip_tcp = ?tcp_addr, http = ?http_addr, "ready");
    systemd::ready(&format!("recording; SIP {}", udp_addr.or(tcp_addr).map(|a| a.to_string()).unwrap_or_default()));
    systemd::spawn_watchdog(admin_tx.clone());

    // SIGHUP (systemctl reload, log rotators): re-read the configuration
    // and apply what can change while calls run; an invalid file changes nothing.
    {
        let admin = admin_tx.clone();
        let running = cfg.clone();
        let cluster = cluster.as_ref().map(|s| s.cluster.clone());
        let sip_tls = sip_tls.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            let mut running = running;
            while hup.recv().await.is_some() {
                systemd::reloading();
                match apply_reload(&reload, &running, &admin).await {
                    Ok(next) => {
                        running = next;
                        if let Some(server) = &sip_tls {
                            match sip_tls_acceptor(&running) {
                                Ok(acceptor) => {
                                    server.replace(acceptor);
                                    tracing::info!("SIP TLS certificate and key reloaded");
                                }
                                Err(e) => tracing::error!(
                                    error = %format!("{e:#}"),
                                    "SIP TLS reload refused; the running certificate stays"
                                ),
                            }
                        }
                        match cluster.as_ref().map(|c| c.reload_tls()) {
                            Some(Ok(true)) => tracing::info!("cluster TLS certificate, key and CA reloaded"),
                            Some(Err(e)) => tracing::error!(
                                error = %format!("{e:#}"),
                                "cluster TLS reload refused; the running certificates stay"
                            ),
                            _ => {}
                        }
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reload refused; the running settings stay"),
                }
                systemd::ready("recording (configuration reloaded)");
            }
        });
    }

    wait_for_signal().await;
    tracing::info!("shutting down");
    systemd::stopping();
    let _ = shutdown_tx.send(true);
    let _ = stop_workers_tx.send(true);
    let _ = core_handle.await;
    drop(admin_tx);
    let _ = persist_handle.await;
    db.close().await;
    let _ = std::fs::remove_file(dir.root().join("listen.json"));
    tracing::info!("stopped");
    Ok(())
}

/// The SIP TLS server settings from the configured files.
fn sip_tls_acceptor(cfg: &Config) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let (Some(cert), Some(key)) = (&cfg.sip.tls_cert, &cfg.sip.tls_key) else {
        anyhow::bail!("sip.tls needs sip.tls_cert and sip.tls_key");
    };
    // A CA with no source list: every client presents a certificate. With
    // a list, only those sources must; others may (and are checked if they do).
    let clients = match (&cfg.sip.tls_client_ca, cfg.sip.tls_client_cert_from.is_empty()) {
        (None, _) => tls::ClientCerts::None,
        (Some(ca), true) => tls::ClientCerts::Required(ca),
        (Some(ca), false) => tls::ClientCerts::Optional(ca),
    };
    tls::server_config(cert, key, clients, &[])
}

/// Raises the soft open-files limit to the hard one (each recorded stream
/// holds two sockets) and logs the figure; returns the limit in force.
fn raise_open_files_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    let (soft, hard) = (lim.current.unwrap_or(u64::MAX), lim.maximum);
    let target = hard.unwrap_or(u64::MAX).min(1 << 20);
    if soft < target {
        let raised = rustix::process::Rlimit { current: Some(target), maximum: hard };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = soft, to = target, "raised the open-files limit to the hard limit");
                return target;
            }
            Err(e) => tracing::warn!(soft, error = %e, "could not raise the open-files limit"),
        }
    }
    tracing::info!(open_files = soft, "open-files limit");
    soft
}

/// The SIP UDP socket, with a receive buffer sized for INVITE bursts.
fn bind_sip_udp(addr: &str, recv_buffer: usize) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = addr.parse()?;
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if recv_buffer > 0 {
        s.set_recv_buffer_size(recv_buffer)?;
        // Linux caps the size at net.core.rmem_max without an error (and
        // reports twice what it grants).
        let granted = s.recv_buffer_size().unwrap_or(0) / 2;
        if granted < recv_buffer {
            tracing::warn!(
                asked = recv_buffer,
                granted,
                "SIP UDP receive buffer capped by net.core.rmem_max: INVITE bursts may be dropped \
                 (the Debian package's /usr/lib/sysctl.d/60-callvault.conf raises it)"
            );
        }
    }
    s.set_send_buffer_size(1024 * 1024)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// One reload: the file and environment again; allowed sources, the call
/// limit and the log level take effect, other changes wait for a restart.
async fn apply_reload(reload: &Reload, running: &Config, admin: &core::AdminTx) -> anyhow::Result<Config> {
    let mut next = Config::load(reload.file.as_deref())?;
    // Command-line overrides of the start stay (they are not in the file).
    next.data_dir = running.data_dir.clone();
    next.sip.udp = running.sip.udp.clone();
    next.sip.tcp = running.sip.tcp.clone();
    next.http.listen = running.http.listen.clone();
    next.media.port_min = running.media.port_min;
    next.media.port_max = running.media.port_max;
    (reload.set_log_level)(&next.log.level).map_err(|e| anyhow::anyhow!("log.level: {e}"))?;
    admin
        .send(AdminCmd::SetAdmission {
            allowed_sources: next.sip.allowed_sources.to_vec(),
            max_calls: next.sip.max_calls,
        })
        .await
        .map_err(|_| anyhow::anyhow!("the recorder core is not running"))?;
    let mut unchanged = next.clone();
    unchanged.sip.allowed_sources = running.sip.allowed_sources.clone();
    unchanged.sip.max_calls = running.sip.max_calls;
    unchanged.log.level = running.log.level.clone();
    if unchanged != *running {
        tracing::warn!("the configuration file has changes that take effect only at the next start");
    }
    tracing::info!(log_level = %next.log.level, max_calls = next.sip.max_calls, "configuration reloaded (SIGHUP)");
    Ok(next)
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Reads the addresses a running server wrote into its data directory.
pub fn read_listen(data_dir: &std::path::Path) -> Option<serde_json::Value> {
    let p: PathBuf = data_dir.join("listen.json");
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Keeps the heartbeat's view of this node (ready, load) current from the
/// recorder core's status, every second.
fn feed_local_state(c: Arc<cluster::Cluster>, admin: core::AdminTx, dir: DataDir, max_calls: usize) {
    tokio::spawn(async move {
        loop {
            if let Some(st) = core::status(&admin).await {
                let free = rustix::fs::statvfs(dir.root())
                    .map(|s| s.f_bavail.saturating_mul(s.f_frsize) / (1024 * 1024))
                    .unwrap_or(0);
                let mut l = c.local.lock().expect("local state lock");
                l.ready = st.can_record.is_ok();
                l.load = ::cluster::Load {
                    active_calls: st.active_recordings as u64,
                    capacity: max_calls as u64,
                    free_disk_mib: free,
                };
            } else {
                return; // the core stopped
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
