//! G.711 µ-law and A-law (ITU-T G.711), decode by table, encode by the
//! classic segment search. Decoding is two table lookups per packet byte.

/// Decodes one µ-law byte.
pub const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let sign = u & 0x80;
    let exponent = (u >> 4) & 0x07;
    let mantissa = u & 0x0f;
    let magnitude = ((((mantissa as i32) << 3) + 0x84) << exponent) - 0x84;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Decodes one A-law byte.
pub const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let sign = a & 0x80;
    let exponent = (a >> 4) & 0x07;
    let mantissa = (a & 0x0f) as i32;
    let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
    if sign != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw { alaw_to_linear(i as u8) } else { ulaw_to_linear(i as u8) };
        i += 1;
    }
    t
}

pub static ULAW_TABLE: [i16; 256] = build_table(false);
pub static ALAW_TABLE: [i16; 256] = build_table(true);

/// Encodes one sample to µ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS; // 0x84..=0x7fff: highest set bit is 7..=14
    let exponent = (31 - s.leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// Encodes one sample to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s >= 0 { 0x80 } else { 0x00 };
    if s < 0 {
        s = -s - 1;
    }
    let s = s.min(32767) >> 3;
    let (exponent, mantissa) = if s < 32 {
        (0, s >> 1)
    } else {
        let mut e = 1;
        while e < 7 && s >= (32 << e) {
            e += 1;
        }
        (e, (s >> e) & 0x0f)
    };
    ((sign | (exponent << 4) | mantissa) as u8) ^ 0x55
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
    }

    #[test]
    fn encode_decode_is_stable_on_code_words() {
        for code in 0..=255u8 {
            let lin = ULAW_TABLE[code as usize];
            assert_eq!(ULAW_TABLE[linear_to_ulaw(lin) as usize], lin, "ulaw code {code:#x}");
            let lin = ALAW_TABLE[code as usize];
            assert_eq!(ALAW_TABLE[linear_to_alaw(lin) as usize], lin, "alaw code {code:#x}");
        }
    }

    #[test]
    fn quantization_error_is_small() {
        for s in (-32000i32..32000).step_by(97) {
            let s = s as i16;
            let u = ULAW_TABLE[linear_to_ulaw(s) as usize] as i32;
            let a = ALAW_TABLE[linear_to_alaw(s) as usize] as i32;
            let tol = (s as i32).abs() / 16 + 16;
            assert!((u - s as i32).abs() <= tol, "ulaw {s} -> {u}");
            assert!((a - s as i32).abs() <= tol, "alaw {s} -> {a}");
        }
    }
}
