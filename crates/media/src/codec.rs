//! What the recorder knows about each audio codec: SDP names, RTP clock,
//! the rate its audio is decoded at, static payload types. Decoding state
//! lives in [`crate::decoder::StreamDecoder`], encoding (for the test
//! client and benchmarks) in [`crate::encoder::StreamEncoder`].

use crate::g711::{linear_to_alaw, linear_to_ulaw, ALAW_TABLE, ULAW_TABLE};

/// Audio codecs the engine knows. `G729` is only decodable when the crate
/// is built with the `g729` feature (GPL-derived decoder): without it,
/// [`Codec::from_rtpmap`] never returns it and offers of it get 488.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    Pcmu,
    Pcma,
    /// G.722 (RFC 3551: clock 8000, audio 16 kHz).
    G722,
    /// Opus (RFC 7587: clock 48000, `opus/48000/2` whatever the channels).
    Opus,
    /// G.729 with Annex A/B (10-byte voice frames, 2-byte SID frames).
    G729,
}

impl Codec {
    /// Every codec, for tables and the command line.
    pub const ALL: [Codec; 5] = [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus, Codec::G729];

    /// The codec for an SDP `rtpmap` entry, if this build decodes it.
    pub fn from_rtpmap(encoding: &str, clock_rate: u32, channels: u8) -> Option<Codec> {
        let codec = match (encoding.to_ascii_uppercase().as_str(), clock_rate, channels) {
            ("PCMU", 8000, 1) => Codec::Pcmu,
            ("PCMA", 8000, 1) => Codec::Pcma,
            ("G722", 8000, 1) => Codec::G722,
            ("OPUS", 48000, 1 | 2) => Codec::Opus,
            ("G729" | "G729A", 8000, 1) => Codec::G729,
            _ => return None,
        };
        codec.is_built().then_some(codec)
    }

    /// Whether this build can decode the codec (G.729 needs a feature).
    pub fn is_built(self) -> bool {
        self != Codec::G729 || cfg!(feature = "g729")
    }

    /// The name used in SDP, metadata and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
            Codec::G729 => "G729",
        }
    }

    /// Parses a name as [`Codec::name`] writes it (any case).
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// The `rtpmap` value after the payload type (`PCMU/8000`, `opus/48000/2`).
    pub fn rtpmap(self) -> String {
        match self {
            Codec::Opus => "opus/48000/2".into(),
            c => format!("{}/8000", c.name()),
        }
    }

    /// Static RTP payload type (RFC 3551), `None` for dynamic ones.
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::G722 => Some(9),
            Codec::G729 => Some(18),
            Codec::Opus => None,
        }
    }

    /// Rate the codec's audio is coded at (what a decoder produces natively).
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G729 => 8000,
            Codec::G722 => 16000,
            Codec::Opus => 48000,
        }
    }

    /// RTP timestamp clock rate (G.722 keeps 8000 for historical reasons).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48000,
            _ => 8000,
        }
    }

    /// Whether the codec carries more than telephone bandwidth.
    pub fn is_wideband(self) -> bool {
        self.sample_rate() > 8000
    }

    /// Stateless G.711 decode (the hot path of narrowband recordings).
    pub(crate) fn decode_g711(self, payload: &[u8], out: &mut [i16]) -> usize {
        let table = match self {
            Codec::Pcma => &ALAW_TABLE,
            _ => &ULAW_TABLE,
        };
        let n = payload.len().min(out.len());
        for (o, &b) in out[..n].iter_mut().zip(&payload[..n]) {
            *o = table[b as usize];
        }
        n
    }

    /// Stateless G.711 encode.
    pub(crate) fn encode_g711(self, pcm: &[i16], out: &mut Vec<u8>) {
        match self {
            Codec::Pcma => out.extend(pcm.iter().map(|&s| linear_to_alaw(s))),
            _ => out.extend(pcm.iter().map(|&s| linear_to_ulaw(s))),
        }
    }

    /// The encoding of digital silence (G.711 only; others are stateful).
    pub fn silence_byte(self) -> u8 {
        match self {
            Codec::Pcma => 0xd5,
            _ => 0xff,
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Samples (per channel, at `rate`) one Opus packet carries, from its TOC
/// byte and frame count (RFC 6716 §3.1); `None` for a malformed packet.
pub fn opus_packet_samples(packet: &[u8], rate: u32) -> Option<u64> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame duration in units of 2.5 ms (RFC 6716 Table 2).
    let units: u64 = match config {
        0..=11 => [4, 8, 16, 24][(config % 4) as usize],
        12..=15 => [4, 8][(config % 2) as usize],
        _ => [1, 2, 4, 8][(config % 4) as usize],
    };
    let frames: u64 = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3f),
    };
    let samples = units * frames * rate as u64 / 400;
    (frames > 0 && samples <= rate as u64 * 120 / 1000).then_some(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpmap_names_map_to_codecs() {
        assert_eq!(Codec::from_rtpmap("pcmu", 8000, 1), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap("G722", 8000, 1), Some(Codec::G722));
        assert_eq!(Codec::from_rtpmap("opus", 48000, 2), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("OPUS", 48000, 1), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("G722", 16000, 1), None, "G.722's RTP clock is 8000");
        assert_eq!(Codec::from_rtpmap("AMR-WB", 16000, 1), None);
        assert_eq!(Codec::from_rtpmap("G729", 8000, 1).is_some(), cfg!(feature = "g729"));
        for c in Codec::ALL {
            assert_eq!(Codec::from_name(c.name()), Some(c));
        }
    }

    #[test]
    fn opus_durations_come_from_the_toc() {
        // SILK WB 20 ms, one frame.
        assert_eq!(opus_packet_samples(&[(9 << 3), 0], 48000), Some(960));
        // CELT FB 10 ms, two frames (code 1) at 16 kHz.
        assert_eq!(opus_packet_samples(&[(30 << 3) | 1, 0], 16000), Some(320));
        // Code 3 with 3 frames of 20 ms.
        assert_eq!(opus_packet_samples(&[(1 << 3) | 3, 3], 8000), Some(480));
        // Code 3 claiming 63 frames of 60 ms is beyond 120 ms: malformed.
        assert_eq!(opus_packet_samples(&[(3 << 3) | 3, 63], 48000), None);
        assert_eq!(opus_packet_samples(&[], 48000), None);
    }
}
