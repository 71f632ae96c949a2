//! Per-stream decoding: codec state (G.722 predictors, the Opus decoder,
//! G.729's) and conversion to the recording's one sample rate.
//!
//! A stream may switch codecs at any packet (every codec of the answer is
//! allowed, and a re-INVITE can change the list), so one `StreamDecoder`
//! holds the state of each codec it has met, made on first use. Audio
//! comes out at `out_rate`: Opus decodes straight to it (libopus-style
//! decoders support 8/12/16/24/48 kHz), the others go through a polyphase
//! resampler when their rate differs. The resampler is `audio-codec`'s
//! (the crate whose G.722 we use): streaming with exact output counts per
//! 20 ms, 24 taps, so its delay is 12 input samples (1.5 ms at 8 kHz),
//! below what alignment can notice.

use audio_codec::g722::G722Decoder;
use audio_codec::BoxedResampler;

use crate::codec::{opus_packet_samples, Codec};

/// Most samples one packet decodes to at 48 kHz (120 ms, RFC 6716).
pub const MAX_PACKET_SAMPLES: usize = 5760;

/// Rates an Opus decoder produces directly.
const OPUS_RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

pub struct StreamDecoder {
    out_rate: u32,
    g722: Option<Box<G722Decoder>>,
    opus: Option<Box<opus_rs::OpusDecoder>>,
    #[cfg(feature = "g729")]
    g729: Option<Box<g729_sys::Decoder>>,
    /// Converters from a codec's rate to `out_rate`, by input rate.
    resamplers: Vec<(u32, BoxedResampler)>,
    native: Vec<i16>,
    float: Vec<f32>,
    /// Packets whose payload the decoder refused (counted by the caller).
    pub failures: u64,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder").field("out_rate", &self.out_rate).finish_non_exhaustive()
    }
}

impl StreamDecoder {
    pub fn new(out_rate: u32) -> StreamDecoder {
        StreamDecoder {
            out_rate,
            g722: None,
            opus: None,
            #[cfg(feature = "g729")]
            g729: None,
            resamplers: Vec::new(),
            native: Vec::new(),
            float: Vec::new(),
            failures: 0,
        }
    }

    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// Samples at `out_rate` that `ticks` of `codec`'s RTP clock span.
    pub fn samples_for_ticks(&self, codec: Codec, ticks: u64) -> u64 {
        ticks * self.out_rate as u64 / codec.clock_rate() as u64
    }

    /// Decodes one payload into `out` at `out_rate`; returns the samples
    /// written (0 for a payload the codec refuses, counted in `failures`).
    /// `out` should hold [`MAX_PACKET_SAMPLES`].
    pub fn decode(&mut self, codec: Codec, payload: &[u8], out: &mut [i16]) -> usize {
        if matches!(codec, Codec::Pcmu | Codec::Pcma) && self.out_rate == 8000 {
            return codec.decode_g711(payload, out);
        }
        let mut native = std::mem::take(&mut self.native);
        native.resize(MAX_PACKET_SAMPLES, 0);
        let (n, rate) = match codec {
            Codec::Pcmu | Codec::Pcma => (codec.decode_g711(payload, &mut native), 8000),
            Codec::G722 => {
                let d = self.g722.get_or_insert_with(|| Box::new(G722Decoder::new()));
                let n = d.decode_frame_into(&payload[..payload.len().min(MAX_PACKET_SAMPLES / 2)], &mut native);
                (n.unwrap_or(0), 16000)
            }
            Codec::Opus => {
                self.native = native;
                return self.decode_opus(payload, out);
            }
            Codec::G729 => (self.decode_g729(payload, &mut native), 8000),
        };
        if n == 0 && !payload.is_empty() {
            self.failures += 1;
        }
        let written = self.convert(rate, &native[..n], out);
        self.native = native;
        written
    }

    /// Rebuilds a lost Opus packet from the in-band FEC of `next` (the
    /// packet after the loss); `lost_ticks` is the gap in RTP clock units.
    /// Returns the samples written at `out_rate`, 0 when not possible.
    pub fn recover_opus(&mut self, next: &[u8], lost_ticks: u64, out: &mut [i16]) -> usize {
        let rate = self.opus_rate();
        let lost = (lost_ticks * rate as u64 / 48000) as usize;
        // Whole 2.5 ms steps, at most 120 ms, and no shorter than one
        // frame of `next` (the decoder conceals otherwise).
        let step = rate as usize / 400;
        let lost = lost / step * step;
        let frame = opus_packet_samples(next, rate).unwrap_or(u64::MAX) as usize;
        if is_opus_dtx(next) || lost == 0 || lost > MAX_PACKET_SAMPLES * rate as usize / 48000 || lost < frame {
            return 0;
        }
        let d = self.opus.get_or_insert_with(|| Box::new(new_opus(rate)));
        self.float.resize(MAX_PACKET_SAMPLES, 0.0);
        let n = d.decode_fec(next, lost, &mut self.float).unwrap_or(0);
        self.finish_opus(rate, n, out)
    }

    fn opus_rate(&self) -> u32 {
        if OPUS_RATES.contains(&self.out_rate) {
            self.out_rate
        } else {
            48000
        }
    }

    fn decode_opus(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        let rate = self.opus_rate();
        let Some(samples) = opus_packet_samples(payload, rate) else {
            self.failures += 1;
            return 0;
        };
        self.float.resize(MAX_PACKET_SAMPLES, 0.0);
        if is_opus_dtx(payload) {
            // Nothing coded: silence for the packet's time (a decoder would
            // conceal from the last speech, which is not what was said).
            let n = (samples as usize).min(self.float.len());
            self.float[..n].fill(0.0);
            return self.finish_opus(rate, n, out);
        }
        let d = self.opus.get_or_insert_with(|| Box::new(new_opus(rate)));
        let n = match d.decode(payload, samples as usize, &mut self.float) {
            Ok(n) => n,
            Err(_) => {
                self.failures += 1;
                0
            }
        };
        self.finish_opus(rate, n, out)
    }

    fn finish_opus(&mut self, rate: u32, n: usize, out: &mut [i16]) -> usize {
        let mut native = std::mem::take(&mut self.native);
        native.clear();
        native.extend(self.float[..n].iter().map(|&v| (v * 32768.0).clamp(-32768.0, 32767.0) as i16));
        let written = self.convert(rate, &native, out);
        self.native = native;
        written
    }

    #[cfg(feature = "g729")]
    fn decode_g729(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        let d = self.g729.get_or_insert_with(|| Box::new(g729_sys::Decoder::new()));
        let mut written = 0;
        let mut rest = payload;
        // Voice frames are 10 bytes; an Annex B SID frame (2 bytes) may end
        // the payload and becomes comfort noise.
        while !rest.is_empty() && written + 80 <= out.len() {
            let len = if rest.len() >= 10 { 10 } else { rest.len() };
            let (frame, tail) = rest.split_at(len);
            let sid = len == 2;
            if len != 10 && !sid {
                self.failures += 1;
                break;
            }
            let pcm = d.decode(frame, false, sid, false);
            out[written..written + 80].copy_from_slice(&pcm);
            written += 80;
            rest = tail;
        }
        written
    }

    #[cfg(not(feature = "g729"))]
    fn decode_g729(&mut self, _payload: &[u8], _out: &mut [i16]) -> usize {
        // Never negotiated without the feature (see `Codec::is_built`).
        0
    }

    /// Copies or resamples `input` (at `rate`) into `out` at `out_rate`.
    fn convert(&mut self, rate: u32, input: &[i16], out: &mut [i16]) -> usize {
        if rate == self.out_rate {
            let n = input.len().min(out.len());
            out[..n].copy_from_slice(&input[..n]);
            return n;
        }
        let i = match self.resamplers.iter().position(|(r, _)| *r == rate) {
            Some(i) => i,
            None => match BoxedResampler::new(rate as usize, self.out_rate as usize) {
                Ok(r) => {
                    self.resamplers.push((rate, r));
                    self.resamplers.len() - 1
                }
                Err(_) => return 0,
            },
        };
        self.resamplers[i].1.resample_into(input, out).unwrap_or(0)
    }
}

/// An Opus DTX packet (RFC 7587 §3.1.3): a TOC byte with empty frames,
/// one or two bytes, sent now and then while the talker is silent.
fn is_opus_dtx(payload: &[u8]) -> bool {
    payload.len() <= 2
}

fn new_opus(rate: u32) -> opus_rs::OpusDecoder {
    // Mono: a stereo packet is mixed down (a stream is one channel of the
    // recording). `rate` is one of OPUS_RATES, which cannot fail.
    opus_rs::OpusDecoder::new(rate as i32, 1).expect("supported Opus rate")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::StreamEncoder;
    use crate::signal::{tone_power, Tone};

    fn tone(hz: f64, rate: u32, n: usize) -> Vec<i16> {
        let mut pcm = vec![0; n];
        Tone::new(hz, rate, 8000).fill(&mut pcm);
        pcm
    }

    /// Encodes one second of a tone in 20 ms packets and decodes it at
    /// `out_rate`: the tone comes out at the right frequency and length.
    fn round_trip(codec: Codec, out_rate: u32, hz: f64) -> Vec<i16> {
        let mut enc = StreamEncoder::new(codec);
        let mut dec = StreamDecoder::new(out_rate);
        let pcm = tone(hz, codec.sample_rate(), codec.sample_rate() as usize);
        let mut decoded = Vec::new();
        let mut out = vec![0; MAX_PACKET_SAMPLES];
        let mut payload = Vec::new();
        for frame in pcm.chunks(enc.frame_samples(20)) {
            enc.encode(frame, &mut payload);
            let n = dec.decode(codec, &payload, &mut out);
            decoded.extend_from_slice(&out[..n]);
        }
        assert_eq!(dec.failures, 0);
        assert_eq!(decoded.len(), out_rate as usize, "{codec} at {out_rate}: one second of audio");
        decoded
    }

    fn tone_ratio(pcm: &[i16], rate: u32, hz: f64, other: f64) -> f64 {
        // Skip the codec's start-up (first 100 ms).
        let steady = &pcm[rate as usize / 10..];
        tone_power(steady, hz, rate) / tone_power(steady, other, rate).max(1e-9)
    }

    #[test]
    fn every_codec_keeps_a_tone_at_every_recording_rate() {
        for codec in [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus] {
            for rate in [8000, 16000] {
                let pcm = round_trip(codec, rate, 1000.0);
                let r = tone_ratio(&pcm, rate, 1000.0, 1400.0);
                assert!(r > 100.0, "{codec} at {rate}: 1 kHz over 1.4 kHz only {r:.1}");
            }
        }
    }

    #[test]
    fn wideband_tones_survive_in_wideband_recordings() {
        // 5 kHz does not exist at 8 kHz; at 16 kHz G.722 and Opus keep it.
        for codec in [Codec::G722, Codec::Opus] {
            let pcm = round_trip(codec, 16000, 5000.0);
            let r = tone_ratio(&pcm, 16000, 5000.0, 3000.0);
            assert!(r > 100.0, "{codec}: 5 kHz over 3 kHz only {r:.1}");
        }
    }

    #[test]
    fn opus_fec_rebuilds_a_lost_packet() {
        let mut enc = StreamEncoder::new(Codec::Opus);
        let mut dec = StreamDecoder::new(16000);
        let pcm = tone(440.0, 48000, 48000);
        let mut out = vec![0; MAX_PACKET_SAMPLES];
        let mut packets = Vec::new();
        for frame in pcm.chunks(enc.frame_samples(20)) {
            let mut p = Vec::new();
            enc.encode(frame, &mut p);
            packets.push(p);
        }
        // Decode 10 packets, lose the 11th, rebuild it from the 12th.
        for p in &packets[..10] {
            dec.decode(Codec::Opus, p, &mut out);
        }
        let n = dec.recover_opus(&packets[11], 960, &mut out);
        assert_eq!(n, 320, "20 ms at 16 kHz rebuilt");
        let r = tone_power(&out[..n], 440.0, 16000) / tone_power(&out[..n], 1000.0, 16000).max(1e-9);
        assert!(r > 100.0, "the rebuilt packet carries the tone: {r:.1}");
        // LBRR is coarse: on a pure tone opus-rs rebuilds it about 9 dB
        // down, still far from the silence a loss leaves without FEC.
        let level = crate::signal::rms(&out[..n]);
        assert!(level > 8000.0 / 2f64.sqrt() / 6.0, "the rebuilt packet is not silence: {level:.0}");
        // A gap shorter than the next packet's frame is not recovered.
        assert_eq!(dec.recover_opus(&packets[12], 480, &mut out), 0);
    }

    /// Opus DTX: after speech and 200 ms of coded silence the sender
    /// sends a TOC byte every 400 ms; each decodes to exact silence for
    /// its frame's time (not the decoder's concealment of the last tone),
    /// and speech after it decodes as before.
    #[test]
    fn opus_dtx_packets_are_silence_of_their_length() {
        let mut enc = StreamEncoder::with_options(Codec::Opus, crate::EncoderOptions { fec: true, vad: true });
        let mut dec = StreamDecoder::new(16000);
        let mut out = vec![0; MAX_PACKET_SAMPLES];
        let speech = tone(440.0, 48000, 960 * 25);
        let mut payload = Vec::new();
        for frame in speech.chunks(960) {
            enc.encode(frame, &mut payload);
            assert!(payload.len() > 2, "speech is coded in full");
            dec.decode(Codec::Opus, &payload, &mut out);
        }
        // Straight after speech (a concealing decoder would go on with the tone).
        assert_eq!(dec.decode(Codec::Opus, &[payload[0] & 0xfc], &mut out), 320);
        assert!(out[..320].iter().all(|&v| v == 0), "a DTX packet after speech is silence");
        let mut sent = Vec::new();
        for i in 0..60 {
            enc.encode(&[0; 960], &mut payload);
            if !payload.is_empty() {
                sent.push((i, payload.len()));
            }
            if payload.len() == 1 {
                out.fill(1);
                assert_eq!(dec.decode(Codec::Opus, &payload, &mut out), 320, "20 ms at 16 kHz");
                assert!(out[..320].iter().all(|&v| v == 0), "a DTX packet is silence");
                assert_eq!(dec.recover_opus(&payload, 960, &mut out), 0, "a DTX packet carries no FEC");
            }
        }
        let dtx: Vec<usize> = sent.iter().filter(|(_, n)| *n == 1).map(|(i, _)| *i).collect();
        assert_eq!(dtx, [10, 30, 50], "one TOC byte every 400 ms after 200 ms of hangover: {sent:?}");
        assert!(sent.iter().take_while(|(i, _)| *i < 10).all(|(_, n)| *n > 2), "the hangover is coded: {sent:?}");
        let mut back = Vec::new();
        for frame in speech.chunks(960).take(10) {
            enc.encode(frame, &mut payload);
            assert!(payload.len() > 2, "speech after DTX goes out at once");
            let n = dec.decode(Codec::Opus, &payload, &mut out);
            back.extend_from_slice(&out[..n]);
        }
        assert_eq!(dec.failures, 0);
        let steady = &back[1600..];
        let r = tone_power(steady, 440.0, 16000) / tone_power(steady, 1000.0, 16000).max(1e-9);
        assert!(r > 100.0, "the tone is back after DTX: {r:.1}");
    }

    #[cfg(feature = "g729")]
    #[test]
    fn g729_with_silence_suppression_keeps_tone_and_time() {
        for rate in [8000, 16000] {
            let pcm = round_trip(Codec::G729, rate, 1000.0);
            let r = tone_ratio(&pcm, rate, 1000.0, 1400.0);
            assert!(r > 100.0, "G.729 at {rate}: {r:.1}");
        }
        // Annex B: silence becomes SID frames (2 bytes) or nothing at all.
        let mut enc = StreamEncoder::with_options(Codec::G729, crate::EncoderOptions { fec: false, vad: true });
        let mut dec = StreamDecoder::new(8000);
        let mut out = vec![0; MAX_PACKET_SAMPLES];
        let (mut sid, mut empty) = (0, 0);
        let mut payload = Vec::new();
        for _ in 0..50 {
            enc.encode(&[0; 160], &mut payload);
            match payload.len() {
                0 => empty += 1,
                n if n % 10 == 2 => {
                    sid += 1;
                    assert!(dec.decode(Codec::G729, &payload, &mut out) > 0, "a SID frame decodes to comfort noise");
                }
                _ => {}
            }
        }
        assert!(sid >= 1 && empty >= 1, "sid {sid}, untransmitted {empty}");
        assert_eq!(dec.failures, 0);
    }

    #[test]
    fn garbage_is_counted_not_decoded() {
        let mut dec = StreamDecoder::new(16000);
        let mut out = vec![0; MAX_PACKET_SAMPLES];
        // A code-3 Opus packet claiming 63 frames of 60 ms.
        assert_eq!(dec.decode(Codec::Opus, &[(3 << 3) | 3, 63, 1, 2, 3], &mut out), 0);
        assert_eq!(dec.failures, 1);
        // Oversized G.722 payloads are cut to what one packet may hold.
        let big = vec![0x55u8; 10_000];
        assert!(dec.decode(Codec::G722, &big, &mut out) <= MAX_PACKET_SAMPLES);
    }
}
