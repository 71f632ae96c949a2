//! Payload decoders. An enum rather than trait objects: the match is
//! cheaper than a virtual call per packet, and stateful codecs (G.722,
//! Opus) become variants holding their decoder state.

use crate::g711::{linear_to_alaw, linear_to_ulaw, ALAW_TABLE, ULAW_TABLE};

/// Audio codecs the engine can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    /// The codec for an SDP `rtpmap` entry, if supported.
    pub fn from_rtpmap(encoding: &str, clock_rate: u32, channels: u8) -> Option<Codec> {
        if channels > 1 || clock_rate != 8000 {
            return None;
        }
        match encoding.to_ascii_uppercase().as_str() {
            "PCMU" => Some(Codec::Pcmu),
            "PCMA" => Some(Codec::Pcma),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// Static RTP payload type (RFC 3551).
    pub fn static_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// Rate of the decoded PCM.
    pub fn sample_rate(self) -> u32 {
        8000
    }

    /// RTP timestamp clock rate.
    pub fn clock_rate(self) -> u32 {
        8000
    }

    /// Decodes `payload` into `out`, returning the number of samples written.
    pub fn decode(self, payload: &[u8], out: &mut [i16]) -> usize {
        let n = payload.len().min(out.len());
        let table = match self {
            Codec::Pcmu => &ULAW_TABLE,
            Codec::Pcma => &ALAW_TABLE,
        };
        for (o, &b) in out[..n].iter_mut().zip(&payload[..n]) {
            *o = table[b as usize];
        }
        n
    }

    /// Encodes PCM (for the test client).
    pub fn encode(self, pcm: &[i16], out: &mut Vec<u8>) {
        out.clear();
        match self {
            Codec::Pcmu => out.extend(pcm.iter().map(|&s| linear_to_ulaw(s))),
            Codec::Pcma => out.extend(pcm.iter().map(|&s| linear_to_alaw(s))),
        }
    }

    /// The encoding of digital silence.
    pub fn silence_byte(self) -> u8 {
        match self {
            Codec::Pcmu => 0xff,
            Codec::Pcma => 0xd5,
        }
    }
}
