//! Test signals: tones for the load generator, Goertzel detection for
//! checking which signal landed on which channel.

use std::f64::consts::PI;

/// A continuous sine generator.
#[derive(Debug, Clone)]
pub struct Tone {
    step: f64,
    phase: f64,
    amplitude: f64,
}

impl Tone {
    pub fn new(freq_hz: f64, sample_rate: u32, amplitude: i16) -> Tone {
        Tone { step: 2.0 * PI * freq_hz / sample_rate as f64, phase: 0.0, amplitude: amplitude as f64 }
    }

    pub fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            *s = (self.phase.sin() * self.amplitude) as i16;
            self.phase += self.step;
            if self.phase > 2.0 * PI {
                self.phase -= 2.0 * PI;
            }
        }
    }
}

/// Relative power of `freq_hz` in `samples` (Goertzel), normalised so a
/// full-scale pure tone at that frequency gives about 1.0.
pub fn tone_power(samples: &[i16], freq_hz: f64, sample_rate: u32) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let coeff = 2.0 * (2.0 * PI * freq_hz / sample_rate as f64).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = x as f64 / 32768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len() as f64;
    4.0 * power / (n * n)
}

/// Root mean square of `samples`, in sample units.
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / samples.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_tells_tones_apart() {
        let mut pcm = vec![0i16; 8000];
        Tone::new(440.0, 8000, 16000).fill(&mut pcm);
        let p440 = tone_power(&pcm, 440.0, 8000);
        let p1000 = tone_power(&pcm, 1000.0, 8000);
        assert!(p440 > 0.2, "{p440}");
        assert!(p1000 < p440 / 100.0, "{p1000}");
        assert!((rms(&pcm) - 16000.0 / 2f64.sqrt()).abs() < 50.0);
    }
}
