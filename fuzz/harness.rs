//! What each fuzz target does with its input. Shared by the libFuzzer
//! targets (nightly) and by the corpus replay test in the normal suite
//! (stable), so a crash found once stays a regression test forever.
//! Every function must return normally for any input.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_proto::{frame, parse, Endpoint, HeaderAccess, Message, Output, Peer, TimerConfig};

pub fn sip_message(data: &[u8]) {
    let _ = frame(data, 65_535);
    if let Ok(Message::Request(r)) = parse(data) {
        let _ = r.essentials();
        let _ = r.content_type();
        let _ = r.contact();
        let _ = r.to_bytes();
    }
    let mut ep = Endpoint::new(TimerConfig::default());
    let now = Instant::now();
    let peer = Peer::udp(SocketAddr::from(([127, 0, 0, 1], 5060)));
    ep.handle_message(now, peer, data);
    ep.handle_message(now, peer, data); // as a retransmission
    ep.handle_timeout(now + Duration::from_secs(64));
    while let Some(o) = ep.poll_output() {
        if let Output::Transmit(t) = o {
            // What we send must itself parse.
            assert!(parse(&t.data).is_ok(), "endpoint produced an unparsable message");
        }
    }
}

pub fn sdp(data: &[u8]) {
    if let Ok(sd) = siprec::sdp::parse(data) {
        let neg = siprec::sdp::negotiate(&sd, &|m| matches!(m.encoding.as_str(), "PCMU" | "PCMA"));
        let ports: Vec<u16> = neg.iter().map(|_| 30_000).collect();
        let local = siprec::sdp::LocalSdp { addr: "127.0.0.1".parse().unwrap(), session_id: 1, version: 2 };
        let answer = siprec::sdp::build_answer(&sd, &neg, &ports, &local);
        let back = siprec::sdp::parse(&answer).expect("our answer parses");
        assert_eq!(back.streams.len(), sd.streams.len(), "one answer line per offer line");
    }
}

pub fn rs_metadata(data: &[u8]) {
    if let Ok(md) = siprec::metadata::parse(data) {
        let mut merged = md.clone();
        merged.apply_update(md.clone());
        let _ = siprec::metadata::calling_participant(&merged);
        let _ = merged.direction_hint();
        for s in &md.streams {
            if let Some(l) = &s.label {
                let _ = merged.sender_of_label(l);
                let _ = merged.receivers_of_label(l);
            }
        }
    }
}

pub fn recording_body(data: &[u8]) {
    let (selector, rest) = data.split_first().unwrap_or((&0, &[]));
    let ct = match selector % 5 {
        0 => "multipart/mixed;boundary=b",
        1 => "Multipart/Mixed; BOUNDARY=\"unique-boundary-1\"",
        2 => "application/sdp",
        3 => "application/rs-metadata+xml",
        _ => "multipart/mixed",
    };
    let ct = sip_proto::MediaType::parse(ct).unwrap();
    if let Ok(body) = siprec::classify_body(Some(&ct), rest) {
        if let Some(s) = body.sdp {
            sdp(&s);
        }
        if let Some(m) = body.metadata {
            rs_metadata(&m);
        }
    }
}

/// Input: datagrams, each prefixed by a one-byte length.
pub fn rtp_stream(data: &[u8]) {
    let t0 = Instant::now();
    let mut r = rtp_core::StreamReceiver::new(rtp_core::ReceiverConfig::default(), 8000, &[0, 8, 13, 101], t0);
    let mut dtmf = rtp_core::DtmfDetector::default();
    let mut i = 0;
    let mut step = 0u64;
    while i < data.len() {
        let len = data[i] as usize;
        let pkt = &data[i + 1..(i + 1 + len).min(data.len())];
        i += 1 + len;
        step += 1;
        let now = t0 + Duration::from_millis(20 * step);
        let from = SocketAddr::from(([127, 0, 0, 1], 4000 + (step % 3) as u16));
        let _ = rtp_core::rtcp::summarize(pkt);
        if r.on_rtp(now, from, pkt) == rtp_core::Accept::Restart {
            while r.pop_any().is_some() {}
            r.restart();
            let _ = r.on_rtp(now, from, pkt);
        }
        while let Some(slot) = r.pop(now) {
            if slot.pt == 101 {
                let _ = dtmf.on_packet(slot.ts, &slot.payload);
            }
        }
    }
    while r.pop_any().is_some() {}
    assert!(r.stats.lost <= r.stats.expected);
}

/// Input: a suite selector byte, then datagrams each prefixed by a one-byte
/// length. Each datagram is unprotected as SRTP and as SRTCP under a fixed
/// key (garbage must be refused, never panic), and protected then
/// unprotected again (must round-trip).
pub fn srtp_unprotect(data: &[u8]) {
    use base64::Engine as _;
    use rtp_core::srtp::{SrtpKey, SrtpReceiver, SrtpSender, SrtpSuite};
    let Some((&selector, mut rest)) = data.split_first() else { return };
    let suite = SrtpSuite::ALL[selector as usize % SrtpSuite::ALL.len()];
    let len = match suite {
        SrtpSuite::AeadAes128Gcm => 28,
        SrtpSuite::AeadAes256Gcm => 44,
        _ => 30,
    };
    let material: Vec<u8> = (0..len as u8).collect();
    let inline = format!("inline:{}", base64::engine::general_purpose::STANDARD.encode(&material));
    let key = SrtpKey::from_inline(suite, &inline).expect("a valid fixed key");
    let (mut rx, mut tx, mut check) = (SrtpReceiver::new(&key), SrtpSender::new(&key), SrtpReceiver::new(&key));
    while let Some((&n, tail)) = rest.split_first() {
        let pkt = &tail[..(n as usize).min(tail.len())];
        rest = &tail[pkt.len()..];
        let _ = rx.rtp(pkt);
        let _ = rx.rtcp(pkt);
        if let Some(protected) = tx.rtp(pkt) {
            assert_eq!(check.rtp(&protected).as_deref(), Ok(pkt), "SRTP round trip");
        }
    }
}

/// Packets for each decoder: byte 0 picks the codec (low 3 bits) and the
/// recording rate (bit 3: 16 kHz); the rest is packets, each a length
/// byte then that many bytes. Consecutive packets also go through Opus
/// FEC recovery. Whatever the payload, a decoder writes within its buffer
/// and never more than one packet's worth of samples.
pub fn codec_decode(data: &[u8]) {
    use media::decoder::{StreamDecoder, MAX_PACKET_SAMPLES};
    use media::Codec;
    let Some((&head, mut rest)) = data.split_first() else { return };
    let codec = Codec::ALL[(head & 7) as usize % Codec::ALL.len()];
    if !codec.is_built() {
        return;
    }
    let rate = if head & 8 != 0 { 16000 } else { 8000 };
    let mut dec = StreamDecoder::new(rate);
    let mut out = vec![0i16; MAX_PACKET_SAMPLES];
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        let n = dec.decode(codec, packet, &mut out);
        assert!(n <= MAX_PACKET_SAMPLES);
        if codec == Codec::Opus {
            let n = dec.recover_opus(packet, u64::from(len as u32) * 120, &mut out);
            assert!(n <= MAX_PACKET_SAMPLES);
        }
    }
}
