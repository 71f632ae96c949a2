//! Prometheus metrics, encoded from a fresh status snapshot at each scrape
//! (prometheus-client's collector API), so counters live in one place:
//! the recorder and the media engine.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::core::NodeStatus;

#[derive(Debug)]
struct StatusCollector(NodeStatus);

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
    label: &'static str,
    values: impl Iterator<Item = (String, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (l, v) in values {
        let labels = vec![(label, l)];
        let m = family.encode_family(&labels)?;
        ConstCounter::new(v).encode(m)?;
    }
    Ok(())
}

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
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
            "Initial INVITEs refused, by status code",
            "code",
            s.counters.invites_rejected.iter().map(|(c, v)| (c.to_string(), *v)),
        )?;
        labelled_counter(
            &mut enc,
            "callvault_recordings_ended",
            "Recordings ended, by final state",
            "state",
            s.counters.recordings_ended.iter().map(|(k, v)| (k.to_string(), *v)),
        )?;
        labelled_counter(
            &mut enc,
            "callvault_sip_responses",
            "SIP responses sent (first transmissions), by status code",
            "code",
            s.responses.iter().map(|(c, v)| (c.to_string(), *v)),
        )?;
        counter(
            &mut enc,
            "callvault_sip_malformed",
            "SIP messages that could not be processed",
            s.counters.malformed_messages,
        )?;
        counter(&mut enc, "callvault_sip_byes_sent", "BYEs sent by the recorder", s.counters.byes_sent)?;
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

/// The Prometheus text exposition of `status`.
pub fn render(status: NodeStatus) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatusCollector(status)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}
