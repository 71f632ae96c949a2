//! `callvault bench soak`: does the server's memory stay flat under
//! sustained call churn?
//!
//! A release `callvault serve` child takes `--calls` short SIPREC calls
//! (real SIP, real RTP) at a steady rate. Every `--report-every` calls the
//! bench prints the server's resident memory from `/proc/PID/status`
//! (anonymous: the heap; file: mapped binary and libraries), and once more
//! after an idle pause with nothing active and the archive backlog
//! drained. The figure that matters is the ratio to the first report: the
//! first calls warm up pools, caches and allocator arenas, after which a
//! node that runs for a year must not grow.
//!
//! Goal (issue "memory stays flat"): after the first report, RssAnon grows
//! by less than 5 % over the rest of the run, and after the idle pause it
//! is within 10 % of the first report.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::{call_args, metric, start_server};
use crate::client::place_calls;

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Calls in total.
    #[arg(long, default_value_t = 200_000)]
    pub calls: usize,
    /// Print memory every this many calls (the first report is the baseline).
    #[arg(long, default_value_t = 10_000)]
    pub report_every: usize,
    /// New calls per second.
    #[arg(long, default_value_t = 400.0)]
    pub rate: f64,
    /// Calls up at the same time, at most.
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Seconds of media per call.
    #[arg(long, default_value_t = 1.0)]
    pub duration: f64,
    /// Seconds of idle before the last reading (backlog drained first).
    #[arg(long, default_value_t = 20)]
    pub idle: u64,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Serialize)]
struct Rss {
    anon_kib: u64,
    file_kib: u64,
}

fn rss(pid: u32) -> anyhow::Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("{name} missing"))?;
        Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
    };
    Ok(Rss { anon_kib: field("RssAnon:")?, file_kib: field("RssFile:")? })
}

#[derive(Debug, Clone, Serialize)]
struct Reading {
    calls: usize,
    failed: usize,
    seconds: f64,
    rss: Rss,
    /// RssAnon against the first reading.
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    readings: Vec<Reading>,
    idle: Reading,
    growth_after_first_percent: f64,
    idle_vs_first_percent: f64,
}

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    let server = start_server()?;
    let pid = server.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let every = args.report_every.max(1);
    eprintln!(
        "soak: {} calls of {} s at {}/s (at most {} at once), memory every {every} calls",
        args.calls, args.duration, args.rate, args.concurrency
    );
    let started = Instant::now();
    let mut done = 0;
    let mut failed = 0;
    let mut readings: Vec<Reading> = Vec::new();
    let start_rss = rss(pid)?;
    eprintln!("{:>8} {:>8} {:>9} {:>11} {:>11} {:>7}", "calls", "failed", "seconds", "anon KiB", "file KiB", "ratio");
    eprintln!("{:>8} {:>8} {:>9.0} {:>11} {:>11}", 0, 0, 0.0, start_rss.anon_kib, start_rss.file_kib);
    while done < args.calls {
        let n = every.min(args.calls - done);
        let ca = call_args(
            server.sip,
            &[
                "--calls",
                &n.to_string(),
                "--concurrency",
                &args.concurrency.to_string(),
                "--rate",
                &args.rate.to_string(),
                "--duration",
                &args.duration.to_string(),
                "--setup-timeout",
                "30",
            ],
        )?;
        let summary = rt.block_on(place_calls(ca))?;
        done += n;
        failed += summary.failed;
        let r = rss(pid)?;
        let base = readings.first().map_or(r.anon_kib, |f| f.rss.anon_kib);
        let reading = Reading {
            calls: done,
            failed,
            seconds: started.elapsed().as_secs_f64(),
            rss: r,
            ratio: r.anon_kib as f64 / base.max(1) as f64,
        };
        eprintln!(
            "{:>8} {:>8} {:>9.0} {:>11} {:>11} {:>7.3}",
            reading.calls, reading.failed, reading.seconds, r.anon_kib, r.file_kib, reading.ratio
        );
        readings.push(reading);
    }

    // Idle: wait for the archive backlog to drain, then the pause.
    let drain_deadline = Instant::now() + Duration::from_secs(300);
    while metric(server.http, "callvault_recordings_unarchived").unwrap_or(0) > 0
        || metric(server.http, "callvault_active_recordings").unwrap_or(0) > 0
    {
        if Instant::now() > drain_deadline {
            eprintln!("soak: backlog still not drained after 300 s");
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(args.idle));
    let first = readings.first().context("no calls placed")?.rss.anon_kib.max(1);
    let r = rss(pid)?;
    let idle = Reading {
        calls: done,
        failed,
        seconds: started.elapsed().as_secs_f64(),
        rss: r,
        ratio: r.anon_kib as f64 / first as f64,
    };
    eprintln!(
        "{:>8} {:>8} {:>9.0} {:>11} {:>11} {:>7.3}  (after {} s idle, backlog drained)",
        "idle", idle.failed, idle.seconds, r.anon_kib, r.file_kib, idle.ratio, args.idle
    );
    let peak_after_first = readings.iter().map(|x| x.rss.anon_kib).max().unwrap_or(first);
    let last = readings.last().map_or(first, |x| x.rss.anon_kib);
    let report = Report {
        growth_after_first_percent: (last as f64 / first as f64 - 1.0) * 100.0,
        idle_vs_first_percent: (idle.rss.anon_kib as f64 / first as f64 - 1.0) * 100.0,
        readings,
        idle,
    };
    println!("\n== callvault bench soak");
    println!(
        "RssAnon at the first report {first} KiB, at the end {last} KiB ({:+.1} %; goal < 5 %), peak {peak_after_first} KiB",
        report.growth_after_first_percent
    );
    println!(
        "after {} s idle: {} KiB ({:+.1} % of the first report; goal within 10 %)",
        args.idle, report.idle.rss.anon_kib, report.idle_vs_first_percent
    );
    println!("calls: {done}, failed: {failed}");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    // The load generator's pacer threads run until the process ends.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
