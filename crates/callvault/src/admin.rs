//! `callvault recordings` and `callvault complete`: read a node's index
//! directly (SQLite in WAL mode allows it while the node runs), and end an
//! active recording — through the running node's HTTP API (so it sends the
//! BYE), or offline when no node holds the data directory.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use model::{RecordingId, RecordingMeta, RecordingState};
use store::{sha256_file, Archive, DataDir, ListQuery, MetaDb};
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

fn open(cfg: &Config) -> anyhow::Result<(DataDir, MetaDb, tokio::runtime::Runtime)> {
    if !cfg.data_dir.exists() {
        bail!("data directory {} does not exist", cfg.data_dir.display());
    }
    let dir = DataDir::open(&cfg.data_dir)?;
    let rt = runtime()?;
    let db = rt.block_on(MetaDb::open(&dir.db_path())).context("opening the metadata index")?;
    Ok((dir, db, rt))
}

fn short_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub fn recordings(cfg: Config, action: RecordingsAction) -> anyhow::Result<()> {
    let (dir, db, rt) = open(&cfg)?;
    match action {
        RecordingsAction::List { state, party, since, limit, json } => {
            let since =
                since.map(|s| OffsetDateTime::parse(&s, &Rfc3339)).transpose().context("--since wants RFC 3339")?;
            let q = ListQuery { state, party, since, limit, ..Default::default() };
            let recs = rt.block_on(db.list(&q))?;
            if json {
                for r in &recs {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else {
                println!(
                    "{:<36}  {:<25}  {:>9}  {:<11}  {:<8}  PARTIES",
                    "ID", "STARTED", "DURATION", "STATE", "SOURCE"
                );
                for r in &recs {
                    println!(
                        "{:<36}  {:<25}  {:>8.1}s  {:<11}  {:<8}  {} -> {}",
                        r.id,
                        short_time(r.started_at),
                        r.duration_ms as f64 / 1000.0,
                        r.state,
                        format!("{:?}", r.source).to_lowercase(),
                        r.caller.as_deref().unwrap_or("?"),
                        r.callee.as_deref().unwrap_or("?"),
                    );
                }
            }
        }
        RecordingsAction::Show { id } => {
            let meta = get(&rt, &db, &id)?;
            println!("{}", serde_json::to_string_pretty(&meta)?);
        }
        RecordingsAction::Export { id, out, metadata } => {
            let meta = get(&rt, &db, &id)?;
            let audio =
                meta.audio.as_ref().with_context(|| format!("recording {id} has no audio (state {})", meta.state))?;
            let src = dir.resolve(audio.path.as_ref());
            std::fs::copy(&src, &out).with_context(|| format!("copying {}", src.display()))?;
            let (sha, _) = sha256_file(&out)?;
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

fn get(rt: &tokio::runtime::Runtime, db: &MetaDb, id: &str) -> anyhow::Result<RecordingMeta> {
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
        let url = format!("http://{http}/api/recordings/{rid}/complete");
        match ureq::post(&url).send_empty() {
            Ok(_) => {
                eprintln!("recording {rid} completed by the running node");
                Ok(())
            }
            Err(ureq::Error::StatusCode(404)) => bail!("no active recording {rid} on the running node"),
            Err(e) => bail!("asking the node at {http}: {e}"),
        }
    } else {
        let _lock = dir.try_lock()?.context("data directory became busy")?;
        let rt = runtime()?;
        rt.block_on(async {
            let db = MetaDb::open(&dir.db_path()).await?;
            let archive = Archive::new(dir.clone());
            let spool = dir.spool_json(rid);
            let meta = match std::fs::read(&spool) {
                Ok(data) => Some(RecordingMeta::from_json(&data)?),
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
            if crate::serve::persist::finish_all(&archive, &db, vec![meta]).await > 0 {
                bail!("could not archive recording {rid}; see the log");
            }
            db.close().await;
            eprintln!("recording {rid} completed offline");
            Ok(())
        })
    }
}
