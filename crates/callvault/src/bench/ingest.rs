//! `callvault bench` (ingest): what recording costs, measured against what the
//! machine needs just to receive the same packets.
//!
//! (a) **Floor**: a bare sink (mio + `recvmmsg`, nothing else) on as many
//!     sockets as the recorder would use, fed by the same pacer the load
//!     generator uses; CPU per packet from the sink thread's CPU clock.
//! (b) **Recorder**: the real `callvault serve` in a child process, N
//!     concurrent SIPREC calls (G.711 unless `--codec`/`--srtp` say
//!     otherwise) from the load generator; CPU per packet from the child's
//!     /proc counters over a window in the middle of the calls, loss from
//!     its metrics. N grows until packets are lost. `--compare` ramps
//!     each codec and SRTP in turn and sets them against G.711's ramp.
//! (c) **Setup rate**: INVITE→200 for many short calls at high concurrency.
//!
//! Ratios (b)/(a) are what to compare across machines: the box is shared
//! and noisy, so both figures come from the same run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use media::Codec;
use media_engine::RecvBatch;
use serde::Serialize;

use super::{call_args, metric, proc_cpu_ns, start_server};
use crate::client::{place_calls, Pacer, Source, StreamPlan};

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// First number of concurrent calls.
    #[arg(long, default_value_t = 250)]
    pub start: usize,
    /// Calls added per step.
    #[arg(long, default_value_t = 250)]
    pub step: usize,
    /// Stop after this many concurrent calls even without loss.
    #[arg(long, default_value_t = 2000)]
    pub max: usize,
    /// Seconds of measurement per step (after 3 s of warm-up).
    #[arg(long, default_value_t = 10)]
    pub window: u64,
    /// Calls for the setup-rate measurement.
    #[arg(long, default_value_t = 1000)]
    pub setup_calls: usize,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
    /// Codec of the calls (`pcmu`, `g722`, `opus`, `g729`): the load
    /// generator sends a pre-encoded tone, so its own cost stays small.
    #[arg(long, default_value = "pcmu")]
    pub codec: String,
    /// Send SRTP with this SDES suite (e.g. AES_CM_128_HMAC_SHA1_80).
    #[arg(long)]
    pub srtp: Option<String>,
    /// Ramp G.711, G.711 with SRTP, G.722, Opus and (in a `g729` build)
    /// G.729 one after another against the same server, and print each
    /// one's zero-loss maximum and cost as ratios to G.711's and to the
    /// bare receive floor of this same run (`--codec`/`--srtp` ignored).
    #[arg(long)]
    pub compare: bool,
}

/// What the load generator sends in one ramp.
#[derive(Debug, Clone, Serialize)]
struct Load {
    codec: String,
    srtp: Option<String>,
}

impl Load {
    fn name(&self) -> String {
        match &self.srtp {
            Some(suite) => format!("{} + SRTP {suite}", self.codec),
            None => self.codec.clone(),
        }
    }

    /// The loads `--compare` ramps, G.711 first (the reference).
    fn compared() -> Vec<Load> {
        let plain = |c: &str| Load { codec: c.into(), srtp: None };
        let mut loads =
            vec![plain("pcmu"), Load { codec: "pcmu".into(), srtp: Some("AES_CM_128_HMAC_SHA1_80".into()) }];
        loads.extend([plain("g722"), plain("opus")]);
        if Codec::G729.is_built() {
            loads.push(plain("g729"));
        }
        loads
    }
}

#[derive(Debug, Serialize, Clone)]
struct Floor {
    sockets: usize,
    packets: u64,
    cpu_ns_per_packet: f64,
}

#[derive(Debug, Serialize, Clone)]
struct Step {
    calls: usize,
    packets_per_s: f64,
    received: u64,
    sent: u64,
    lost: u64,
    late: u64,
    cpu_percent: f64,
    cpu_ns_per_packet: f64,
    floor_ns_per_packet: f64,
    ratio: f64,
}

/// One load's ramp: steps until loss (or the generator's limit).
#[derive(Debug, Serialize)]
struct Ramp {
    load: Load,
    steps: Vec<Step>,
    max_calls_without_loss: usize,
    /// Set when the load generator could not offer the next step's load
    /// (it shares the machine): the recorder's limit lies beyond.
    generator_saturated_at: Option<usize>,
}

impl Ramp {
    /// The last step without loss.
    fn clean_max(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.calls == self.max_calls_without_loss)
    }
}

#[derive(Debug, Serialize)]
struct Report {
    cores: usize,
    ramps: Vec<Ramp>,
    setup_calls: usize,
    setup_calls_per_s: f64,
    setup_ms_p50: f64,
    setup_ms_p95: f64,
}

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Receives with mio + recvmmsg on `sockets` sockets, counting packets and
/// its own CPU time, until `stop`.
fn sink(sockets: usize, pacer: &Pacer, window: Duration) -> anyhow::Result<Floor> {
    use mio::net::UdpSocket;
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new()?;
    let mut socks = Vec::with_capacity(sockets);
    for i in 0..sockets {
        let mut s = UdpSocket::bind("127.0.0.1:0".parse()?)?;
        poll.registry().register(&mut s, Token(i), Interest::READABLE)?;
        socks.push(s);
    }
    let plans = socks
        .iter()
        .map(|s| StreamPlan {
            dest: s.local_addr().expect("bound"),
            rtcp_dest: None,
            codecs: vec![(Duration::ZERO, Codec::Pcmu, 0)],
            encoder: Default::default(),
            precoded: false,
            telephone_event_pt: 101,
            source: Source::Tone(440.0),
            loss: 0.0,
            dtmf: None,
            delay_step: None,
            stray_ssrc: false,
            srtp: None,
        })
        .collect();
    pacer.play(u64::MAX, plans);
    let packets = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let (p2, s2, m2) = (packets.clone(), stop.clone(), measuring.clone());
    let handle = std::thread::spawn(move || -> u64 {
        use std::os::fd::AsRawFd;
        let mut events = Events::with_capacity(1024);
        let mut batch = RecvBatch::new(32);
        let (mut cpu0, mut counting) = (0u64, false);
        while !s2.load(Ordering::Relaxed) {
            if !counting && m2.load(Ordering::Relaxed) {
                counting = true;
                cpu0 = thread_cpu_ns();
            }
            let _ = poll.poll(&mut events, Some(Duration::from_millis(20)));
            for ev in events.iter() {
                let s = &socks[ev.token().0];
                loop {
                    let n = batch.recv(s.as_raw_fd()).unwrap_or(0);
                    if counting {
                        p2.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    if n < batch.capacity() {
                        break;
                    }
                }
            }
        }
        thread_cpu_ns() - cpu0
    });
    std::thread::sleep(Duration::from_secs(2));
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    let cpu = handle.join().expect("sink thread");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(pacer.stop(u64::MAX));
    let n = packets.load(Ordering::Relaxed).max(1);
    Ok(Floor { sockets, packets: n, cpu_ns_per_packet: cpu as f64 / n as f64 })
}

/// Raises the number of concurrent calls of `load` step by step until
/// packets are lost, late or the load generator falls short.
fn ramp(
    args: &IngestArgs,
    load: &Load,
    server: &super::Server,
    pacer: &Pacer,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Ramp> {
    let mut steps = Vec::new();
    let mut max_ok = 0;
    let mut saturated = None;
    let mut n = args.start.max(1);
    while n <= args.max {
        eprintln!("step: {n} concurrent calls ({} streams, {} packets/s)", 2 * n, 100 * n);
        let floor = sink(2 * n, pacer, Duration::from_secs(args.window))?;
        let duration = 3 + args.window + 3;
        let mut extra: Vec<&str> = Vec::new();
        if let Some(suite) = &load.srtp {
            extra.extend(["--srtp", suite.as_str()]);
        }
        let ca = call_args(
            server.sip,
            &[
                "--calls",
                &n.to_string(),
                "--concurrency",
                &n.to_string(),
                "--rate",
                "400",
                "--duration",
                &duration.to_string(),
                "--setup-timeout",
                "30",
                "--codec",
                &load.codec,
                "--precoded",
            ]
            .into_iter()
            .chain(extra)
            .collect::<Vec<_>>(),
        )?;
        let calls = rt.spawn(place_calls(ca));
        // Wait until every call is up (ramp at 400/s), then warm up.
        std::thread::sleep(Duration::from_secs_f64(n as f64 / 400.0) + Duration::from_secs(3));
        let (p0, l0, late0, c0) = (
            metric(server.http, "callvault_rtp_packets_total")?,
            metric(server.http, "callvault_rtp_lost_packets_total")?,
            metric(server.http, "callvault_rtp_late_packets_total")?,
            proc_cpu_ns(server.child.id())?,
        );
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(args.window));
        let (p1, l1, late1, c1) = (
            metric(server.http, "callvault_rtp_packets_total")?,
            metric(server.http, "callvault_rtp_lost_packets_total")?,
            metric(server.http, "callvault_rtp_late_packets_total")?,
            proc_cpu_ns(server.child.id())?,
        );
        let secs = t0.elapsed().as_secs_f64();
        let summary = rt.block_on(calls)??;
        let received = p1 - p0;
        let cpu = (c1 - c0) as f64;
        let per_packet = cpu / received.max(1) as f64;
        let step = Step {
            calls: n,
            packets_per_s: received as f64 / secs,
            received,
            sent: summary.packets_sent,
            lost: l1 - l0,
            late: late1 - late0,
            cpu_percent: cpu / secs / 1e7,
            cpu_ns_per_packet: per_packet,
            floor_ns_per_packet: floor.cpu_ns_per_packet,
            ratio: per_packet / floor.cpu_ns_per_packet.max(1.0),
        };
        let failed = summary.failed;
        eprintln!(
            "  {} calls up ({} failed): {:.0} pkt/s, CPU {:.1}%, {:.0} ns/pkt vs floor {:.0} ns/pkt (x{:.2}), lost {}, late {}",
            summary.established, failed, step.packets_per_s, step.cpu_percent, step.cpu_ns_per_packet,
            step.floor_ns_per_packet, step.ratio, step.lost, step.late
        );
        let offered = 100.0 * n as f64;
        let delivered = step.packets_per_s >= 0.98 * offered;
        let clean = step.lost == 0 && step.late == 0 && failed == 0;
        steps.push(step);
        if !delivered && clean {
            eprintln!(
                "  the load generator delivered {:.0} of {offered:.0} packets/s: stopping here",
                steps.last().map(|s| s.packets_per_s).unwrap_or(0.0)
            );
            saturated = Some(n);
            break;
        }
        if !clean {
            break;
        }
        max_ok = n;
        n += args.step.max(1);
        std::thread::sleep(Duration::from_secs(2)); // let the recordings close
    }

    Ok(Ramp { load: load.clone(), steps, max_calls_without_loss: max_ok, generator_saturated_at: saturated })
}

pub fn run(args: IngestArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!("callvault bench on {cores} cores");
    let pacer = Pacer::start("127.0.0.1:0".parse()?)?;

    let server = start_server()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let loads =
        if args.compare { Load::compared() } else { vec![Load { codec: args.codec.clone(), srtp: args.srtp.clone() }] };
    let mut ramps = Vec::new();
    for load in loads {
        eprintln!("== ramp: {}", load.name());
        ramps.push(ramp(&args, &load, &server, &pacer, &rt)?);
    }

    eprintln!("setup rate: {} calls", args.setup_calls);
    let ca = call_args(
        server.sip,
        &["--calls", &args.setup_calls.to_string(), "--concurrency", "500", "--rate", "100000", "--duration", "0.2"],
    )?;
    let t0 = Instant::now();
    let s = rt.block_on(place_calls(ca))?;
    let rate = s.established as f64 / t0.elapsed().as_secs_f64();
    let report = Report {
        cores,
        ramps,
        setup_calls: s.attempted,
        setup_calls_per_s: rate,
        setup_ms_p50: s.setup_ms_p50,
        setup_ms_p95: s.setup_ms_p95,
    };
    for r in &report.ramps {
        print_ramp(report.cores, r);
    }
    if report.ramps.len() > 1 {
        print_comparison(&report.ramps);
    }
    println!(
        "call setup: {} calls, {:.0} calls/s, INVITE->200 p50 {:.1} ms, p95 {:.1} ms ({} failed)",
        report.setup_calls, report.setup_calls_per_s, report.setup_ms_p50, report.setup_ms_p95, s.failed
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn print_ramp(cores: usize, r: &Ramp) {
    println!("\n== callvault bench ({cores} cores, {})", r.load.name());
    println!(
        "{:>6} {:>9} {:>7} {:>12} {:>12} {:>7} {:>6} {:>6}",
        "calls", "pkt/s", "cpu%", "ns/pkt", "floor ns", "ratio", "lost", "late"
    );
    for s in &r.steps {
        println!(
            "{:>6} {:>9.0} {:>7.1} {:>12.0} {:>12.0} {:>7.2} {:>6} {:>6}",
            s.calls,
            s.packets_per_s,
            s.cpu_percent,
            s.cpu_ns_per_packet,
            s.floor_ns_per_packet,
            s.ratio,
            s.lost,
            s.late
        );
    }
    println!("max concurrent calls with zero loss: {}", r.max_calls_without_loss);
    if let Some(n) = r.generator_saturated_at {
        println!("(at {n} calls the load generator, on the same machine, could not offer the load; the recorder's limit is higher)");
    }
}

/// Each load against the first (G.711) and the floor, all from this run:
/// the zero-loss maxima, and the cost per packet at a load's maximum
/// against G.711's at the same number of calls (per-packet cost falls as
/// batches grow with load, so only equal loads compare).
fn print_comparison(ramps: &[Ramp]) {
    let base = &ramps[0];
    let base_calls = base.max_calls_without_loss.max(1) as f64;
    println!("\n== zero-loss maximum and cost per packet, against {} in this run", base.load.name());
    println!(
        "{:<40} {:>10} {:>9} {:>12} {:>16} {:>9}",
        "load", "max calls", "vs G.711", "ns/pkt @max", "vs G.711 @same", "vs floor"
    );
    for r in ramps {
        let limit = if r.generator_saturated_at.is_some() { "+" } else { "" };
        let calls = format!("{}{limit}", r.max_calls_without_loss);
        let (ns, vs_base, vs_floor) = match r.clean_max() {
            Some(s) => {
                let same = base.steps.iter().find(|b| b.calls == s.calls && b.lost == 0 && b.late == 0);
                (
                    format!("{:.0}", s.cpu_ns_per_packet),
                    same.map_or("-".into(), |b| format!("{:.2}x", s.cpu_ns_per_packet / b.cpu_ns_per_packet)),
                    format!("{:.1}x", s.ratio),
                )
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<40} {:>10} {:>8.2}x {:>12} {:>16} {:>9}",
            r.load.name(),
            calls,
            r.max_calls_without_loss as f64 / base_calls,
            ns,
            vs_base,
            vs_floor
        );
    }
    println!("(+: the load generator ran out before the recorder lost a packet; the limit is higher)");
}
