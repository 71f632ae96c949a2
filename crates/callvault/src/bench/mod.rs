//! `callvault bench`: measured figures, each against a baseline taken in
//! the same run (the machine is shared and noisy).
//!
//! - [`ingest`] (the default): RTP ingest cost against a bare `recvmmsg`
//!   sink, the most concurrent calls without loss, and call setup rate.
//! - [`soak`]: the server's memory under sustained call churn.
//! - [`replication`]: replication throughput against a plain copy, time
//!   from call end to verified copy under load, bytes per outbox item,
//!   anti-entropy cost.
//! - [`media`]: CPU per packet of the media path for each stream kind
//!   (plain G.711, each SRTP suite) against plain G.711 and a parse floor.
//! - [`search`]: search latency over a generated index of (by default) a
//!   million recordings, time to first audio byte and list API requests/s,
//!   each against the same work done in-process.

mod ingest;
mod media;
mod replication;
mod search;
mod soak;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use crate::client::CallArgs;

pub use ingest::IngestArgs;
pub use replication::ReplicationArgs;
pub use soak::SoakArgs;

#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    #[command(flatten)]
    pub ingest: IngestArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchMode {
    /// RTP ingest cost, calls without loss, setup rate (the default)
    Ingest(IngestArgs),
    /// Server memory (RSS) under sustained call churn
    Soak(SoakArgs),
    /// Replication throughput and lag, outbox size, anti-entropy cost
    Replication(ReplicationArgs),
    /// CPU per packet of the media path per stream kind (codecs, SRTP suites)
    Media(media::MediaArgs),
    /// Search latency over a large index, first audio byte, list API requests/s
    Search(search::SearchArgs),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        None => ingest::run(args.ingest),
        Some(BenchMode::Ingest(a)) => ingest::run(a),
        Some(BenchMode::Soak(a)) => soak::run(a),
        Some(BenchMode::Replication(a)) => replication::run(a),
        Some(BenchMode::Media(a)) => media::run(a),
        Some(BenchMode::Search(a)) => search::run(a),
    }
}

/// A `callvault serve` child on loopback ports, in its own directory.
struct Server {
    child: Child,
    dir: PathBuf,
    sip: SocketAddr,
    http: SocketAddr,
    /// An admin API token of the node.
    token: String,
    /// Remove the directory when dropped.
    owned: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Server {
    /// SIGTERM and wait (the node finishes what it holds).
    fn stop(mut self) -> PathBuf {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        self.owned = false;
        self.dir.clone()
    }
}

fn start_server() -> anyhow::Result<Server> {
    let dir = std::env::temp_dir().join(format!("callvault-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut s = start_node(&dir, &[], "20000-29999")?;
    s.owned = true;
    Ok(s)
}

/// Starts `callvault serve` on `dir` with extra environment.
fn start_node(dir: &std::path::Path, env: &[(&str, String)], media_ports: &str) -> anyhow::Result<Server> {
    let _ = std::fs::remove_file(dir.join("listen.json"));
    let exe = std::env::current_exe()?;
    // An admin token for the API calls the benchmark makes.
    let out = Command::new(&exe)
        .args(["users", "add", "bench", "--role", "admin", "--token", "--data-dir"])
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .context("creating the benchmark's admin user")?;
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    if !out.status.success() || token.is_empty() {
        bail!("could not create the benchmark's admin user");
    }
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--sip-udp", "127.0.0.1:0", "--sip-tcp", "", "--http", "127.0.0.1:0", "--media-ports", media_ports])
        .env("RUST_LOG", "warn")
        .env("CALLVAULT_HTTP__PUBLIC_METRICS", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().context("starting callvault serve")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(l) = crate::serve::read_listen(dir) {
            let sip = l["sip_udp"].as_str().context("no sip_udp")?.parse()?;
            let http = l["http"].as_str().context("no http")?.parse()?;
            return Ok(Server { child, dir: dir.to_owned(), sip, http, token, owned: false });
        }
        if Instant::now() > deadline {
            bail!("server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET a node's JSON API.
fn api(s: &Server, path: &str) -> anyhow::Result<serde_json::Value> {
    let body = ureq::get(&format!("http://{}{path}", s.http))
        .header("authorization", format!("Bearer {}", s.token))
        .call()?
        .body_mut()
        .read_to_string()?;
    Ok(serde_json::from_str(&body)?)
}

fn proc_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(ticks * 1_000_000_000 / hz)
}

fn metric(http: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let body = ureq::get(&format!("http://{http}/metrics")).call()?.body_mut().read_to_string()?;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix(name) {
            if let Some(v) = rest.strip_prefix(' ') {
                return Ok(v.trim().parse::<f64>()? as u64);
            }
        }
    }
    bail!("metric {name} not found")
}

#[derive(Parser)]
struct CallWrapper {
    #[command(flatten)]
    a: CallArgs,
}

fn call_args(target: SocketAddr, extra: &[&str]) -> anyhow::Result<CallArgs> {
    let mut v = vec!["call".to_owned(), target.to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    Ok(CallWrapper::try_parse_from(v)?.a)
}
