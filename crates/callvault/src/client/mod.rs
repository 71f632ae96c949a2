//! `callvault call`: places real calls against a recorder, as a SIPREC
//! SBC, as Cisco Built-in-Bridge forking (two delayed-offer legs linked by
//! `x-refci`), or as a plain INVITE, with real RTP paced at 20 ms from WAV
//! files or tones. Many calls at once with `--calls`, `--concurrency` and
//! `--rate`; prints a summary (or JSON with `--json`).

mod rtp;
mod sip;

pub use self::rtp::{Pacer, Source, StreamPlan};

pub use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use media::Codec;
use serde::Serialize;
use sip_proto::{HeaderAccess, Method, Response, Transport};
use siprec::sdp;
use tokio::sync::Semaphore;

use self::sip::{Leg, Wake};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    /// RFC 7866 SIPREC: one INVITE, SDP + rs-metadata, two labelled streams.
    Siprec,
    /// Cisco BiB style: two INVITEs (near end, far end) without SDP, linked by x-refci.
    Forked,
    /// A plain INVITE with `--streams` sendonly media lines.
    Plain,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TransportArg {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum CodecArg {
    Pcmu,
    Pcma,
    G722,
    Opus,
    /// Only with a build that has the `g729` feature.
    G729,
}

impl CodecArg {
    fn codec(self) -> Codec {
        match self {
            CodecArg::Pcmu => Codec::Pcmu,
            CodecArg::Pcma => Codec::Pcma,
            CodecArg::G722 => Codec::G722,
            CodecArg::Opus => Codec::Opus,
            CodecArg::G729 => Codec::G729,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// Recorder SIP address, host:port.
    pub target: String,
    #[arg(long, value_enum, default_value = "siprec")]
    pub mode: Mode,
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: TransportArg,
    /// Seconds of media per call before hanging up.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Calls to place in total.
    #[arg(long, default_value_t = 1)]
    pub calls: usize,
    /// Calls up at the same time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// New calls per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// WAV for the caller's voice (stream/channel A); default a tone.
    #[arg(long)]
    pub wav_a: Option<PathBuf>,
    /// WAV for the callee's voice (stream/channel B).
    #[arg(long)]
    pub wav_b: Option<PathBuf>,
    /// Tone for A when no WAV is given, Hz.
    #[arg(long, default_value_t = 440.0)]
    pub tone_a: f64,
    /// Tone for B when no WAV is given, Hz.
    #[arg(long, default_value_t = 1000.0)]
    pub tone_b: f64,
    /// Codecs to offer and send. Several (`pcmu,g722,opus`) are all
    /// offered, and each stream switches to the next at equal shares of
    /// `--duration` (a mid-call codec change).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "pcmu")]
    pub codec: Vec<CodecArg>,
    /// Stream B (every second stream; the far-end leg of a forked call)
    /// offers and sends only this codec: two legs at different rates.
    #[arg(long, value_enum)]
    pub codec_b: Option<CodecArg>,
    /// Silence suppression: G.729 Annex B (SID frames, then nothing) and
    /// Opus DTX (after 200 ms of silence, a one-byte packet every 400 ms).
    #[arg(long)]
    pub vad: bool,
    /// With several `--codec`: just before each switch, re-INVITE offering
    /// the next codec first (and the current one), as gateways that move a
    /// call to another codec do. SIPREC and plain calls.
    #[arg(long)]
    pub reinvite_on_switch: bool,
    /// Tones only: encode one second of each tone once and loop it, so a
    /// load test measures the recorder, not this generator's encoder
    /// (Opus encoding costs more than decoding).
    #[arg(long)]
    pub precoded: bool,
    /// Fraction of RTP packets to drop (0.0–1.0), to test loss handling.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Send no RTP at all on stream B (a firewall or NAT that eats one
    /// direction): tests the no-RTP alarm.
    #[arg(long)]
    pub no_rtp_b: bool,
    /// After every packet of stream B, one of another SSRC carrying noise
    /// from the same socket: the recorded audio must not change.
    #[arg(long)]
    pub stray_ssrc_b: bool,
    /// Offer SRTP (RTP/SAVP with an SDES `a=crypto` key) with this suite,
    /// e.g. AES_CM_128_HMAC_SHA1_80, AEAD_AES_256_GCM; media is encrypted.
    #[arg(long)]
    pub srtp: Option<String>,
    /// With `--srtp`: encrypt with a different key than the one offered
    /// (the recorder must drop every packet).
    #[arg(long)]
    pub srtp_wrong_key: bool,
    #[arg(long, default_value = "+15550100")]
    pub caller: String,
    #[arg(long, default_value = "+15550199")]
    pub callee: String,
    #[arg(long, default_value = "Alice Caller")]
    pub caller_name: String,
    #[arg(long, default_value = "Bob Callee")]
    pub callee_name: String,
    /// Media lines of a plain call.
    #[arg(long, default_value_t = 2)]
    pub streams: usize,
    /// Plain calls: send the INVITE without SDP (offer comes in the 200 OK).
    #[arg(long)]
    pub delayed_offer: bool,
    /// DTMF digits to send on stream A (RFC 4733).
    #[arg(long)]
    pub dtmf: Option<String>,
    /// When to send the DTMF digits, seconds into the call.
    #[arg(long, default_value_t = 1.0)]
    pub dtmf_at: f64,
    /// Delay stream A by this many ms from `--delay-step-at` on, as a
    /// network path that gets slower would (tests jitter-buffer recovery).
    #[arg(long)]
    pub delay_step_a: Option<u64>,
    /// When the delay step of `--delay-step-a` happens, seconds into the call.
    #[arg(long, default_value_t = 2.0)]
    pub delay_step_at: f64,
    /// Local address to send from (default: loopback for loopback targets).
    #[arg(long)]
    pub local_ip: Option<IpAddr>,
    /// Seconds to wait for the final answer to an INVITE.
    #[arg(long, default_value_t = 10.0)]
    pub setup_timeout: f64,
    /// SIPREC: the communication session id in the metadata (default:
    /// random per call). Two clients with the same id act like an SBC
    /// forking one call to two recorders.
    #[arg(long)]
    pub session_id: Option<String>,
    /// Print a JSON summary (with every call) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Outcome of one call.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CallOutcome {
    pub call_ids: Vec<String>,
    pub established: bool,
    /// Final status of the (first failing, else first) INVITE.
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub setup_ms: Option<f64>,
    pub ended_by_recorder: bool,
    pub packets_sent: u64,
    pub packets_dropped: u64,
    /// Re-INVITEs (codec switches) the recorder answered 200.
    pub reinvites_answered: u32,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub attempted: usize,
    pub established: usize,
    pub failed: usize,
    pub failures_by_status: std::collections::BTreeMap<String, usize>,
    pub setup_ms_mean: f64,
    pub setup_ms_p50: f64,
    pub setup_ms_p95: f64,
    pub setup_ms_max: f64,
    pub packets_sent: u64,
    pub elapsed_s: f64,
    pub calls: Vec<CallOutcome>,
}

struct Shared {
    args: CallArgs,
    target: SocketAddr,
    local_ip: IpAddr,
    pacer: Pacer,
    source_a: Source,
    source_b: Source,
    /// What `--codec` names, in order.
    codecs: Vec<Codec>,
    /// The SRTP key offered in `a=crypto`, and the one media is sent with
    /// (another one with `--srtp-wrong-key`).
    srtp_offer: Option<rtp_core::srtp::SrtpKey>,
    srtp_send: Option<rtp_core::srtp::SrtpKey>,
    /// `o=` session id of our SDP (re-INVITEs keep it).
    sdp_session: u32,
}

pub fn run(args: CallArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = rt.block_on(place_calls(args.clone()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "calls: {} attempted, {} established, {} failed {:?}",
            summary.attempted, summary.established, summary.failed, summary.failures_by_status
        );
        println!(
            "setup (INVITE→final): mean {:.1} ms, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            summary.setup_ms_mean, summary.setup_ms_p50, summary.setup_ms_p95, summary.setup_ms_max
        );
        println!("rtp packets sent: {}; elapsed {:.1} s", summary.packets_sent, summary.elapsed_s);
        for c in summary.calls.iter().filter(|c| !c.established) {
            println!(
                "  failed {:?}: {:?} {}",
                c.call_ids,
                c.status,
                c.error.as_deref().or(c.reason.as_deref()).unwrap_or("")
            );
        }
    }
    if summary.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

pub async fn place_calls(args: CallArgs) -> anyhow::Result<Summary> {
    let target = tokio::net::lookup_host(&args.target)
        .await
        .with_context(|| format!("resolving {}", args.target))?
        .next()
        .with_context(|| format!("{} has no address", args.target))?;
    let local_ip = args.local_ip.unwrap_or(if target.ip().is_loopback() {
        target.ip()
    } else if target.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        "::".parse().expect("valid")
    });
    let load = |p: &Option<PathBuf>, tone: f64| -> anyhow::Result<Source> {
        Ok(match p {
            Some(p) => Source::Samples(Arc::new(rtp::load_wav(p).with_context(|| format!("reading {}", p.display()))?)),
            None => Source::Tone(tone),
        })
    };
    let suite = match &args.srtp {
        Some(name) => {
            Some(rtp_core::srtp::SrtpSuite::from_sdes(name).with_context(|| format!("unknown SRTP suite {name}"))?)
        }
        None => None,
    };
    let srtp_offer = suite.map(rtp_core::srtp::SrtpKey::random);
    let srtp_send = match suite {
        Some(s) if args.srtp_wrong_key => Some(rtp_core::srtp::SrtpKey::random(s)),
        _ => srtp_offer.clone(),
    };
    let shared = Arc::new(Shared {
        sdp_session: fastrand::u32(..),
        srtp_offer,
        srtp_send,
        source_a: load(&args.wav_a, args.tone_a)?,
        source_b: load(&args.wav_b, args.tone_b)?,
        codecs: codecs_of(&args),
        pacer: Pacer::start(SocketAddr::new(local_ip, 0))?,
        target,
        local_ip,
        args: args.clone(),
    });
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.calls);
    for i in 0..args.calls {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let due = started + gap.mul_f64(i as f64);
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        let sh = shared.clone();
        tasks.push(tokio::spawn(async move {
            let out = one_call(&sh, i as u64).await;
            drop(permit);
            out
        }));
    }
    let mut calls = Vec::with_capacity(tasks.len());
    for t in tasks {
        calls.push(t.await.unwrap_or_else(|e| CallOutcome { error: Some(e.to_string()), ..Default::default() }));
    }
    let mut setups: Vec<f64> = calls.iter().filter_map(|c| c.setup_ms).collect();
    setups.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| if setups.is_empty() { 0.0 } else { setups[((setups.len() - 1) as f64 * p).round() as usize] };
    let mut failures = std::collections::BTreeMap::new();
    for c in calls.iter().filter(|c| !c.established) {
        let key = c.status.map(|s| s.to_string()).unwrap_or_else(|| "no-answer".into());
        *failures.entry(key).or_insert(0) += 1;
    }
    Ok(Summary {
        attempted: calls.len(),
        established: calls.iter().filter(|c| c.established).count(),
        failed: calls.iter().filter(|c| !c.established).count(),
        failures_by_status: failures,
        setup_ms_mean: if setups.is_empty() { 0.0 } else { setups.iter().sum::<f64>() / setups.len() as f64 },
        setup_ms_p50: pct(0.5),
        setup_ms_p95: pct(0.95),
        setup_ms_max: setups.last().copied().unwrap_or(0.0),
        packets_sent: calls.iter().map(|c| c.packets_sent).sum(),
        elapsed_s: started.elapsed().as_secs_f64(),
        calls,
    })
}

fn transport(args: &CallArgs) -> Transport {
    match args.transport {
        TransportArg::Udp => Transport::Udp,
        TransportArg::Tcp => Transport::Tcp,
    }
}

/// The codecs of `--codec`, without repeats.
fn codecs_of(args: &CallArgs) -> Vec<Codec> {
    let mut codecs: Vec<Codec> = Vec::new();
    for c in args.codec.iter().map(|c| c.codec()) {
        if !codecs.contains(&c) {
            codecs.push(c);
        }
    }
    if codecs.is_empty() {
        codecs.push(Codec::Pcmu);
    }
    codecs
}

/// Payload type we offer a codec with (Opus on the customary 111).
fn codec_pt(c: Codec) -> u8 {
    c.static_payload_type().unwrap_or(111)
}

/// `rtpmap`/`fmtp` lines of the codecs we offer or answer with.
fn codec_lines(sh: &Shared, codecs: &[Codec]) -> String {
    let mut s = String::new();
    for &c in codecs {
        s.push_str(&format!("a=rtpmap:{} {}\r\n", codec_pt(c), c.rtpmap()));
        match c {
            Codec::Opus => s.push_str("a=fmtp:111 useinbandfec=1\r\n"),
            Codec::G729 => s.push_str(&format!("a=fmtp:18 annexb={}\r\n", if sh.args.vad { "yes" } else { "no" })),
            _ => {}
        }
    }
    s
}

/// Our SDP: `count` sendonly audio lines (labels 1.. when `labels`).
fn offer_sdp(sh: &Shared, count: usize, labels: bool) -> Vec<u8> {
    // A G.711-only caller offers both laws, as phones do; one that will
    // re-INVITE to change codec offers only the first.
    let mut codecs = sh.codecs.clone();
    if sh.args.reinvite_on_switch {
        codecs.truncate(1);
    } else if codecs == [Codec::Pcmu] || codecs == [Codec::Pcma] {
        codecs.push(if codecs[0] == Codec::Pcmu { Codec::Pcma } else { Codec::Pcmu });
    }
    offer_sdp_with(sh, count, labels, &codecs, 1)
}

/// [`offer_sdp`] with these codecs and SDP version (a re-INVITE's offer
/// carries the next version of the same session).
fn offer_sdp_with(sh: &Shared, count: usize, labels: bool, codecs: &[Codec], version: u32) -> Vec<u8> {
    let ip = sh.pacer.local_addr().ip();
    let port = sh.pacer.local_addr().port();
    let fam = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!(
        "v=0\r\no=callvault-client {0} {version} IN {fam} {ip}\r\ns=callvault test call\r\nc=IN {fam} {ip}\r\nt=0 0\r\n",
        sh.sdp_session
    );
    let proto = if sh.srtp_offer.is_some() { "RTP/SAVP" } else { "RTP/AVP" };
    for i in 0..count {
        let codec_b = sh.args.codec_b.map(|c| [c.codec()]);
        let codecs = match &codec_b {
            Some(b) if i % 2 == 1 => &b[..],
            _ => codecs,
        };
        let formats: Vec<String> = codecs.iter().map(|&c| codec_pt(c).to_string()).collect();
        let formats = formats.join(" ");
        let lines = codec_lines(sh, codecs);
        s.push_str(&format!(
            "m=audio {port} {proto} {formats} 101\r\n{lines}\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
        ));
        if let Some(key) = &sh.srtp_offer {
            s.push_str(&format!("a=crypto:1 {} {}\r\n", key.suite.sdes_name(), &*key.to_inline()));
        }
        if labels {
            s.push_str(&format!("a=label:{}\r\n", i + 1));
        }
        s.push_str("a=sendonly\r\n");
    }
    s.into_bytes()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// RFC 7865 metadata: caller sends label 1, callee sends label 2.
fn metadata_xml(a: &CallArgs) -> String {
    let t = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let id = |p: &str| format!("{p}{:016x}", fastrand::u64(..));
    let (g, pa, pb, sa, sb) = (id("g"), id("pa"), id("pb"), id("sa"), id("sb"));
    let s = a.session_id.as_deref().map(xml_escape).unwrap_or_else(|| id("s"));
    let aor = |n: &str| xml_escape(&format!("sip:{n}@callvault.test"));
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns='urn:ietf:params:xml:ns:recording:1'>
  <datamode>complete</datamode>
  <group group_id="{g}"><associate-time>{t}</associate-time></group>
  <session session_id="{s}"><group-ref>{g}</group-ref><start-time>{t}</start-time></session>
  <participant participant_id="{pa}"><nameID aor="{aa}"><name xml:lang="en">{an}</name></nameID></participant>
  <participant participant_id="{pb}"><nameID aor="{ba}"><name xml:lang="en">{bn}</name></nameID></participant>
  <stream stream_id="{sa}" session_id="{s}"><label>1</label></stream>
  <stream stream_id="{sb}" session_id="{s}"><label>2</label></stream>
  <sessionrecordingassoc session_id="{s}"><associate-time>{t}</associate-time></sessionrecordingassoc>
  <participantsessionassoc participant_id="{pa}" session_id="{s}"><associate-time>{t}</associate-time></participantsessionassoc>
  <participantsessionassoc participant_id="{pb}" session_id="{s}"><associate-time>{t}</associate-time></participantsessionassoc>
  <participantstreamassoc participant_id="{pa}"><send>{sa}</send><recv>{sb}</recv></participantstreamassoc>
  <participantstreamassoc participant_id="{pb}"><send>{sb}</send><recv>{sa}</recv></participantstreamassoc>
</recording>
"#,
        aa = aor(&a.caller),
        ba = aor(&a.callee),
        an = xml_escape(&a.caller_name),
        bn = xml_escape(&a.callee_name),
    )
}

fn multipart(sdp: &[u8], xml: &str) -> (String, Vec<u8>) {
    let boundary = format!("callvault-{:08x}", fastrand::u32(..));
    let mut b = Vec::new();
    b.extend_from_slice(format!("--{boundary}\r\nContent-Type: application/sdp\r\n\r\n").as_bytes());
    b.extend_from_slice(sdp);
    b.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n")
            .as_bytes(),
    );
    b.extend_from_slice(xml.as_bytes());
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/mixed;boundary={boundary}"), b)
}

/// Where to send one stream, and the codecs of ours the other side took.
type Target = (SocketAddr, Vec<(Codec, u8)>);

/// Where to send each stream, from the recorder's SDP (answer or offer):
/// the codecs of `want` it accepted, in our order, else the first codec
/// of its list we can send.
fn media_targets(body: &[u8], want: &[Codec]) -> anyhow::Result<Vec<Option<Target>>> {
    let sd = sdp::parse(body).map_err(|e| anyhow::anyhow!("recorder SDP: {e}"))?;
    Ok(sd
        .streams
        .iter()
        .map(|s| {
            let remote = s.remote()?;
            let theirs: Vec<(Codec, u8)> = s
                .rtpmaps
                .iter()
                .filter_map(|m| Some((Codec::from_rtpmap(&m.encoding, m.clock_rate, m.channels)?, m.pt)))
                .collect();
            let mut codecs: Vec<(Codec, u8)> =
                want.iter().filter_map(|w| theirs.iter().find(|(c, _)| c == w).copied()).collect();
            if codecs.is_empty() {
                codecs.push(*theirs.first()?);
            }
            Some((remote, codecs))
        })
        .collect())
}

/// The plan of one stream; DTMF and the delay step go on stream A only.
fn plan(sh: &Shared, dest: SocketAddr, codecs: &[(Codec, u8)], source: Source, stream_a: bool) -> StreamPlan {
    // Switching by re-INVITE: every codec, on the payload types we offer it with.
    let ours: Vec<(Codec, u8)> = sh.codecs.iter().map(|&c| (c, codec_pt(c))).collect();
    let codecs = if sh.args.reinvite_on_switch && sh.codecs.len() > 1 { &ours[..] } else { codecs };
    let share = Duration::from_secs_f64(sh.args.duration.max(0.0) / codecs.len().max(1) as f64);
    StreamPlan {
        dest,
        rtcp_dest: Some(SocketAddr::new(dest.ip(), dest.port() + 1)),
        codecs: codecs.iter().enumerate().map(|(i, &(c, pt))| (share * i as u32, c, pt)).collect(),
        encoder: media::EncoderOptions { fec: true, vad: sh.args.vad },
        precoded: sh.args.precoded,
        telephone_event_pt: 101,
        source,
        loss: if !stream_a && sh.args.no_rtp_b { 1.0 } else { sh.args.loss },
        dtmf: if stream_a { sh.args.dtmf.clone().map(|d| (d, Duration::from_secs_f64(sh.args.dtmf_at))) } else { None },
        delay_step: sh
            .args
            .delay_step_a
            .filter(|_| stream_a)
            .map(|ms| (Duration::from_secs_f64(sh.args.delay_step_at), Duration::from_millis(ms))),
        stray_ssrc: !stream_a && sh.args.stray_ssrc_b,
        srtp: sh.srtp_send.clone(),
    }
}

fn fail(out: &mut CallOutcome, r: &Response) {
    out.status = Some(r.status.as_u16());
    out.reason = Some(r.reason.clone());
}

async fn one_call(sh: &Shared, key: u64) -> CallOutcome {
    let mut out = CallOutcome::default();
    let result = match sh.args.mode {
        Mode::Siprec => siprec_call(sh, key, &mut out).await,
        Mode::Plain => plain_call(sh, key, &mut out).await,
        Mode::Forked => forked_call(sh, key, &mut out).await,
    };
    if let Err(e) = result {
        out.error = Some(format!("{e:#}"));
        out.established = false;
    }
    out
}

/// Sends the INVITE, returns the 2xx (or records the failure).
async fn invite(
    sh: &Shared,
    leg: &mut Leg,
    extra: &[(&str, String)],
    body: Option<(&str, Vec<u8>)>,
    out: &mut CallOutcome,
) -> anyhow::Result<Option<Response>> {
    out.call_ids.push(leg.call_id.clone());
    let req = leg.request(Method::Invite, extra, body);
    let t0 = Instant::now();
    let resp = leg.transact(req, Duration::from_secs_f64(sh.args.setup_timeout)).await?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    out.setup_ms = Some(out.setup_ms.map_or(ms, |m: f64| m.max(ms)));
    if !resp.status.is_success() {
        fail(out, &resp);
        return Ok(None);
    }
    out.status.get_or_insert(resp.status.as_u16());
    leg.confirm(&resp);
    Ok(Some(resp))
}

/// Plays media until the duration passes or the recorder hangs up, then BYE.
async fn talk(
    sh: &Shared,
    key: u64,
    legs: &mut [Leg],
    plans: Vec<StreamPlan>,
    out: &mut CallOutcome,
) -> anyhow::Result<()> {
    out.established = true;
    sh.pacer.play(key, plans);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(sh.args.duration);
    if sh.args.reinvite_on_switch && sh.codecs.len() > 1 && sh.args.mode != Mode::Forked {
        if let [leg] = legs {
            if reinvite_before_switches(sh, leg, start, end, out).await? == Wake::RemoteBye {
                out.ended_by_recorder = true;
            }
        }
    }
    // Every leg answers the recorder while the call runs (a BYE may come on either).
    let results = match legs {
        [a] => vec![a.wait(end).await],
        [a, b] => {
            let (x, y) = tokio::join!(a.wait(end), b.wait(end));
            vec![x, y]
        }
        _ => bail!("a call has one or two legs"),
    };
    for r in results {
        if r? == Wake::RemoteBye {
            out.ended_by_recorder = true;
        }
    }
    for s in sh.pacer.stop(key).await {
        out.packets_sent += s.packets;
        out.packets_dropped += s.dropped;
    }
    for leg in legs.iter_mut().filter(|l| !l.remote_bye) {
        let bye = leg.request(Method::Bye, &[], None);
        match leg.transact(bye, Duration::from_secs(4)).await {
            Ok(r) if r.status.is_success() || r.status.as_u16() == 481 => {}
            Ok(r) => tracing::warn!(status = r.status.as_u16(), "BYE answered with an error"),
            Err(e) => tracing::warn!(error = %e, "BYE unanswered"),
        }
    }
    Ok(())
}

/// Re-INVITEs a leg 150 ms before each codec switch of the plan, offering
/// the next codec first and the current one second (the sender may go on
/// with the old one until it switches). Answers the recorder meanwhile.
async fn reinvite_before_switches(
    sh: &Shared,
    leg: &mut Leg,
    start: Instant,
    end: Instant,
    out: &mut CallOutcome,
) -> anyhow::Result<Wake> {
    let n = sh.codecs.len();
    let share = Duration::from_secs_f64(sh.args.duration.max(0.0) / n as f64);
    let (count, labels) = match sh.args.mode {
        Mode::Siprec => (2, true),
        _ => (sh.args.streams.max(1), false),
    };
    for k in 1..n {
        let at = (start + share * k as u32).checked_sub(Duration::from_millis(150)).unwrap_or(start).min(end);
        if leg.wait(at).await? == Wake::RemoteBye {
            return Ok(Wake::RemoteBye);
        }
        let codecs = [sh.codecs[k], sh.codecs[k - 1]];
        let body = offer_sdp_with(sh, count, labels, &codecs, k as u32 + 1);
        let req = leg.request(Method::Invite, &[], Some(("application/sdp", body)));
        let cseq = leg.cseq();
        let r = leg.transact(req, Duration::from_secs(4)).await?;
        if r.status.is_success() {
            leg.ack(cseq, None).await?;
            out.reinvites_answered += 1;
        } else {
            tracing::warn!(status = r.status.as_u16(), "re-INVITE refused");
        }
    }
    Ok(Wake::Deadline)
}

async fn siprec_call(sh: &Shared, key: u64, out: &mut CallOutcome) -> anyhow::Result<()> {
    let mut leg = Leg::connect(sh.target, transport(&sh.args), sh.local_ip).await?;
    let from = format!("\"callvault SRC\" <sip:src@{}>", leg.local_addr());
    leg.set_parties(&from, &format!("<sip:srs@{}>", sh.target));
    let (ct, body) = multipart(&offer_sdp(sh, 2, true), &metadata_xml(&sh.args));
    let extra = [("Require", "siprec".to_owned()), ("Supported", "siprec".to_owned())];
    let Some(ok) = invite(sh, &mut leg, &extra, Some((ct.as_str(), body)), out).await? else { return Ok(()) };
    let targets = media_targets(&ok.body, &sh.codecs)?;
    let cseq = leg.cseq();
    leg.ack(cseq, None).await?;
    let sources = [sh.source_a.clone(), sh.source_b.clone()];
    let plans = targets
        .iter()
        .zip(sources)
        .enumerate()
        .filter_map(|(i, (t, src))| t.as_ref().map(|(dest, codecs)| plan(sh, *dest, codecs, src, i == 0)))
        .collect();
    talk(sh, key, std::slice::from_mut(&mut leg), plans, out).await
}

async fn plain_call(sh: &Shared, key: u64, out: &mut CallOutcome) -> anyhow::Result<()> {
    let mut leg = Leg::connect(sh.target, transport(&sh.args), sh.local_ip).await?;
    let from = format!("\"{}\" <sip:{}@callvault.test>", sh.args.caller_name, sh.args.caller);
    let to = format!("\"{}\" <sip:{}@callvault.test>", sh.args.callee_name, sh.args.callee);
    leg.set_parties(&from, &to);
    let streams = sh.args.streams.max(1);
    let body = (!sh.args.delayed_offer).then(|| ("application/sdp", offer_sdp(sh, streams, false)));
    let Some(ok) = invite(sh, &mut leg, &[], body, out).await? else { return Ok(()) };
    let targets = media_targets(&ok.body, &sh.codecs)?;
    let cseq = leg.cseq();
    let answer = match sh.args.delayed_offer {
        true => Some(("application/sdp", answer_sdp(sh, &targets, &ok.body)?)),
        false => None,
    };
    leg.ack(cseq, answer).await?;
    let sources = [sh.source_a.clone(), sh.source_b.clone()];
    let plans = targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_ref().map(|(dest, codecs)| plan(sh, *dest, codecs, sources[i % 2].clone(), i == 0)))
        .collect();
    talk(sh, key, std::slice::from_mut(&mut leg), plans, out).await
}

/// Answer to the recorder's offer (delayed offer): sendonly, our codec;
/// with `--srtp`, RTP/SAVP with our key on the tag the recorder offered
/// our suite under.
fn answer_sdp(sh: &Shared, targets: &[Option<Target>], offer: &[u8]) -> anyhow::Result<Vec<u8>> {
    let offer = sdp::parse(offer).map_err(|e| anyhow::anyhow!("recorder SDP: {e}"))?;
    let ip = sh.pacer.local_addr().ip();
    let port = sh.pacer.local_addr().port();
    let fam = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!(
        "v=0\r\no=callvault-client {0} 1 IN {fam} {ip}\r\ns=callvault test call\r\nc=IN {fam} {ip}\r\nt=0 0\r\n",
        fastrand::u32(..)
    );
    for (i, t) in targets.iter().enumerate() {
        let (c, pt) = t.as_ref().and_then(|(_, codecs)| codecs.first().copied()).unwrap_or((Codec::Pcmu, 0));
        let rtpmap = c.rtpmap();
        let crypto = match &sh.srtp_offer {
            Some(key) => {
                let suite = key.suite.sdes_name();
                let offered = offer.streams.get(i).and_then(|o| o.crypto.iter().find(|c| c.suite == suite));
                let tag = offered.with_context(|| format!("the recorder's offer has no {suite}"))?.tag;
                format!("a=crypto:{tag} {suite} {}\r\n", key.to_inline().as_str())
            }
            None => String::new(),
        };
        let proto = if crypto.is_empty() { "RTP/AVP" } else { "RTP/SAVP" };
        s.push_str(&format!(
            "m=audio {port} {proto} {pt} 101\r\na=rtpmap:{pt} {rtpmap}\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n{crypto}a=sendonly\r\n"
        ));
    }
    Ok(s.into_bytes())
}

async fn forked_call(sh: &Shared, key: u64, out: &mut CallOutcome) -> anyhow::Result<()> {
    let refs = (fastrand::u32(10_000_000..99_999_999), fastrand::u32(10_000_000..99_999_999));
    // Both legs at once, as a Cisco Built-in-Bridge sends them.
    let (mut near_out, mut far_out) = (CallOutcome::default(), CallOutcome::default());
    let (near, far) = tokio::join!(
        forked_leg(sh, "x-nearend", sh.source_a.clone(), refs, &mut near_out),
        forked_leg(sh, "x-farend", sh.source_b.clone(), refs, &mut far_out),
    );
    for leg_out in [&near_out, &far_out] {
        out.call_ids.extend(leg_out.call_ids.iter().cloned());
        out.setup_ms = out.setup_ms.into_iter().chain(leg_out.setup_ms).reduce(f64::max);
        let failed = leg_out.status.is_some_and(|c| !(200..300).contains(&c));
        if out.status.is_none() || (failed && out.reason.is_none()) {
            out.status = leg_out.status;
            out.reason = leg_out.reason.clone();
        }
    }
    match (near, far) {
        (Ok(Some((near, near_plan))), Ok(Some((far, far_plan)))) => {
            let mut legs = vec![near, far];
            let plans = near_plan.into_iter().chain(far_plan).collect();
            talk(sh, key, &mut legs, plans, out).await
        }
        (near, far) => {
            // Hang up the leg that did come up, so nothing dangles.
            let mut error = None;
            for result in [near, far] {
                match result {
                    Ok(Some((mut leg, _))) => {
                        let bye = leg.request(Method::Bye, &[], None);
                        let _ = leg.transact(bye, Duration::from_secs(4)).await;
                    }
                    Ok(None) => {}
                    Err(e) => error = error.or(Some(e)),
                }
            }
            error.map_or(Ok(()), Err)
        }
    }
}

/// One leg of a forked call: delayed-offer INVITE, answer in the ACK.
/// `None` when the recorder refused it.
async fn forked_leg(
    sh: &Shared,
    role: &str,
    source: Source,
    (refci, far_refci): (u32, u32),
    out: &mut CallOutcome,
) -> anyhow::Result<Option<(Leg, Option<StreamPlan>)>> {
    let a = &sh.args;
    let mut leg = Leg::connect(sh.target, transport(a), sh.local_ip).await?;
    let from = format!(
        "\"{}\" <sip:{}@callvault.test;{role};x-refci={refci};x-nearenddevice=SEPCALLVAULT01;x-nearendaddr={};\
         x-farendrefci={far_refci};x-farenddevice=callvault-far;x-farendaddr={}>",
        a.caller_name, a.caller, a.caller, a.callee
    );
    leg.set_parties(&from, &format!("<sip:recorder@{}>", sh.target));
    let Some(ok) = invite(sh, &mut leg, &[], None, out).await? else { return Ok(None) };
    if ok.content_type().is_none_or(|t| !t.is("application/sdp")) {
        bail!("recorder answered a delayed-offer INVITE without an SDP offer");
    }
    let want = match sh.args.codec_b {
        Some(b) if role == "x-farend" => vec![b.codec()],
        _ => sh.codecs.clone(),
    };
    let targets = media_targets(&ok.body, &want)?;
    let cseq = leg.cseq();
    leg.ack(cseq, Some(("application/sdp", answer_sdp(sh, &targets, &ok.body)?))).await?;
    let plan =
        targets.first().cloned().flatten().map(|(dest, codecs)| plan(sh, dest, &codecs, source, role == "x-nearend"));
    Ok(Some((leg, plan)))
}
