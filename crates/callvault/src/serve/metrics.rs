//! Prometheus metrics, encoded from a fresh status snapshot at each scrape
//! (prometheus-client's collector API), so counters live in one place:
//! the recorder and the media engine.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use model::latency::LatencyHistogram;

use super::core::NodeStatus;

/// A [`LatencyHistogram`] as a Prometheus histogram (seconds).
#[derive(Debug)]
struct Histogram<'a>(&'a LatencyHistogram);

impl EncodeMetric for Histogram<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self.0.buckets().collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum_secs(),
            self.0.count(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

fn histogram(enc: &mut DescriptorEncoder, name: &str, help: &str, h: &LatencyHistogram) -> Result<(), std::fmt::Error> {
    let m = Histogram(h);
    let metric =
        enc.encode_descriptor(name, help, Some(&prometheus_client::registry::Unit::Seconds), m.metric_type())?;
    m.encode(metric)
}

/// Cluster figures for a scrape (absent on a single node).
#[derive(Debug, Clone, Default)]
pub struct ClusterFigures {
    pub peers_known: u64,
    pub peers_alive: u64,
    pub is_leader: bool,
    pub quarantined: bool,
    pub auth_refused: u64,
    pub replicated_items: u64,
    pub replicated_bytes: u64,
    pub replication_failures: u64,
    pub received_copies: u64,
    pub rejected_copies: u64,
    pub anti_entropy_rounds: u64,
    pub anti_entropy_pulled: u64,
    pub pull_throttled_ms: u64,
    pub scrub_checked: u64,
    pub scrub_corrupt: u64,
    pub scrub_repaired: u64,
    pub purged: u64,
    pub audit_copied: u64,
    pub audit_chain_breaks: u64,
    pub lag_ms_max: u64,
    /// (target, depth, oldest item age in seconds, failing items)
    pub targets: Vec<(String, u64, f64, u64)>,
}

/// Figures of the process itself, read at each scrape.
#[derive(Debug, Clone, Default)]
pub struct ProcessFigures {
    pub open_fds: u64,
    pub max_fds: u64,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub tcp_open: u64,
    pub tcp_refused_total_cap: u64,
    pub tcp_refused_source_cap: u64,
    pub tcp_closed_idle: u64,
    pub accept_no_descriptors: u64,
    pub probe_no_descriptors: u64,
    /// Free space at the last storage probe (none before the first).
    pub storage_free_bytes: Option<u64>,
    pub ended_with_media_alarm: Vec<(model::MediaAlarm, u64)>,
    /// Metadata writes (spool, one directory fsync per batch).
    pub metadata_sync: LatencyHistogram,
    pub http_open: u64,
    pub http_refused: u64,
}

/// Recordings that ended with a media alarm, by alarm.
#[derive(Debug, Default)]
pub struct MediaAlarmCounts([std::sync::atomic::AtomicU64; 3]);

impl MediaAlarmCounts {
    const ALL: [model::MediaAlarm; 3] =
        [model::MediaAlarm::StreamWithoutRtp, model::MediaAlarm::NoRtp, model::MediaAlarm::AllSilent];

    pub fn count(&self, alarm: model::MediaAlarm) {
        let i = Self::ALL.iter().position(|a| *a == alarm).expect("every alarm is listed");
        self.0[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(model::MediaAlarm, u64)> {
        Self::ALL.iter().zip(&self.0).map(|(a, n)| (*a, n.load(std::sync::atomic::Ordering::Relaxed))).collect()
    }
}

/// What the periodic storage probe saw, for metrics.
#[derive(Debug, Default)]
pub struct StorageProbeStats {
    /// Free bytes + 1 (0: not probed yet).
    pub free_bytes_plus_one: std::sync::atomic::AtomicU64,
    /// Probes that could not open a file for lack of descriptors (not a
    /// storage failure: the storage state is left as it was).
    pub out_of_descriptors: std::sync::atomic::AtomicU64,
}

impl ProcessFigures {
    pub fn read(
        tcp: &super::transport::TcpStats,
        probe: &StorageProbeStats,
        alarms: &MediaAlarmCounts,
        max_fds: u64,
    ) -> ProcessFigures {
        use std::sync::atomic::Ordering::Relaxed;
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let rss_kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        let hz = rustix::param::clock_ticks_per_second().max(1);
        ProcessFigures {
            open_fds,
            max_fds,
            rss_bytes: rss_kib * 1024,
            cpu_seconds: ticks as f64 / hz as f64,
            tcp_open: tcp.open.load(Relaxed),
            tcp_refused_total_cap: tcp.refused_total_cap.load(Relaxed),
            tcp_refused_source_cap: tcp.refused_source_cap.load(Relaxed),
            tcp_closed_idle: tcp.closed_idle.load(Relaxed),
            accept_no_descriptors: tcp.accept_no_descriptors.load(Relaxed),
            probe_no_descriptors: probe.out_of_descriptors.load(Relaxed),
            storage_free_bytes: probe.free_bytes_plus_one.load(Relaxed).checked_sub(1),
            ended_with_media_alarm: alarms.snapshot(),
            metadata_sync: LatencyHistogram::default(),
            http_open: 0,
            http_refused: 0,
        }
    }
}

#[derive(Debug)]
struct StatusCollector(Option<NodeStatus>, Option<ClusterFigures>, ProcessFigures);

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn labelled_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, v) in values {
        let m = family.encode_family(&labels)?;
        ConstCounter::new(v).encode(m)?;
    }
    Ok(())
}

fn encode_process(enc: &mut DescriptorEncoder, p: &ProcessFigures, core_up: bool) -> Result<(), std::fmt::Error> {
    gauge(enc, "callvault_core_up", "1 while the recorder core answers within 2 s", core_up as i64)?;
    let mut fam = enc.encode_descriptor(
        "callvault_build_info",
        "Version of this node (value 1)",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    ConstGauge::new(1i64).encode(fam.encode_family(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())])?)?;
    gauge(enc, "callvault_process_open_fds", "Open file descriptors", p.open_fds as i64)?;
    gauge(enc, "callvault_process_max_fds", "The open-files limit", p.max_fds.min(i64::MAX as u64) as i64)?;
    gauge(enc, "callvault_process_resident_memory_bytes", "Resident memory", p.rss_bytes as i64)?;
    let cpu = ConstCounter::new(p.cpu_seconds);
    let m = enc.encode_descriptor("callvault_process_cpu_seconds", "CPU time used", None, cpu.metric_type())?;
    cpu.encode(m)?;
    gauge(enc, "callvault_sip_tcp_connections", "Open SIP TCP connections", p.tcp_open as i64)?;
    labelled_counter(
        enc,
        "callvault_sip_tcp_refused",
        "SIP TCP connections refused at a cap (total or per source)",
        [
            (vec![("cap", "total".to_owned())], p.tcp_refused_total_cap),
            (vec![("cap", "per_source".to_owned())], p.tcp_refused_source_cap),
        ]
        .into_iter(),
    )?;
    gauge(enc, "callvault_http_connections", "Open HTTP API connections", p.http_open as i64)?;
    counter(enc, "callvault_http_refused", "HTTP API connections refused at http.max_connections", p.http_refused)?;
    counter(enc, "callvault_sip_tcp_closed_idle", "SIP TCP connections closed for idleness", p.tcp_closed_idle)?;
    labelled_counter(
        enc,
        "callvault_descriptor_exhaustion",
        "Times the open-files limit stopped an operation, by where (calls refused for it: \
         callvault_invites_rejected_total{reason=\"out_of_descriptors\"})",
        [
            (vec![("at", "sip_tcp_accept".to_owned())], p.accept_no_descriptors),
            (vec![("at", "storage_probe".to_owned())], p.probe_no_descriptors),
        ]
        .into_iter(),
    )?;
    labelled_counter(
        enc,
        "callvault_recordings_media_alarm",
        "Recordings that ended with a media alarm: a stream without RTP, no RTP at all, or only silence",
        p.ended_with_media_alarm.iter().map(|(a, n)| (vec![("alarm", a.as_str().to_owned())], *n)),
    )?;
    histogram(
        enc,
        "callvault_metadata_sync",
        "Time to write and fsync a batch of recording metadata (calls being set up wait for it)",
        &p.metadata_sync,
    )?;
    if let Some(free) = p.storage_free_bytes {
        gauge(enc, "callvault_storage_free_bytes", "Free space on the data directory's file system", free as i64)?;
    }
    Ok(())
}

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_process(&mut enc, &self.2, self.0.is_some())?;
        if let Some(c) = &self.1 {
            encode_cluster(&mut enc, c)?;
        }
        let Some(s) = &self.0 else { return Ok(()) };
        let m = &s.media;
        gauge(&mut enc, "callvault_active_recordings", "Calls being recorded now", s.active_recordings as i64)?;
        gauge(&mut enc, "callvault_active_call_legs", "SIP dialogs of calls being recorded", s.active_legs as i64)?;
        gauge(
            &mut enc,
            "callvault_recordings_unarchived",
            "Ended recordings not yet archived and indexed (grows while the index is down)",
            s.unarchived as i64,
        )?;
        gauge(&mut enc, "callvault_draining", "1 while the node refuses new calls (drain mode)", s.draining as i64)?;
        gauge(
            &mut enc,
            "callvault_storage_ok",
            "1 while recording storage is writable with enough free space",
            s.storage_ok as i64,
        )?;
        gauge(&mut enc, "callvault_can_record", "1 while new calls are accepted", s.can_record.is_ok() as i64)?;
        histogram(
            &mut enc,
            "callvault_invite_answer",
            "Time from an initial INVITE to its final response (accepted calls wait for their metadata)",
            &s.counters.invite_answer,
        )?;
        histogram(&mut enc, "callvault_audio_sync", "Time of each sync of written audio to disk", &m.audio_sync)?;
        counter(
            &mut enc,
            "callvault_streams_without_rtp",
            "Streams that received no RTP within media.no_rtp_alarm_secs of their start",
            s.counters.streams_without_rtp,
        )?;
        gauge(
            &mut enc,
            "callvault_active_recordings_with_media_alarm",
            "Calls in progress with a stream that received no RTP",
            s.recordings_with_media_alarm as i64,
        )?;
        gauge(&mut enc, "callvault_rtp_port_pairs_in_use", "RTP/RTCP port pairs held by calls", s.ports_in_use as i64)?;
        gauge(
            &mut enc,
            "callvault_rtp_port_pairs",
            "RTP/RTCP port pairs in the configured range",
            s.ports_capacity as i64,
        )?;
        counter(
            &mut enc,
            "callvault_invites_accepted",
            "Initial INVITEs accepted for recording",
            s.counters.invites_accepted,
        )?;
        counter(
            &mut enc,
            "callvault_invites_cancelled",
            "Initial INVITEs the source cancelled before they were answered",
            s.counters.invites_cancelled,
        )?;
        labelled_counter(
            &mut enc,
            "callvault_invites_rejected",
            "Initial INVITEs refused, by status code and reason",
            s.counters
                .invites_rejected
                .iter()
                .map(|((c, r), v)| (vec![("code", c.to_string()), ("reason", r.to_string())], *v)),
        )?;
        labelled_counter(
            &mut enc,
            "callvault_recordings_ended",
            "Recordings ended, by final state and cause",
            s.counters.recordings_ended.iter().map(|((st, cause), v)| {
                (vec![("state", st.as_str().to_string()), ("reason", cause.label().to_string())], *v)
            }),
        )?;
        labelled_counter(
            &mut enc,
            "callvault_sip_responses",
            "SIP responses sent (first transmissions), by status code",
            s.responses.iter().map(|(c, v)| (vec![("code", c.to_string())], *v)),
        )?;
        counter(
            &mut enc,
            "callvault_sip_malformed",
            "SIP messages that could not be processed",
            s.counters.malformed_messages,
        )?;
        counter(&mut enc, "callvault_sip_byes_sent", "BYEs sent by the recorder", s.counters.byes_sent)?;
        labelled_counter(
            &mut enc,
            "callvault_sip_tolerated",
            "Messages that broke a rule in a way whose meaning is clear, used anyway, by case",
            s.counters.tolerated.iter().map(|(c, n)| (vec![("case", c.label().to_owned())], *n)),
        )?;
        gauge(
            &mut enc,
            "callvault_sip_transactions",
            "SIP transactions in progress (server and client; each lasts at most 64*T1 after its answer)",
            s.sip_transactions as i64,
        )?;
        counter(
            &mut enc,
            "callvault_sip_transactions_unanswered",
            "Requests never answered by the recorder, dropped after 64*T1 (a bug if not zero)",
            s.unanswered_transactions,
        )?;
        counter(&mut enc, "callvault_rtp_packets", "RTP packets accepted", m.packets)?;
        counter(&mut enc, "callvault_rtp_bytes", "RTP bytes accepted", m.bytes)?;
        counter(&mut enc, "callvault_rtp_lost_packets", "RTP packets missing from sequence numbers", m.lost)?;
        counter(
            &mut enc,
            "callvault_rtp_late_packets",
            "RTP packets that arrived after their place was written",
            m.late,
        )?;
        counter(&mut enc, "callvault_rtp_duplicate_packets", "Duplicate RTP packets", m.duplicates)?;
        counter(
            &mut enc,
            "callvault_rtp_malformed_packets",
            "Datagrams on media ports that were not valid RTP",
            m.malformed,
        )?;
        counter(&mut enc, "callvault_rtp_foreign_packets", "RTP from a source other than the latched one", m.foreign)?;
        counter(
            &mut enc,
            "callvault_rtp_foreign_ssrc_packets",
            "RTP of another SSRC dropped while the stream's own was still sending",
            m.foreign_ssrc,
        )?;
        counter(
            &mut enc,
            "callvault_srtp_auth_failures",
            "SRTP/SRTCP packets that failed authentication (dropped, never written)",
            m.srtp_auth_failures,
        )?;
        counter(
            &mut enc,
            "callvault_rtp_unknown_payload_packets",
            "RTP with a payload type not negotiated",
            m.unknown_payload,
        )?;
        counter(&mut enc, "callvault_rtcp_packets", "RTCP packets read", m.rtcp_packets)?;
        counter(&mut enc, "callvault_dtmf_events", "DTMF key presses recorded", m.dtmf_events)?;
        gauge(&mut enc, "callvault_media_streams", "RTP streams being received", m.active_streams as i64)?;
        gauge(
            &mut enc,
            "callvault_audio_write_backlog_bytes",
            "Committed audio waiting for the disk (new calls are refused above storage.max_write_backlog_mib)",
            m.writer_backlog_bytes as i64,
        )?;
        Ok(())
    }
}

fn encode_cluster(enc: &mut DescriptorEncoder, c: &ClusterFigures) -> Result<(), std::fmt::Error> {
    gauge(enc, "callvault_cluster_peers_known", "Peers this node knows", c.peers_known as i64)?;
    gauge(enc, "callvault_cluster_peers_alive", "Peers that answered a heartbeat recently", c.peers_alive as i64)?;
    gauge(enc, "callvault_cluster_is_leader", "1 while this node holds the maintenance job lease", c.is_leader as i64)?;
    gauge(
        enc,
        "callvault_cluster_quarantined",
        "1 while this node catches up after an absence longer than the tombstone horizon",
        c.quarantined as i64,
    )?;
    counter(
        enc,
        "callvault_cluster_auth_refused",
        "Inter-node requests refused (bad or missing signature)",
        c.auth_refused,
    )?;
    counter(
        enc,
        "callvault_replication_items",
        "Outbox items a target confirmed (metadata or verified audio)",
        c.replicated_items,
    )?;
    counter(enc, "callvault_replication_bytes", "Audio bytes sent to targets", c.replicated_bytes)?;
    counter(
        enc,
        "callvault_replication_failures",
        "Outbox sends that failed and were rescheduled",
        c.replication_failures,
    )?;
    counter(enc, "callvault_replication_received_copies", "Verified copies received from peers", c.received_copies)?;
    counter(
        enc,
        "callvault_replication_rejected_copies",
        "Copies from peers refused (checksum or size mismatch)",
        c.rejected_copies,
    )?;
    counter(enc, "callvault_anti_entropy_rounds", "Anti-entropy rounds run", c.anti_entropy_rounds)?;
    counter(
        enc,
        "callvault_anti_entropy_pulled",
        "Recordings, audio or deletions pulled by anti-entropy",
        c.anti_entropy_pulled,
    )?;
    counter(
        enc,
        "callvault_anti_entropy_throttled_ms",
        "Milliseconds audio pulls from peers waited for the bandwidth cap configured for that peer",
        c.pull_throttled_ms,
    )?;
    counter(enc, "callvault_scrub_checked", "Stored audio files re-hashed by the scrub", c.scrub_checked)?;
    counter(enc, "callvault_scrub_corrupt", "Stored audio files whose checksum no longer matched", c.scrub_corrupt)?;
    counter(enc, "callvault_scrub_repaired", "Corrupt copies repaired from a peer", c.scrub_repaired)?;
    counter(enc, "callvault_retention_purged", "Recordings deleted by the retention purge on this node", c.purged)?;
    counter(enc, "callvault_audit_copied", "Audit entries copied here from the other nodes' trails", c.audit_copied)?;
    counter(
        enc,
        "callvault_audit_chain_breaks",
        "Copies of a peer's audit trail refused because they did not continue its chain (tampering?)",
        c.audit_chain_breaks,
    )?;
    gauge(
        enc,
        "callvault_replication_lag_max_ms",
        "Longest time from a call's end to its verified copy on a target",
        c.lag_ms_max as i64,
    )?;
    let mut fam = enc.encode_descriptor(
        "callvault_replication_queue_depth",
        "Outbox items waiting, by target",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    for (t, depth, _, _) in &c.targets {
        ConstGauge::new(*depth as i64).encode(fam.encode_family(&vec![("target", t.clone())])?)?;
    }
    let mut fam = enc.encode_descriptor(
        "callvault_replication_oldest_item_seconds",
        "Age of the oldest outbox item, by target",
        None,
        ConstGauge::new(0.0f64).metric_type(),
    )?;
    for (t, _, age, _) in &c.targets {
        ConstGauge::new(*age).encode(fam.encode_family(&vec![("target", t.clone())])?)?;
    }
    let mut fam = enc.encode_descriptor(
        "callvault_replication_failing_items",
        "Outbox items that failed at least once, by target",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    for (t, _, _, failing) in &c.targets {
        ConstGauge::new(*failing as i64).encode(fam.encode_family(&vec![("target", t.clone())])?)?;
    }
    Ok(())
}

/// The Prometheus text exposition of `status` (and the cluster's figures).
pub fn render(status: Option<NodeStatus>, cluster: Option<ClusterFigures>, process: ProcessFigures) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatusCollector(status, cluster, process)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}
