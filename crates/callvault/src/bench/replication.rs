//! `callvault bench replication`: what replication costs, on loopback, in
//! one run:
//!
//! 1. **Throughput** against a plain copy of the same bytes: the baseline
//!    sends the same files over a loopback TCP connection into files that
//!    are fsynced (what the link and the disk can do); then two real nodes
//!    replicate recordings of the same sizes (signed chunked upload,
//!    SHA-256 check, durable store). Ratio = replication / plain.
//! 2. **Lag** from a call's end to its verified copy on the peer, p50 and
//!    p99, while the source records `--calls` concurrent calls.
//! 3. **Bytes per queued item** of the outbox table in SQLite.
//! 4. **Anti-entropy cost** for two nodes holding `--ae-recordings` each:
//!    in sync, and with `--ae-missing-percent` missing on one side (time of
//!    a round and bytes exchanged).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use media::wav::WavFormat;
use model::{NodeId, RecordingId, RecordingMeta, RecordingState, SourceKind};
use serde::Serialize;
use store::{ClusterIndex, DataDir, RecordingIndex, SqliteIndex};

use super::{api, call_args, metric, start_node, Server};
use crate::client::place_calls;

#[derive(Debug, Clone, clap::Args)]
pub struct ReplicationArgs {
    /// Recordings for the throughput measurement.
    #[arg(long, default_value_t = 16)]
    pub recordings: usize,
    /// Size of each, MiB.
    #[arg(long, default_value_t = 16)]
    pub mib: usize,
    /// Concurrent calls during the lag measurement.
    #[arg(long, default_value_t = 500)]
    pub calls: usize,
    /// Seconds each of those calls lasts.
    #[arg(long, default_value_t = 20.0)]
    pub call_duration: f64,
    /// Outbox items for the bytes-per-item measurement.
    #[arg(long, default_value_t = 100_000)]
    pub outbox_items: usize,
    /// Recordings each node holds for the anti-entropy measurement.
    #[arg(long, default_value_t = 100_000)]
    pub ae_recordings: usize,
    /// Share missing on one node, percent.
    #[arg(long, default_value_t = 1.0)]
    pub ae_missing_percent: f64,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize, Default)]
struct Report {
    bytes: u64,
    plain_copy_mib_per_s: f64,
    replication_mib_per_s: f64,
    throughput_ratio: f64,
    lag_calls: usize,
    lag_samples: u64,
    lag_ms_p50: Option<u64>,
    lag_ms_p99: Option<u64>,
    lag_ms_max: Option<u64>,
    outbox_items: usize,
    outbox_bytes_per_item: f64,
    ae_recordings: usize,
    ae_in_sync_ms: u64,
    ae_in_sync_bytes: u64,
    ae_missing: usize,
    ae_missing_ms: u64,
    ae_missing_bytes: u64,
    ae_pulled: u64,
}

const SECRET: &str = "bench-replication-secret";

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn member_env(id: &str, port: u16, peers: &[u16], extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let peers =
        format!("[{}]", peers.iter().map(|p| format!("\"http://127.0.0.1:{p}\"")).collect::<Vec<_>>().join(","));
    let mut env: Vec<(&'static str, String)> = vec![
        ("CALLVAULT_NODE_ID", id.into()),
        ("CALLVAULT_CLUSTER__LISTEN", format!("127.0.0.1:{port}")),
        ("CALLVAULT_CLUSTER__SECRET", SECRET.into()),
        ("CALLVAULT_CLUSTER__PEERS", peers),
        ("CALLVAULT_CLUSTER__HEARTBEAT_MS", "500".into()),
        ("CALLVAULT_CLUSTER__DEAD_AFTER_MS", "3000".into()),
    ];
    for (k, v) in extra {
        let key: &'static str = Box::leak(k.to_string().into_boxed_str());
        env.retain(|(ek, _)| *ek != key);
        env.push((key, v.clone()));
    }
    env
}

fn wait(timeout: Duration, what: &str, mut ok: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        if ok().unwrap_or(false) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(s: &Server) -> anyhow::Result<usize> {
    let v = api(s, "/api/v1/cluster")?;
    Ok(v["peers"].as_array().map_or(0, |p| p.iter().filter(|p| p["alive"] == true).count()))
}

/// Sends `files` over loopback TCP into files that are fsynced; MiB/s.
fn plain_copy(files: &[PathBuf], scratch: &Path) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let out = scratch.join("plain");
    std::fs::create_dir_all(&out)?;
    let n = files.len();
    let sink = std::thread::spawn(move || -> anyhow::Result<()> {
        for i in 0..n {
            let (mut conn, _) = listener.accept()?;
            let mut f = std::fs::File::create(out.join(format!("{i}.wav")))?;
            std::io::copy(&mut conn, &mut f)?;
            f.sync_all()?;
            conn.write_all(b"ok")?;
        }
        Ok(())
    });
    let t0 = Instant::now();
    let mut bytes = 0u64;
    for f in files {
        let mut conn = TcpStream::connect(addr)?;
        bytes += std::io::copy(&mut std::fs::File::open(f)?, &mut conn)?;
        conn.shutdown(std::net::Shutdown::Write)?;
        let mut ack = [0u8; 2];
        conn.read_exact(&mut ack)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    sink.join().map_err(|_| anyhow::anyhow!("sink panicked"))??;
    Ok(bytes as f64 / (1024.0 * 1024.0) / secs)
}

/// A spool recording of `mib` MiB (a WAV the node finishes at its next start).
fn spool_recording(dir: &DataDir, node: &str, mib: usize, rng: &mut fastrand::Rng) -> anyhow::Result<PathBuf> {
    let now = time::OffsetDateTime::now_utc();
    let id = RecordingId::new(now);
    let meta = RecordingMeta::start(id, NodeId(node.into()), SourceKind::Plain, now, "bench".into(), "bench recording");
    std::fs::write(dir.spool_json(id), meta.to_json())?;
    let path = dir.spool_wav(id);
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&WavFormat { sample_rate: 8000, channels: 2 }.header(0))?;
    let mut chunk = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        rng.fill(&mut chunk);
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    Ok(path)
}

/// A final recording without audio, for the anti-entropy population.
fn ae_meta(i: usize, node: &str, days: i64) -> RecordingMeta {
    let t = time::OffsetDateTime::now_utc() - time::Duration::seconds(((i as i64) * 86_400 * days) / 100_000);
    let mut m =
        RecordingMeta::start(RecordingId::new(t), NodeId(node.into()), SourceKind::Siprec, t, "bench".into(), "bench");
    m.transition(RecordingState::Completed, t + time::Duration::seconds(60), "BYE");
    m
}

pub fn run(args: ReplicationArgs) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("callvault-bench-repl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let result = run_in(&args, &root);
    let _ = std::fs::remove_dir_all(&root);
    let report = result?;
    println!("\n== callvault bench replication (loopback, 2 nodes)");
    println!(
        "throughput: {:.0} MiB in {} recordings; plain copy {:.1} MiB/s, replication {:.1} MiB/s, ratio {:.2} (goal >= 0.8)",
        report.bytes as f64 / 1048576.0,
        args.recordings,
        report.plain_copy_mib_per_s,
        report.replication_mib_per_s,
        report.throughput_ratio
    );
    println!(
        "lag, call end -> verified copy on the peer, {} concurrent calls: p50 {:?} ms, p99 {:?} ms, max {:?} ms ({} samples; goal p99 < 2000)",
        report.lag_calls, report.lag_ms_p50, report.lag_ms_p99, report.lag_ms_max, report.lag_samples
    );
    println!(
        "outbox: {:.0} bytes per queued item ({} items, SQLite)",
        report.outbox_bytes_per_item, report.outbox_items
    );
    println!(
        "anti-entropy, {} recordings each: in sync {} ms / {} bytes; {} missing: {} ms / {} bytes, {} pulled",
        report.ae_recordings,
        report.ae_in_sync_ms,
        report.ae_in_sync_bytes,
        report.ae_missing,
        report.ae_missing_ms,
        report.ae_missing_bytes,
        report.ae_pulled
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn run_in(args: &ReplicationArgs, root: &Path) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut rng = fastrand::Rng::with_seed(42);

    // 1. Throughput.
    let (pa, pb) = (free_port()?, free_port()?);
    let (da, db) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&da)?;
    std::fs::create_dir_all(&db)?;
    let a = start_node(&da, &member_env("node-a", pa, &[pb], &[]), "30000-32999")?;
    let b = start_node(&db, &member_env("node-b", pb, &[pa], &[]), "33000-35999")?;
    wait(Duration::from_secs(30), "membership", || Ok(alive(&a)? == 1 && alive(&b)? == 1))?;
    let dir_a = a.stop();
    let data_a = DataDir::open(&dir_a)?;
    let mut files = Vec::new();
    for _ in 0..args.recordings {
        files.push(spool_recording(&data_a, "node-a", args.mib, &mut rng)?);
    }
    // The baseline copies the same bytes (copies of the spool files, which the node will move).
    let scratch = root.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let copies: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let p = scratch.join(format!("{i}.src"));
            std::fs::copy(f, &p).map(|_| p)
        })
        .collect::<Result<_, _>>()?;
    report.bytes = copies.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    eprintln!("plain copy of {} MiB over loopback TCP with fsync", report.bytes / 1048576);
    report.plain_copy_mib_per_s = plain_copy(&copies, &scratch)?;
    eprintln!("replication of the same bytes to the peer");
    // The clock starts once A has archived them (recovery at start: header,
    // checksum) — archiving is not replication, and the plain copy does neither.
    let a = start_node(&dir_a, &member_env("node-a", pa, &[pb], &[]), "30000-32999")?;
    let t0 = Instant::now();
    let want = args.recordings as u64;
    wait(Duration::from_secs(1200), "every copy verified on B", || {
        Ok(metric(b.http, "callvault_replication_received_copies_total")? >= want)
    })?;
    let secs = t0.elapsed().as_secs_f64();
    report.replication_mib_per_s = report.bytes as f64 / 1048576.0 / secs;
    report.throughput_ratio = report.replication_mib_per_s / report.plain_copy_mib_per_s;

    // 2. Lag under load: a fresh start of A so only these calls count.
    let dir_a = a.stop();
    let a = start_node(&dir_a, &member_env("node-a", pa, &[pb], &[]), "30000-32999")?;
    wait(Duration::from_secs(30), "membership", || Ok(alive(&a)? == 1))?;
    eprintln!("lag: {} concurrent calls of {} s on A", args.calls, args.call_duration);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let ca = call_args(
        a.sip,
        &[
            "--calls",
            &args.calls.to_string(),
            "--concurrency",
            &args.calls.to_string(),
            "--rate",
            "100",
            "--duration",
            &args.call_duration.to_string(),
            "--setup-timeout",
            "30",
        ],
    )?;
    let summary = rt.block_on(place_calls(ca))?;
    report.lag_calls = summary.established;
    wait(Duration::from_secs(300), "A's outbox empty", || {
        let v = api(&a, "/api/v1/replication")?;
        Ok(v["targets"].as_object().is_some_and(|t| t.values().all(|x| x["depth"] == 0))
            && v["lag_samples"].as_u64().unwrap_or(0) >= summary.established as u64)
    })?;
    let v = api(&a, "/api/v1/replication")?;
    report.lag_samples = v["lag_samples"].as_u64().unwrap_or(0);
    report.lag_ms_p50 = v["lag_ms_p50"].as_u64();
    report.lag_ms_p99 = v["lag_ms_p99"].as_u64();
    report.lag_ms_max = v["lag_ms_max"].as_u64();
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(a);
    drop(b);

    // 3. Bytes per queued item.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    report.outbox_items = args.outbox_items;
    report.outbox_bytes_per_item = rt.block_on(async {
        let dir = DataDir::open(root.join("outbox"))?;
        let idx = SqliteIndex::open(&dir.db_path()).await?;
        let before = idx.size_bytes().await?;
        let now = time::OffsetDateTime::now_utc();
        let ids: Vec<RecordingId> =
            (0..args.outbox_items).map(|i| RecordingId::new(now + time::Duration::milliseconds(i as i64))).collect();
        for chunk in ids.chunks(5000) {
            idx.enqueue(&["node-b".to_owned()], &[model::replica::Lane::Audio], chunk, 0).await?;
        }
        let after = idx.size_bytes().await?;
        idx.close().await;
        Ok::<f64, anyhow::Error>((after - before) as f64 / args.outbox_items.max(1) as f64)
    })?;

    // 4. Anti-entropy: A and B hold the same recordings; C (B's twin) lacks some.
    let (ea, eb, ec) = (root.join("ae-a"), root.join("ae-b"), root.join("ae-c"));
    let missing_every = (100.0 / args.ae_missing_percent.max(0.0001)).round().max(1.0) as usize;
    eprintln!("anti-entropy: populating indexes with {} recordings", args.ae_recordings);
    let missing = rt.block_on(async {
        let ia = SqliteIndex::open(&DataDir::open(&ea)?.db_path()).await?;
        let ib = SqliteIndex::open(&DataDir::open(&eb)?.db_path()).await?;
        let ic = SqliteIndex::open(&DataDir::open(&ec)?.db_path()).await?;
        let metas: Vec<RecordingMeta> = (0..args.ae_recordings).map(|i| ae_meta(i, "node-x", 365)).collect();
        let mut missing = 0;
        for (n, chunk) in metas.chunks(2000).enumerate() {
            let refs: Vec<&RecordingMeta> = chunk.iter().collect();
            ia.upsert_many(&refs).await?;
            ib.upsert_many(&refs).await?;
            let partial: Vec<&RecordingMeta> =
                chunk.iter().enumerate().filter(|(i, _)| (n * 2000 + i) % missing_every != 0).map(|(_, m)| m).collect();
            missing += chunk.len() - partial.len();
            ic.upsert_many(&partial).await?;
        }
        for i in [ia, ib, ic] {
            i.close().await;
        }
        Ok::<usize, anyhow::Error>(missing)
    })?;
    let (qa, qb) = (free_port()?, free_port()?);
    let slow = [("CALLVAULT_CLUSTER__ANTI_ENTROPY_SECS", "100000".to_owned())];
    let a = start_node(&ea, &member_env("node-a", qa, &[qb], &slow), "36000-36999")?;
    let b = start_node(&eb, &member_env("node-b", qb, &[qa], &slow), "37000-37999")?;
    wait(Duration::from_secs(60), "membership", || Ok(alive(&a)? == 1 && alive(&b)? == 1))?;
    let (ms, bytes, _) = ae_round(&b)?;
    report.ae_recordings = args.ae_recordings;
    report.ae_in_sync_ms = ms;
    report.ae_in_sync_bytes = bytes;
    drop(b);
    report.ae_missing = missing;
    let c = start_node(&ec, &member_env("node-b", qb, &[qa], &slow), "37000-37999")?;
    wait(Duration::from_secs(60), "membership", || Ok(alive(&c)? == 1))?;
    let (ms, bytes, pulled) = ae_round(&c)?;
    report.ae_missing_ms = ms;
    report.ae_missing_bytes = bytes;
    report.ae_pulled = pulled;
    drop(a);
    drop(c);
    Ok(report)
}

/// Starts an anti-entropy round on `node` and waits for its figures:
/// (milliseconds, bytes exchanged, recordings pulled).
fn ae_round(node: &Server) -> anyhow::Result<(u64, u64, u64)> {
    let status = |s: &Server| -> anyhow::Result<serde_json::Value> {
        let v = api(s, "/api/v1/workers")?;
        v["workers"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["name"] == "anti-entropy").cloned())
            .context("no anti-entropy worker")
    };
    let before = status(node)?["status"]["items_done"].as_u64().unwrap_or(0);
    let rounds_before = metric(node.http, "callvault_anti_entropy_rounds_total")?;
    ureq::post(&format!("http://{}/api/v1/cluster/anti-entropy", node.http))
        .header("authorization", format!("Bearer {}", node.token))
        .send_empty()?;
    wait(Duration::from_secs(600), "the anti-entropy round", || {
        Ok(metric(node.http, "callvault_anti_entropy_rounds_total")? > rounds_before)
    })?;
    let s = status(node)?;
    let st = &s["status"];
    Ok((
        st["last_run_ms"].as_u64().unwrap_or(0),
        st["last_run_bytes"].as_u64().unwrap_or(0),
        st["items_done"].as_u64().unwrap_or(0) - before,
    ))
}
