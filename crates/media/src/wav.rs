//! WAV files that survive a crash.
//!
//! A recording is written as a WAV from its first frame: the header goes
//! first with placeholder sizes, PCM is appended, and the sizes are patched
//! when the call ends. After `kill -9` the file is a valid-prefix WAV whose
//! sizes [`finalize`] recomputes from the file length (dropping a torn last
//! frame). Two layouts: plain PCM (≤ 2 channels, 44 bytes) and
//! WAVE_FORMAT_EXTENSIBLE (> 2 channels, 68 bytes), both readable by every
//! player and by `hound`.

use std::io::{self, Read, Seek, SeekFrom, Write};

const PCM_HEADER: usize = 44;
const EXT_HEADER: usize = 68;
/// The longest header this module writes: enough bytes for [`read_format`].
pub const MAX_HEADER_LEN: usize = EXT_HEADER;
/// KSDATAFORMAT_SUBTYPE_PCM.
const PCM_GUID: [u8; 16] = [1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xaa, 0, 0x38, 0x9b, 0x71];

/// Format of a recording file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavFormat {
    pub sample_rate: u32,
    pub channels: u16,
}

impl WavFormat {
    pub fn header_len(self) -> usize {
        if self.channels > 2 {
            EXT_HEADER
        } else {
            PCM_HEADER
        }
    }

    pub fn block_align(self) -> u32 {
        self.channels as u32 * 2
    }

    /// Header bytes for `data_len` bytes of 16-bit PCM.
    pub fn header(self, data_len: u32) -> Vec<u8> {
        let ext = self.channels > 2;
        let fmt_len: u32 = if ext { 40 } else { 16 };
        let mut h = Vec::with_capacity(self.header_len());
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&(4 + 8 + fmt_len + 8).saturating_add(data_len).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&fmt_len.to_le_bytes());
        h.extend_from_slice(&(if ext { 0xfffeu16 } else { 1 }).to_le_bytes());
        h.extend_from_slice(&self.channels.to_le_bytes());
        h.extend_from_slice(&self.sample_rate.to_le_bytes());
        h.extend_from_slice(&(self.sample_rate * self.block_align()).to_le_bytes());
        h.extend_from_slice(&(self.block_align() as u16).to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        if ext {
            h.extend_from_slice(&22u16.to_le_bytes()); // cbSize
            h.extend_from_slice(&16u16.to_le_bytes()); // valid bits
            h.extend_from_slice(&0u32.to_le_bytes()); // channel mask: unassigned
            h.extend_from_slice(&PCM_GUID);
        }
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data_len.to_le_bytes());
        debug_assert_eq!(h.len(), self.header_len());
        h
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("not a callvault WAV file: {0}")]
    Format(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the format of a file written by this module.
pub fn read_format(header: &[u8]) -> Result<WavFormat, WavError> {
    if header.len() < PCM_HEADER || &header[0..4] != b"RIFF" || &header[8..16] != b"WAVEfmt " {
        return Err(WavError::Format("missing RIFF/WAVE/fmt"));
    }
    let tag = u16::from_le_bytes([header[20], header[21]]);
    let channels = u16::from_le_bytes([header[22], header[23]]);
    let sample_rate = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
    let bits = u16::from_le_bytes([header[34], header[35]]);
    let format = WavFormat { sample_rate, channels };
    if bits != 16 || channels == 0 || !(tag == 1 || tag == 0xfffe) {
        return Err(WavError::Format("not 16-bit PCM"));
    }
    if (tag == 0xfffe) != (channels > 2) || header.len() < format.header_len() {
        return Err(WavError::Format("unexpected layout"));
    }
    if &header[format.header_len() - 8..format.header_len() - 4] != b"data" {
        return Err(WavError::Format("data chunk not where expected"));
    }
    Ok(format)
}

/// Result of [`finalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finalized {
    pub format: WavFormat,
    /// Whole frames of audio in the file.
    pub frames: u64,
    /// Bytes of a torn last frame that were cut off.
    pub truncated_bytes: u64,
}

impl Finalized {
    pub fn duration_ms(&self) -> u64 {
        self.frames * 1000 / self.format.sample_rate.max(1) as u64
    }
}

/// Makes a recording file consistent: cuts a torn trailing frame and writes
/// the true sizes into the header. Safe to run again on a finished file.
pub fn finalize<F: Read + Write + Seek>(
    file: &mut F,
    set_len: impl FnOnce(&mut F, u64) -> io::Result<()>,
) -> Result<Finalized, WavError> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut header = [0u8; EXT_HEADER];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut header)?;
    let format = read_format(&header[..n])?;
    let header_len = format.header_len() as u64;
    let payload = len.saturating_sub(header_len);
    let align = format.block_align() as u64;
    let max_payload = (u32::MAX as u64 - header_len) / align * align;
    let whole = (payload / align * align).min(max_payload);
    let truncated = payload - whole;
    if truncated > 0 {
        set_len(file, header_len + whole)?;
    }
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&format.header(whole as u32))?;
    file.flush()?;
    Ok(Finalized { format, frames: whole / align, truncated_bytes: truncated })
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn truncate(c: &mut Cursor<Vec<u8>>, len: u64) -> io::Result<()> {
        c.get_mut().truncate(len as usize);
        Ok(())
    }

    #[test]
    fn crash_leftover_is_repaired_and_readable_by_hound() {
        for channels in [1u16, 2, 3] {
            let fmt = WavFormat { sample_rate: 8000, channels };
            let mut bytes = fmt.header(0);
            for i in 0..(100 * channels as i16) {
                bytes.extend_from_slice(&i.to_le_bytes());
            }
            bytes.push(0x7f); // torn write
            let mut c = Cursor::new(bytes);
            let f = finalize(&mut c, truncate).unwrap();
            assert_eq!((f.frames, f.truncated_bytes), (100, 1));
            let reader = hound::WavReader::new(Cursor::new(c.into_inner())).unwrap();
            assert_eq!(reader.spec().channels, channels);
            assert_eq!(reader.len(), 100 * channels as u32);
            let first: Vec<i16> = reader.into_samples::<i16>().take(3).map(Result::unwrap).collect();
            assert_eq!(first, vec![0, 1, 2]);
        }
    }

    #[test]
    fn finalize_twice_is_harmless_and_garbage_is_refused() {
        let fmt = WavFormat { sample_rate: 16000, channels: 2 };
        let mut bytes = fmt.header(0);
        bytes.extend_from_slice(&[0; 400]);
        let mut c = Cursor::new(bytes);
        let a = finalize(&mut c, truncate).unwrap();
        let b = finalize(&mut c, truncate).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.duration_ms(), 6);
        let mut junk = Cursor::new(b"hello world, not a wav file at all........".to_vec());
        assert!(finalize(&mut junk, truncate).is_err());
    }
}
