//! `callvault recordings` and `callvault complete`: read a node's index
//! directly (SQLite in WAL mode allows it while the node runs), and end an
//! active recording — through the running node's HTTP API (so it sends the
//! BYE), or offline when no node holds the data directory.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use model::{RecordingId, RecordingMeta, RecordingState};
use std::io::Write;

use store::{BlobKey, DataDir, ListQuery, RecordingIndex, Stores};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum RecordingsAction {
    /// List recordings, newest first.
    List {
        #[arg(long)]
        state: Option<RecordingState>,
        /// Number, name or address of a participant (substring).
        #[arg(long)]
        party: Option<String>,
        /// Only recordings started at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON document per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a recording's full metadata as JSON.
    Show { id: String },
    /// Copy a recording's audio (checksum verified) to a file.
    Export {
        id: String,
        #[arg(long)]
        out: PathBuf,
        /// Also write the metadata JSON next to it.
        #[arg(long)]
        metadata: bool,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn open(cfg: &Config) -> anyhow::Result<(Stores, tokio::runtime::Runtime)> {
    if !cfg.data_dir.exists() {
        bail!("data directory {} does not exist", cfg.data_dir.display());
    }
    let dir = DataDir::open(&cfg.data_dir)?;
    let rt = runtime()?;
    let stores = rt.block_on(Stores::open_local(&dir)).context("opening the metadata index")?;
    Ok((stores, rt))
}

fn print_list(recs: &[RecordingMeta], json: bool) -> anyhow::Result<()> {
    if json {
        for r in recs {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!("{:<36}  {:<25}  {:>9}  {:<11}  {:<8}  PARTIES", "ID", "STARTED", "DURATION", "STATE", "SOURCE");
    for r in recs {
        // Escaped again here: recordings stored by older versions kept raw bytes.
        let party = |p: &Option<String>| model::escape_control(p.as_deref().unwrap_or("?"));
        println!(
            "{:<36}  {:<25}  {:>8.1}s  {:<11}  {:<8}  {} -> {}",
            r.id,
            short_time(r.started_at),
            r.duration_ms as f64 / 1000.0,
            r.state,
            format!("{:?}", r.source).to_lowercase(),
            party(&r.caller),
            party(&r.callee),
        );
    }
    Ok(())
}

fn short_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub fn recordings(cfg: Config, action: RecordingsAction) -> anyhow::Result<()> {
    let (stores, rt) = open(&cfg)?;
    let db = stores.index.as_ref();
    match action {
        RecordingsAction::List { state, party, since, limit, json } => {
            let since =
                since.map(|s| OffsetDateTime::parse(&s, &Rfc3339)).transpose().context("--since wants RFC 3339")?;
            let q = ListQuery { state, party, since, limit, ..Default::default() };
            let recs = rt.block_on(db.list(&q))?;
            print_list(&recs, json)?;
        }
        RecordingsAction::Show { id } => {
            let meta = get(&rt, db, &id)?;
            println!("{}", serde_json::to_string_pretty(&meta)?);
        }
        RecordingsAction::Export { id, out, metadata } => {
            let meta = get(&rt, db, &id)?;
            let audio =
                meta.audio.as_ref().with_context(|| format!("recording {id} has no audio (state {})", meta.state))?;
            let key = BlobKey::parse(&audio.path).context("the stored audio key is not valid")?;
            let sha = export_blob(stores.archive.blobs().as_ref(), &key, &out)?;
            if audio.sha256.as_deref().is_some_and(|want| want != sha) {
                bail!("checksum mismatch: {} has {sha}, metadata says {:?}", out.display(), audio.sha256);
            }
            if metadata {
                std::fs::write(out.with_extension("json"), meta.to_json())?;
            }
            eprintln!("exported {} ({} bytes, sha256 {sha})", out.display(), audio.bytes);
        }
    }
    rt.block_on(db.close());
    Ok(())
}

/// Copies a blob to `out` in chunks, hashing what was written.
fn export_blob(blobs: &dyn store::BlobStore, key: &BlobKey, out: &std::path::Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let len = blobs.len(key)?.with_context(|| format!("audio {key} missing on this node"))?;
    let mut file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut hash = sha2::Sha256::new();
    let mut pos = 0;
    while pos < len {
        let upto = (pos + 1024 * 1024).min(len);
        let chunk = blobs.read_range(key, pos, upto)?;
        hash.update(&chunk);
        file.write_all(&chunk)?;
        pos = upto;
    }
    file.sync_all()?;
    Ok(store::blob::hex(&hash.finalize()))
}

/// `callvault recordings --url`: the same commands through a node's API
/// (the caller's role and scope apply; every access is audited there).
pub fn remote_recordings(url: &str, action: RecordingsAction) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let get = |path: &str| -> anyhow::Result<serde_json::Value> { http_call("GET", &format!("{base}{path}"), None) };
    match action {
        RecordingsAction::List { state, party, since, limit, json } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &limit.to_string());
            if let Some(s) = state {
                q.append_pair("state", s.as_str());
            }
            if let Some(p) = &party {
                q.append_pair("party", p);
            }
            if let Some(s) = &since {
                q.append_pair("since", s);
            }
            let v = get(&format!("/api/v1/recordings?{}", q.finish()))?;
            let recs: Vec<RecordingMeta> = serde_json::from_value(v["recordings"].clone())?;
            print_list(&recs, json)?;
            eprintln!("{} of {} matching", recs.len(), v["total"]);
        }
        RecordingsAction::Show { id } => {
            let v = get(&format!("/api/v1/recordings/{id}"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        RecordingsAction::Export { id, out, metadata } => {
            use sha2::Digest;
            let v = get(&format!("/api/v1/recordings/{id}"))?;
            let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
            let mut resp = authed(agent.get(&format!("{base}/api/v1/recordings/{id}/audio?download=1"))).call()?;
            if resp.status() != 200 {
                bail!("the node answered {} for the audio", resp.status());
            }
            let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
            let mut file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut hash = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = std::io::Read::read(&mut reader, &mut buf)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                file.write_all(&buf[..n])?;
            }
            let sha: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if v["audio"]["sha256"].as_str().is_some_and(|want| want != sha) {
                bail!("checksum mismatch: {} has {sha}, metadata says {}", out.display(), v["audio"]["sha256"]);
            }
            if metadata {
                std::fs::write(out.with_extension("json"), serde_json::to_vec_pretty(&v)?)?;
            }
            eprintln!("exported {} (sha256 {sha})", out.display());
        }
    }
    Ok(())
}

fn get(rt: &tokio::runtime::Runtime, db: &dyn RecordingIndex, id: &str) -> anyhow::Result<RecordingMeta> {
    let rid: RecordingId = id.parse().with_context(|| format!("{id:?} is not a recording id"))?;
    rt.block_on(db.get(rid))?.with_context(|| format!("no recording {id}"))
}

pub fn complete(cfg: Config, id: &str) -> anyhow::Result<()> {
    let rid: RecordingId = id.parse().with_context(|| format!("{id:?} is not a recording id"))?;
    if !cfg.data_dir.exists() {
        bail!("data directory {} does not exist", cfg.data_dir.display());
    }
    let dir = DataDir::open(&cfg.data_dir)?;
    if dir.is_locked()? {
        // A node runs: it owns the call, so it must end it (and send BYE).
        let listen = crate::serve::read_listen(dir.root()).context("the running node wrote no listen.json")?;
        let http = listen["http"].as_str().context("the running node has HTTP disabled; cannot reach it")?;
        let url = format!("http://{http}/api/v1/recordings/{rid}/complete");
        match authed(ureq::post(&url)).send_empty() {
            Ok(_) => {
                eprintln!("recording {rid} completed by the running node");
                Ok(())
            }
            Err(ureq::Error::StatusCode(404)) => bail!("no active recording {rid} on the running node"),
            Err(ureq::Error::StatusCode(401)) => {
                bail!("the running node wants an API token: set CALLVAULT_TOKEN (callvault users token <admin>)")
            }
            Err(e) => bail!("asking the node at {http}: {e}"),
        }
    } else {
        let _lock = dir.try_lock()?.context("data directory became busy")?;
        let rt = runtime()?;
        rt.block_on(async {
            let stores = Stores::open_local(&dir).await?;
            let (db, archive) = (stores.index.as_ref(), &stores.archive);
            let meta = match archive.load_spool(rid) {
                Ok(meta) => Some(meta),
                Err(_) => db.get(rid).await?,
            };
            let Some(mut meta) = meta else { bail!("no recording {rid}") };
            if meta.state != RecordingState::Active {
                bail!("recording {rid} is already {} ({})", meta.state, meta.reason().unwrap_or(""));
            }
            meta.transition(
                RecordingState::Completed,
                OffsetDateTime::now_utc(),
                "completed by administrator (node not running)",
            );
            let none = crate::serve::persist::Replication::default();
            if crate::serve::persist::finish_all(archive, db, &none, vec![meta]).await > 0 {
                bail!("could not archive recording {rid}; see the log");
            }
            db.close().await;
            eprintln!("recording {rid} completed offline");
            Ok(())
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Peers (alive, site, priority, version, load), the job leader.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Show the cluster settings, or set one (`retention.days 90`).
    Settings { key: Option<String>, value: Option<String> },
    /// Re-hash this node's audio now and repair corrupt copies from peers.
    Scrub,
    /// Start an anti-entropy round with every peer now.
    AntiEntropy,
    /// Forget a node that left for good (no target any more; its queue is dropped).
    Forget { node: String },
    /// Refuse new calls on this node (503) so the platform sends them
    /// elsewhere; calls in progress go on. `--off` takes calls again.
    Drain {
        #[arg(long)]
        off: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReplicationAction {
    /// Per target: queue depth, oldest item, bytes/s, last error.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make every waiting item (of one target, or all) due now.
    Retry {
        #[arg(long)]
        target: Option<String>,
    },
}

/// The HTTP address of the node running on this data directory.
fn running_node(cfg: &Config) -> anyhow::Result<String> {
    let listen = crate::serve::read_listen(&cfg.data_dir)
        .with_context(|| format!("no node is running on {} (no listen.json)", cfg.data_dir.display()))?;
    let http = listen["http"].as_str().context("the running node has no HTTP listener")?;
    Ok(format!("http://{http}"))
}

/// The API token sent to a running node: `CALLVAULT_TOKEN` (make one with
/// `callvault users token <admin>`).
pub fn authed<B>(r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
    match std::env::var("CALLVAULT_TOKEN").ok().filter(|t| !t.is_empty()) {
        Some(t) => r.header("authorization", format!("Bearer {t}")),
        None => r,
    }
}

fn http_call(method: &str, url: &str, body: Option<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut resp = match (method, body) {
        ("GET", _) => authed(agent.get(url)).call()?,
        ("PUT", Some(b)) => authed(agent.put(url)).header("content-type", "application/json").send(b.to_string())?,
        (_, Some(b)) => authed(agent.post(url)).header("content-type", "application/json").send(b.to_string())?,
        (_, None) => authed(agent.post(url)).send_empty()?,
    };
    let status = resp.status().as_u16();
    let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?).unwrap_or_default();
    if status == 401 {
        bail!("the node wants an API token: set CALLVAULT_TOKEN (callvault users token <admin>)");
    }
    if !(200..300).contains(&status) {
        bail!("the node answered {status}: {}", v["detail"].as_str().unwrap_or("(no detail)"));
    }
    Ok(v)
}

pub fn cluster(cfg: Config, action: ClusterAction) -> anyhow::Result<()> {
    let base = running_node(&cfg)?;
    match action {
        ClusterAction::Status { json } => {
            let v = http_call("GET", &format!("{base}/api/v1/cluster"), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let me = &v["me"];
            println!(
                "node {} ({}), site {}, priority {}, {}",
                v["node"].as_str().unwrap_or("?"),
                v["url"].as_str().unwrap_or("?"),
                v["site"].as_str().unwrap_or("?"),
                v["priority"],
                if me["ready"] == true { "ready" } else { "not ready" }
            );
            println!(
                "job leader: {}{}",
                v["leader"].as_str().unwrap_or("(none yet)"),
                if v["is_leader"] == true { " (this node)" } else { "" }
            );
            if v["quarantined"] == true {
                println!("QUARANTINED: catching up after an absence longer than the tombstone horizon");
            }
            println!(
                "{:<20} {:<6} {:<10} {:>4} {:<10} {:>7} {:>9} {:>10}  URL",
                "PEER", "ALIVE", "SITE", "PRIO", "VERSION", "CALLS", "CAPACITY", "FREE MiB"
            );
            for p in v["peers"].as_array().into_iter().flatten() {
                let s = &p["status"];
                println!(
                    "{:<20} {:<6} {:<10} {:>4} {:<10} {:>7} {:>9} {:>10}  {}{}",
                    s["node"].as_str().unwrap_or("?"),
                    if p["alive"] == true { "yes" } else { "NO" },
                    s["site"].as_str().unwrap_or("-"),
                    s["priority"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    s["version"].as_str().unwrap_or("-"),
                    s["load"]["active_calls"].as_u64().unwrap_or(0),
                    s["load"]["capacity"].as_u64().unwrap_or(0),
                    s["load"]["free_disk_mib"].as_u64().unwrap_or(0),
                    p["url"].as_str().unwrap_or("?"),
                    p["last_error"].as_str().map(|e| format!("  ({e})")).unwrap_or_default(),
                );
            }
        }
        ClusterAction::Settings { key: None, .. } => {
            let v = http_call("GET", &format!("{base}/api/v1/settings"), None)?;
            for s in v["settings"].as_array().into_iter().flatten() {
                println!(
                    "{} = {}   ({})",
                    s["key"].as_str().unwrap_or("?"),
                    s["value"],
                    s["stamp"].as_str().unwrap_or("")
                );
            }
        }
        ClusterAction::Settings { key: Some(key), value } => {
            let value = value.context("give a value to set (JSON, e.g. 90 or [\"10.0.0.0/8\"])")?;
            let value: serde_json::Value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
            let v = http_call(
                "PUT",
                &format!("{base}/api/v1/settings/{key}"),
                Some(serde_json::json!({ "value": value })),
            )?;
            println!("{}", serde_json::to_string_pretty(&v["setting"])?);
        }
        ClusterAction::Scrub => {
            let v = http_call("POST", &format!("{base}/api/v1/cluster/scrub"), None)?;
            println!("scrub: {} checked, {} corrupt, {} repaired", v["checked"], v["corrupt"], v["repaired"]);
        }
        ClusterAction::Forget { node } => {
            let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
            let mut resp = authed(agent.delete(&format!("{base}/api/v1/cluster/nodes/{node}"))).call()?;
            let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?).unwrap_or_default();
            if !resp.status().is_success() {
                bail!("the node answered {}: {}", resp.status(), v["error"].as_str().unwrap_or("(no detail)"));
            }
            println!("forgot {node}; {} queued items dropped (on this node; run it on every node)", v["dropped_items"]);
        }
        ClusterAction::AntiEntropy => {
            http_call("POST", &format!("{base}/api/v1/cluster/anti-entropy"), None)?;
            println!("anti-entropy round started");
        }
        ClusterAction::Drain { off } => {
            let body = serde_json::json!({ "draining": !off });
            http_call("POST", &format!("{base}/api/v1/drain"), Some(body))?;
            println!("{}", if off { "taking calls again" } else { "draining: new calls are refused with 503" });
        }
    }
    Ok(())
}

pub fn replication(cfg: Config, action: ReplicationAction) -> anyhow::Result<()> {
    let base = running_node(&cfg)?;
    match action {
        ReplicationAction::Status { json } => {
            let v = http_call("GET", &format!("{base}/api/v1/replication"), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<20} {:>7} {:>6} {:>10} {:>8} {:>12}  {:<10} LAST ERROR",
                "TARGET", "QUEUED", "META", "OLDEST s", "FAILING", "BYTES/s", "STATE"
            );
            for (t, s) in v["targets"].as_object().into_iter().flatten() {
                println!(
                    "{:<20} {:>7} {:>6} {:>10.1} {:>8} {:>12.0}  {:<10} {}",
                    t,
                    s["depth"].as_u64().unwrap_or(0),
                    s["meta_depth"].as_u64().unwrap_or(0),
                    s["oldest_item_age_secs"].as_f64().unwrap_or(0.0),
                    s["failing"].as_u64().unwrap_or(0),
                    s["bytes_per_sec"].as_f64().unwrap_or(0.0),
                    s["worker_state"].as_str().unwrap_or("-"),
                    s["last_error"].as_str().unwrap_or(""),
                );
            }
        }
        ReplicationAction::Retry { target } => {
            let v = http_call(
                "POST",
                &format!("{base}/api/v1/replication/retry"),
                Some(serde_json::json!({ "target": target })),
            )?;
            println!("{} items due now", v["rescheduled"]);
        }
    }
    Ok(())
}
