//! `callvault bench search`: search latency over a large index, time to
//! the first audio byte, and requests/s of the recordings list API, each
//! next to the same work done directly (the store's query in-process, the
//! file read directly) in the same run.
//!
//! The index is generated through the real store (`SqliteIndex::upsert_many`,
//! the path the recorder's indexer takes) with seeded randomness, kept in
//! `--data-dir` to be reused by later runs.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use model::{NodeId, Participant, RecordingId, RecordingMeta, RecordingState, SourceKind};
use store::{DataDir, ListQuery, RecordingIndex, SqliteIndex};
use time::OffsetDateTime;

#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// Recordings in the index.
    #[arg(long, default_value_t = 1_000_000)]
    pub recordings: u64,
    /// Timed samples per query kind.
    #[arg(long, default_value_t = 40)]
    pub samples: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Where the generated index is kept (reused when it already holds
    /// enough recordings); default: a fresh temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

const NAMES: &[&str] = &["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"];
const SURNAMES: &[&str] = &["Smith", "Jones", "Brown", "Taylor", "Wilson", "Davies", "Evans", "Thomas", "Roberts"];
/// The generated calls span this many days, ending now.
const DAYS: i64 = 90;

fn number(rng: &mut fastrand::Rng) -> String {
    format!("+44{:010}", rng.u64(1_000_000_000..10_000_000_000))
}

fn generated(rng: &mut fastrand::Rng, now: OffsetDateTime, node: &NodeId) -> RecordingMeta {
    let started = now - time::Duration::milliseconds(rng.i64(0..DAYS * 86_400_000));
    let mut m = RecordingMeta::start(
        RecordingId::new(started),
        node.clone(),
        SourceKind::Siprec,
        started,
        "udp:192.0.2.10:5060".into(),
        "SIPREC INVITE accepted",
    );
    let (caller, callee) = (number(rng), format!("{}", rng.u32(1000..10_000)));
    let name = |rng: &mut fastrand::Rng| {
        format!("{} {}", NAMES[rng.usize(..NAMES.len())], SURNAMES[rng.usize(..SURNAMES.len())])
    };
    m.caller = Some(caller.clone());
    m.callee = Some(callee.clone());
    m.direction = Some(if rng.bool() { "inbound" } else { "outbound" }.into());
    let call_id = format!("{:016x}@sbc.example", rng.u64(..));
    m.call_ids = vec![call_id.clone()];
    m.call_key = Some(format!("siprec:{:016x}", rng.u64(..)));
    m.participants = vec![
        Participant {
            name: Some(name(rng)),
            aor: Some(format!("sip:{caller}@carrier.example")),
            number: Some(caller),
            role: Some("caller".into()),
            channel: Some(0),
            ..Default::default()
        },
        Participant {
            name: Some(name(rng)),
            aor: Some(format!("sip:{callee}@pbx.example")),
            number: Some(callee),
            role: Some("callee".into()),
            channel: Some(1),
            ..Default::default()
        },
    ];
    let duration = rng.u64(5_000..900_000);
    m.duration_ms = duration;
    m.transition(RecordingState::Completed, started + time::Duration::milliseconds(duration as i64), "BYE");
    m
}

/// p50 and p99 of durations, in milliseconds.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    let (dir, owned) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("callvault-bench-search-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let data = DataDir::open(&dir)?;
    let index = Arc::new(rt.block_on(SqliteIndex::open(&data.db_path()))?);
    let have = rt.block_on(index.count(&ListQuery::default(), u64::MAX))?;
    let node = NodeId(data.node_id(None)?);
    if have < args.recordings {
        let mut rng = fastrand::Rng::with_seed(42 + have);
        let now = OffsetDateTime::now_utc();
        let t0 = Instant::now();
        let mut made = have;
        while made < args.recordings {
            let n = (args.recordings - made).min(2_000);
            let batch: Vec<RecordingMeta> = (0..n).map(|_| generated(&mut rng, now, &node)).collect();
            let refs: Vec<&RecordingMeta> = batch.iter().collect();
            rt.block_on(index.upsert_many(&refs))?;
            made += n;
            if made % 100_000 < 2_000 {
                eprintln!("  indexed {made} recordings ({:.0}/s)", (made - have) as f64 / t0.elapsed().as_secs_f64());
            }
        }
        eprintln!(
            "generated {} recordings through the store in {:.0} s ({:.0}/s)",
            made - have,
            t0.elapsed().as_secs_f64(),
            (made - have) as f64 / t0.elapsed().as_secs_f64()
        );
    }
    let size = rt.block_on(index.size_bytes())?;
    println!("index: {} recordings, {:.1} GiB", args.recordings.max(have), size as f64 / (1u64 << 30) as f64);

    // The node on this index, and one real call for the playback figure.
    let server = super::start_node(&dir, &[], "38000-38099")?;
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["call", &server.sip.to_string(), "--duration", "3", "--json"])
        .output()?;
    let call: serde_json::Value = serde_json::from_slice(&out.stdout).context("the test call's summary")?;
    let call_id = call["calls"][0]["call_ids"][0].as_str().context("the call was not recorded")?.to_owned();
    let base = format!("http://{}", server.http);
    let auth = format!("Bearer {}", server.token);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let api = |path: &str| -> anyhow::Result<serde_json::Value> {
        let mut r = agent.get(&format!("{base}{path}")).header("authorization", &auth).call()?;
        if r.status() != 200 {
            bail!("{path}: {} {}", r.status(), r.body_mut().read_to_string()?);
        }
        Ok(serde_json::from_str(&r.body_mut().read_to_string()?)?)
    };

    // Query kinds: filters an operator types, on values that exist.
    let mut rng = fastrand::Rng::with_seed(7);
    let sample: Vec<RecordingMeta> =
        rt.block_on(index.list(&ListQuery { limit: 2_000, offset: rng.u32(0..10_000), ..Default::default() }))?;
    let now = OffsetDateTime::now_utc();
    type Kind = (&'static str, Box<dyn Fn(&mut fastrand::Rng) -> (String, ListQuery)>);
    let kinds: Vec<Kind> = vec![
        ("newest page", Box::new(|_| ("limit=50".into(), ListQuery { limit: 50, ..Default::default() }))),
        (
            "party substring",
            Box::new(move |rng| {
                let m = &sample[rng.usize(..sample.len())];
                let caller = m.caller.clone().unwrap_or_default();
                let part = caller[caller.len() - 6..].to_owned();
                (
                    format!("party={}&limit=50", part.replace('+', "%2B")),
                    ListQuery { party: Some(part), limit: 50, ..Default::default() },
                )
            }),
        ),
        (
            "name (~20% match)",
            Box::new(|rng| {
                let name = SURNAMES[rng.usize(..SURNAMES.len())];
                (
                    format!("party={name}&limit=50"),
                    ListQuery { party: Some(name.into()), limit: 50, ..Default::default() },
                )
            }),
        ),
        (
            "time range (1 h)",
            Box::new(move |rng| {
                let from = now - time::Duration::hours(rng.i64(1..DAYS * 24));
                let to = from + time::Duration::hours(1);
                let f = |t: OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
                (
                    format!("since={}&until={}&limit=50", f(from), f(to)),
                    ListQuery { since: Some(from), until: Some(to), limit: 50, ..Default::default() },
                )
            }),
        ),
        (
            "call id",
            Box::new({
                let ids: Vec<String> = index_ids(&rt, &index)?;
                move |rng| {
                    let id = ids[rng.usize(..ids.len())].clone();
                    (
                        format!("id={}", id.replace('@', "%40")),
                        ListQuery { identifier: Some(id), limit: 50, ..Default::default() },
                    )
                }
            }),
        ),
    ];
    println!();
    println!("search latency over {} recordings ({} samples each; API = HTTP + auth + audit + JSON; store = the same query in-process)", args.recordings.max(have), args.samples);
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "query", "api p50", "api p99", "store p50", "store p99", "ratio"
    );
    for (name, make) in &kinds {
        let (mut api_t, mut store_t) = (Vec::new(), Vec::new());
        let mut totals = 0u64;
        for _ in 0..args.samples {
            let (qs, q) = make(&mut rng);
            let t = Instant::now();
            let v = api(&format!("/api/v1/recordings?{qs}"))?;
            api_t.push(t.elapsed());
            totals += v["total"].as_u64().unwrap_or(0);
            let t = Instant::now();
            let (_rows, _n) =
                rt.block_on(async { tokio::try_join!(index.list(&q), index.count(&q, web::recordings::COUNT_CAP)) })?;
            store_t.push(t.elapsed());
        }
        let ((a50, a99), (s50, s99)) = (percentiles(api_t), percentiles(store_t));
        println!(
            "{name:<18} {a50:>8.1}ms {a99:>8.1}ms {s50:>8.1}ms {s99:>8.1}ms {:>7.2}x   (mean total {})",
            a50 / s50.max(0.001),
            totals / args.samples as u64
        );
    }

    // Time to the first audio byte: through the API vs opening the file.
    let v = api(&format!("/api/v1/recordings?id={}", call_id.replace('@', "%40")))?;
    let rec = &v["recordings"][0];
    let id = rec["id"].as_str().context("the call's recording")?.to_owned();
    let path = dir.join(rec["audio"]["path"].as_str().context("audio path")?);
    let (mut via_api, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..args.samples {
        let t = Instant::now();
        let mut r = agent.get(&format!("{base}/api/v1/recordings/{id}/audio")).header("authorization", &auth).call()?;
        let mut one = [0u8; 1];
        r.body_mut().as_reader().read_exact(&mut one)?;
        via_api.push(t.elapsed());
        let t = Instant::now();
        std::fs::File::open(&path)?.read_exact(&mut one)?;
        direct.push(t.elapsed());
    }
    let ((a50, a99), (d50, d99)) = (percentiles(via_api), percentiles(direct));
    println!();
    println!("time to first audio byte: api p50 {a50:.2} ms p99 {a99:.2} ms; file p50 {d50:.3} ms p99 {d99:.3} ms");

    // Throughput of the list API (2 clients) vs the same query in-process.
    let stop = Instant::now() + Duration::from_secs(args.seconds);
    let done = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..2 {
            let done = done.clone();
            let (agent, base, auth) = (agent.clone(), base.clone(), auth.clone());
            s.spawn(move || {
                while Instant::now() < stop {
                    if let Ok(mut r) =
                        agent.get(&format!("{base}/api/v1/recordings?limit=50")).header("authorization", &auth).call()
                    {
                        if r.status() == 200 && r.body_mut().read_to_vec().is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let api_rps = done.load(Ordering::Relaxed) as f64 / args.seconds as f64;
    let q = ListQuery { limit: 50, ..Default::default() };
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(args.seconds) {
        rt.block_on(async { tokio::try_join!(index.list(&q), index.count(&q, web::recordings::COUNT_CAP)) })?;
        n += 1;
    }
    let store_rps = n as f64 / t.elapsed().as_secs_f64();
    println!("list API (limit 50, with total): {api_rps:.0} requests/s (2 clients); store in-process {store_rps:.0}/s; ratio {:.2}", api_rps / store_rps.max(0.001));

    drop(server);
    rt.block_on(index.close());
    if owned {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Call-IDs of a spread of recordings, for exact-identifier queries.
fn index_ids(rt: &tokio::runtime::Runtime, index: &SqliteIndex) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for offset in [0u32, 1_000, 50_000, 200_000, 500_000] {
        let page = rt.block_on(index.list(&ListQuery { limit: 200, offset, ..Default::default() }))?;
        out.extend(page.into_iter().filter_map(|m| m.call_ids.first().cloned()));
    }
    if out.is_empty() {
        bail!("the index is empty");
    }
    Ok(out)
}
