//! What a recorder reads from RTCP: the sender's own packet count and the
//! loss/jitter it reports, for the recording's quality figures.

use rtcp_types::{Compound, Packet, RtcpPacketWriter, RtcpPacketWriterExt, SenderReport};

/// RTCP packets have types 192..=223 in the second byte (RFC 5761 §4),
/// which is how rtcp-mux tells them from RTP.
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && (192..=223).contains(&packet[1])
}

/// The useful content of one compound RTCP packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtcpSummary {
    /// (SSRC, packet count) of a sender report.
    pub sender: Option<(u32, u32)>,
    /// Report blocks: (reportee SSRC, fraction lost /256, cumulative lost, jitter).
    pub reports: Vec<(u32, u8, u32, u32)>,
    pub bye: bool,
}

/// Parses a compound RTCP packet; `None` if it is not valid RTCP.
pub fn summarize(data: &[u8]) -> Option<RtcpSummary> {
    let compound = Compound::parse(data).ok()?;
    let mut out = RtcpSummary::default();
    for packet in compound {
        match packet.ok()? {
            Packet::Sr(sr) => {
                out.sender = Some((sr.ssrc(), sr.packet_count()));
                for rb in sr.report_blocks() {
                    out.reports.push((rb.ssrc(), rb.fraction_lost(), rb.cumulative_lost(), rb.interarrival_jitter()));
                }
            }
            Packet::Rr(rr) => {
                for rb in rr.report_blocks() {
                    out.reports.push((rb.ssrc(), rb.fraction_lost(), rb.cumulative_lost(), rb.interarrival_jitter()));
                }
            }
            Packet::Bye(_) => out.bye = true,
            _ => {}
        }
    }
    Some(out)
}

/// A sender report for `ssrc` (what the test client sends every few seconds).
pub fn sender_report(ssrc: u32, ntp: u64, rtp_ts: u32, packets: u32, octets: u32) -> Vec<u8> {
    let sr =
        SenderReport::builder(ssrc).ntp_timestamp(ntp).rtp_timestamp(rtp_ts).packet_count(packets).octet_count(octets);
    let compound = Compound::builder().add_packet(sr);
    let size = compound.calculate_size().expect("a bare sender report is valid");
    let mut buf = vec![0; size];
    compound.write_into(&mut buf).expect("buffer sized by calculate_size");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sender_report() {
        let bytes = sender_report(0x1234, 1, 2, 250, 40000);
        assert!(is_rtcp(&bytes));
        let s = summarize(&bytes).unwrap();
        assert_eq!(s.sender, Some((0x1234, 250)));
        assert!(summarize(b"\x80\x00garbage").is_none());
        assert!(!is_rtcp(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
    }
}
