//! Encoding, for the test client (`callvault call --codec`) and the
//! benchmarks: the recorder itself never encodes.

use audio_codec::g722::G722Encoder;

use crate::codec::Codec;

pub struct StreamEncoder {
    codec: Codec,
    g722: Option<G722Encoder>,
    opus: Option<Box<opus_rs::OpusEncoder>>,
    #[cfg(feature = "g729")]
    g729: Option<Box<g729_sys::Encoder>>,
    /// Opus with `vad`: silent frames in a row (DTX after a hangover).
    opus_dtx: Option<OpusDtx>,
}

/// Opus discontinuous transmission as libopus and WebRTC send it: after
/// 200 ms of silence only a one-byte packet (the TOC, no frame data) every
/// 400 ms, nothing between; speech goes out at once.
#[derive(Debug, Default)]
struct OpusDtx {
    silent_frames: u32,
    toc: u8,
}

impl OpusDtx {
    /// Frames of silence still coded in full before DTX starts.
    const HANGOVER: u32 = 10;
    /// In DTX, one TOC-only packet per this many frames.
    const EVERY: u32 = 20;
    /// Peak below which a frame counts as silence (about -50 dBFS).
    const SILENCE_PEAK: u16 = 100;
}

impl std::fmt::Debug for StreamEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEncoder").field("codec", &self.codec).finish_non_exhaustive()
    }
}

/// Options a sender chooses beyond the codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncoderOptions {
    /// Opus: code in-band FEC (LBRR) for the previous frame in each packet.
    pub fec: bool,
    /// Silence suppression: G.729 Annex B (SID frames, then nothing), Opus
    /// DTX (a one-byte packet every 400 ms). Other codecs send everything.
    pub vad: bool,
}

impl StreamEncoder {
    pub fn new(codec: Codec) -> StreamEncoder {
        StreamEncoder::with_options(codec, EncoderOptions { fec: true, vad: false })
    }

    pub fn with_options(codec: Codec, options: EncoderOptions) -> StreamEncoder {
        let opus = (codec == Codec::Opus).then(|| {
            let mut e = opus_rs::OpusEncoder::new(48000, 1, opus_rs::Application::Voip).expect("48 kHz mono is valid");
            // 32 kbit/s, as WebRTC voice: SILK+CELT hybrid. (opus-rs 0.1.40's
            // encoder divides by zero at 24 kbit/s with FEC on: avoid.)
            e.bitrate_bps = 32000;
            e.use_inband_fec = options.fec;
            e.packet_loss_perc = if options.fec { 10 } else { 0 };
            Box::new(e)
        });
        StreamEncoder {
            opus_dtx: (codec == Codec::Opus && options.vad).then(OpusDtx::default),
            codec,
            g722: (codec == Codec::G722).then(G722Encoder::new),
            opus,
            #[cfg(feature = "g729")]
            g729: (codec == Codec::G729).then(|| Box::new(g729_sys::Encoder::new(options.vad))),
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// PCM samples (at the codec's sample rate) in one `ptime_ms` packet.
    pub fn frame_samples(&self, ptime_ms: u32) -> usize {
        (self.codec.sample_rate() * ptime_ms / 1000) as usize
    }

    /// RTP timestamp units one `ptime_ms` packet advances.
    pub fn frame_ticks(&self, ptime_ms: u32) -> u32 {
        self.codec.clock_rate() * ptime_ms / 1000
    }

    /// Encodes one packet's PCM into `out` (cleared first). An empty `out`
    /// means "send nothing" (G.729 Annex B between SID frames).
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.clear();
        match self.codec {
            Codec::Pcmu | Codec::Pcma => self.codec.encode_g711(pcm, out),
            Codec::G722 => {
                let e = self.g722.as_mut().expect("made for G.722");
                out.resize(pcm.len() / 2 + 1, 0);
                let n = audio_codec::Encoder::encode_into(e, pcm, out).unwrap_or(0);
                out.truncate(n);
            }
            Codec::Opus => {
                let e = self.opus.as_mut().expect("made for Opus");
                out.resize(1276, 0);
                let n = e.encode_i16(pcm, pcm.len(), out).unwrap_or(0);
                out.truncate(n);
                if let Some(dtx) = self.opus_dtx.as_mut() {
                    dtx.apply(pcm, out);
                }
            }
            Codec::G729 => self.encode_g729(pcm, out),
        }
    }

    #[cfg(feature = "g729")]
    fn encode_g729(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        let e = self.g729.as_mut().expect("made for G.729");
        for frame in pcm.chunks_exact(80) {
            let frame: &[i16; 80] = frame.try_into().expect("80 samples");
            out.extend_from_slice(&e.encode(frame));
            if out.len() % 10 == 2 {
                break; // a SID frame ends the payload (RFC 3551 §4.5.6)
            }
        }
    }

    #[cfg(not(feature = "g729"))]
    fn encode_g729(&mut self, _pcm: &[i16], _out: &mut Vec<u8>) {}
}

impl OpusDtx {
    /// Replaces a coded packet by what DTX sends for it (maybe nothing).
    /// The encoder still ran, so its state follows the audio.
    fn apply(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        if pcm.iter().any(|v| v.unsigned_abs() >= Self::SILENCE_PEAK) {
            self.silent_frames = 0;
            return;
        }
        if let Some(&toc) = out.first() {
            self.toc = toc & 0xfc; // one frame (code 0) of the same mode and size
        }
        self.silent_frames += 1;
        if self.silent_frames <= Self::HANGOVER {
            return;
        }
        out.clear();
        if (self.silent_frames - Self::HANGOVER - 1).is_multiple_of(Self::EVERY) {
            out.push(self.toc);
        }
    }
}
