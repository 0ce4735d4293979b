//! WAV output, with the render's exact latent riding along in a private RIFF chunk and what
//! made it (software, prompt, style, tempo, key, seed) in a standard `LIST/INFO` chunk.
//!
//! Players ignore unknown chunks; `demon` reads the `dmnl` chunk back so that a render used as
//! a source is the exact latent it came from, not a re-analysis of its audio. The `INFO` chunk
//! (RIFF's own metadata: `ISFT` software, `ICMT` comment) is what players and tag editors show.

use std::path::Path;

use demon_engine::Audio;

use crate::{AudioError, Result};

const LATENT_CHUNK: &[u8; 4] = b"dmnl";
const LATENT_MAGIC: &[u8; 8] = b"DEMONLAT";
const LIST_CHUNK: &[u8; 4] = b"LIST";
const INFO_LIST: &[u8; 4] = b"INFO";
const INFO_SOFTWARE: &[u8; 4] = b"ISFT";
const INFO_COMMENT: &[u8; 4] = b"ICMT";

/// The longest text of one `INFO` field, in bytes: the chunk stays small.
pub const MAX_INFO_TEXT_BYTES: usize = 1024;

/// What a file's `LIST/INFO` chunk says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WavInfo {
    /// `ISFT`: the software that wrote the file ("demon 0.1.0").
    pub software: String,
    /// `ICMT`: a comment (the prompt, style, tempo, key and seed used).
    pub comment: String,
}

impl WavInfo {
    /// The whole `LIST` chunk: each non-empty field NUL-terminated, cut at a character
    /// boundary to [`MAX_INFO_TEXT_BYTES`], padded to an even length as RIFF asks.
    fn chunk(&self) -> Vec<u8> {
        let mut body = INFO_LIST.to_vec();
        for (id, text) in [
            (INFO_SOFTWARE, &self.software),
            (INFO_COMMENT, &self.comment),
        ] {
            if text.is_empty() {
                continue;
            }
            let mut end = text.len().min(MAX_INFO_TEXT_BYTES - 1);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let len = end + 1;
            body.extend_from_slice(id);
            body.extend_from_slice(&(len as u32).to_le_bytes());
            body.extend_from_slice(&text.as_bytes()[..end]);
            body.push(0);
            if len % 2 == 1 {
                body.push(0);
            }
        }
        let mut out = LIST_CHUNK.to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The `INFO` list of a `LIST` chunk's body; `None` for another list type.
    fn parse(list: &[u8]) -> Option<Self> {
        if list.get(0..4)? != INFO_LIST {
            return None;
        }
        let mut info = Self::default();
        for (id, body) in riff_chunks(&list[4..]) {
            let text = String::from_utf8_lossy(body)
                .trim_end_matches('\0')
                .to_string();
            match id {
                _ if id == INFO_SOFTWARE => info.software = text,
                _ if id == INFO_COMMENT => info.comment = text,
                _ => {}
            }
        }
        Some(info)
    }
}

/// The chunks of a RIFF body, `(id, body)` in order, up to the first that does not fit.
fn riff_chunks(bytes: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        out.push((id, body));
        pos += 8 + len + (len % 2);
    }
    out
}

/// Sample format of written files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WavFormat {
    /// 16-bit PCM (rounded, no dither: identical input gives identical bytes).
    #[default]
    Pcm16,
    /// 32-bit IEEE float.
    Float32,
}

/// A latent stored beside the audio.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddedLatent {
    /// Backend that can decode it (e.g. "sketch").
    pub backend: String,
    pub frames: usize,
    pub channels: usize,
    /// `[frames][channels]` row-major.
    pub values: Vec<f32>,
}

/// The bytes of a WAV file.
pub fn wav_bytes(audio: &Audio, format: WavFormat, latent: Option<&EmbeddedLatent>) -> Vec<u8> {
    wav_bytes_with_info(audio, format, latent, None)
}

/// The bytes of a WAV file with a `LIST/INFO` chunk after the samples.
pub fn wav_bytes_with_info(
    audio: &Audio,
    format: WavFormat,
    latent: Option<&EmbeddedLatent>,
    info: Option<&WavInfo>,
) -> Vec<u8> {
    let ch = audio.channels.len() as u16;
    let data_len = audio.frames() * ch as usize * format.bytes_per_sample();
    let planes: Vec<&[f32]> = audio.channels.iter().map(|c| c.as_slice()).collect();
    let mut data = vec![0u8; data_len];
    encode_frames(&planes, 0, audio.frames(), format, &mut data);
    let mut extra = Vec::new();
    if let Some(l) = latent {
        let mut body = Vec::new();
        body.extend_from_slice(LATENT_MAGIC);
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&(l.backend.len() as u32).to_le_bytes());
        body.extend_from_slice(l.backend.as_bytes());
        body.extend_from_slice(&(l.frames as u32).to_le_bytes());
        body.extend_from_slice(&(l.channels as u32).to_le_bytes());
        for v in &l.values {
            body.extend_from_slice(&v.to_le_bytes());
        }
        extra.extend_from_slice(LATENT_CHUNK);
        extra.extend_from_slice(&(body.len() as u32).to_le_bytes());
        extra.extend_from_slice(&body);
        if body.len() % 2 == 1 {
            extra.push(0);
        }
    }
    if let Some(info) = info {
        extra.extend_from_slice(&info.chunk());
    }
    let mut out = Vec::with_capacity(44 + data.len() + extra.len());
    out.extend_from_slice(&header(
        format,
        ch,
        audio.sample_rate,
        data.len() as u32,
        extra.len() as u32,
    ));
    out.extend_from_slice(&data);
    out.extend_from_slice(&extra);
    out
}

/// The header of a WAV of `frames` frames of `channels` channels with nothing after the
/// samples, for sending a WAV piece by piece ([`wav_sample_bytes`] gives the pieces): the
/// same bytes [`wav_bytes`] starts with. `None` when the samples would not fit a WAV's 32-bit
/// sizes.
pub fn wav_header(
    format: WavFormat,
    channels: u16,
    sample_rate: u32,
    frames: u64,
) -> Option<[u8; 44]> {
    let data = frames.checked_mul(channels as u64 * format.bytes_per_sample() as u64)?;
    let data = u32::try_from(data)
        .ok()
        .filter(|d| d.checked_add(36).is_some())?;
    Some(header(format, channels, sample_rate, data, 0))
}

/// The sample bytes of planar `channels` (all of one length), interleaved as `format`: the
/// data of a WAV whose header came from [`wav_header`].
pub fn wav_sample_bytes<C: AsRef<[f32]>>(channels: &[C], format: WavFormat) -> Vec<u8> {
    let planes: Vec<&[f32]> = channels.iter().map(|c| c.as_ref()).collect();
    let frames = planes.first().map_or(0, |c| c.len());
    let mut out = vec![0u8; frames * planes.len() * format.bytes_per_sample()];
    encode_frames(&planes, 0, frames, format, &mut out);
    out
}

/// Write a WAV file.
pub fn write_wav(
    path: &Path,
    audio: &Audio,
    format: WavFormat,
    latent: Option<&EmbeddedLatent>,
) -> Result<()> {
    write_wav_with_info(path, audio, format, latent, None)
}

/// Write a WAV file with a `LIST/INFO` chunk.
pub fn write_wav_with_info(
    path: &Path,
    audio: &Audio,
    format: WavFormat,
    latent: Option<&EmbeddedLatent>,
    info: Option<&WavInfo>,
) -> Result<()> {
    std::fs::write(path, wav_bytes_with_info(audio, format, latent, info)).map_err(|e| {
        AudioError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })
}

/// Interleaved sample bytes of `frames` frames of planar `channels`, starting at frame `from`,
/// as `format`.
fn encode_frames(
    channels: &[&[f32]],
    from: usize,
    frames: usize,
    format: WavFormat,
    out: &mut [u8],
) -> usize {
    let mut n = 0;
    for i in from..from + frames {
        for c in channels {
            let s = c[i];
            let bytes = match format {
                WavFormat::Pcm16 => {
                    let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
                    out[n..n + 2].copy_from_slice(&v.to_le_bytes());
                    2
                }
                WavFormat::Float32 => {
                    out[n..n + 4].copy_from_slice(&s.to_le_bytes());
                    4
                }
            };
            n += bytes;
        }
    }
    n
}

/// A WAV file written as audio arrives (a recording of a live session), crash-safe: the header
/// is valid from the start and its RIFF and data sizes are rewritten — and everything written
/// so far flushed to the file — after every second of audio and at [`finish`](Self::finish).
/// A file cut short by a crash or `kill -9` therefore plays up to the last update.
///
/// [`append`](Self::append) does not allocate: samples are converted through a fixed buffer on
/// the stack into the file's write buffer, so it may run in the real-time part of a tick.
pub struct WavWriter {
    path: std::path::PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    format: WavFormat,
    channels: u16,
    sample_rate: u32,
    frames: u64,
    /// Frames covered by the sizes in the header on disk.
    frames_in_header: u64,
    /// Written after the samples by `finish`.
    info: Option<WavInfo>,
}

/// Bytes of the canonical header written by [`WavWriter`] and [`wav_bytes`].
const HEADER_BYTES: usize = 44;

impl WavFormat {
    fn bytes_per_sample(self) -> usize {
        match self {
            WavFormat::Pcm16 => 2,
            WavFormat::Float32 => 4,
        }
    }
}

/// The 44-byte RIFF/WAVE header for `data_bytes` of samples followed by `extra_bytes` of
/// further chunks.
fn header(
    format: WavFormat,
    channels: u16,
    sample_rate: u32,
    data_bytes: u32,
    extra_bytes: u32,
) -> [u8; HEADER_BYTES] {
    let tag: u16 = match format {
        WavFormat::Pcm16 => 1,
        WavFormat::Float32 => 3,
    };
    let bits = 8 * format.bytes_per_sample() as u16;
    let block = channels as u32 * format.bytes_per_sample() as u32;
    let fields: [&[u8]; 12] = [
        b"RIFF",
        &(36 + data_bytes + extra_bytes).to_le_bytes(),
        b"WAVEfmt ",
        &16u32.to_le_bytes(),
        &tag.to_le_bytes(),
        &channels.to_le_bytes(),
        &sample_rate.to_le_bytes(),
        &(sample_rate * block).to_le_bytes(),
        &(block as u16).to_le_bytes(),
        &bits.to_le_bytes(),
        b"data",
        &data_bytes.to_le_bytes(),
    ];
    let mut h = [0u8; HEADER_BYTES];
    let mut n = 0;
    for f in fields {
        h[n..n + f.len()].copy_from_slice(f);
        n += f.len();
    }
    h
}

impl WavWriter {
    /// Create (or truncate) `path` and write a valid, empty WAV header.
    pub fn create(path: &Path, sample_rate: u32, channels: u16, format: WavFormat) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| write_error(path, e))?;
        let mut w = Self {
            path: path.to_path_buf(),
            out: Some(std::io::BufWriter::new(file)),
            format,
            channels: channels.max(1),
            sample_rate,
            frames: 0,
            frames_in_header: 0,
            info: None,
        };
        w.write_header(0)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames appended so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    pub fn seconds(&self) -> f64 {
        self.frames as f64 / self.sample_rate.max(1) as f64
    }

    fn block_bytes(&self) -> u64 {
        self.channels as u64 * self.format.bytes_per_sample() as u64
    }

    /// The `LIST/INFO` chunk [`finish`](Self::finish) writes after the samples.
    pub fn set_info(&mut self, info: WavInfo) {
        self.info = Some(info);
    }

    /// Write the header for the frames appended so far (and `extra_bytes` of chunks after
    /// them), flush, and return to the end.
    fn write_header(&mut self, extra_bytes: u32) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let block = self.block_bytes();
        let data = (self.frames * block).min(u32::MAX as u64 - 64 - extra_bytes as u64) as u32;
        let h = header(
            self.format,
            self.channels,
            self.sample_rate,
            data,
            extra_bytes,
        );
        let path = &self.path;
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| write_error(path, "the writer is already finished"))?;
        out.flush().map_err(|e| write_error(path, e))?;
        let file = out.get_mut();
        file.seek(SeekFrom::Start(0))
            .map_err(|e| write_error(path, e))?;
        file.write_all(&h).map_err(|e| write_error(path, e))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| write_error(path, e))?;
        self.frames_in_header = self.frames;
        Ok(())
    }

    /// Append one block of planar audio (`block[c][i]`, every channel the same length).
    pub fn append<C: AsRef<[f32]>>(&mut self, block: &[C]) -> Result<()> {
        use std::io::Write;
        if block.len() != self.channels as usize {
            return Err(write_error(
                &self.path,
                format!(
                    "a block of {} channels for a {}-channel file",
                    block.len(),
                    self.channels
                ),
            ));
        }
        let mut planes: [&[f32]; 8] = [&[]; 8];
        for (p, c) in planes.iter_mut().zip(block) {
            *p = c.as_ref();
        }
        let planes = &planes[..block.len().min(8)];
        let frames = planes.first().map_or(0, |c| c.len());
        if planes.iter().any(|c| c.len() != frames) {
            return Err(write_error(&self.path, "channels of different lengths"));
        }
        let mut buf = [0u8; 4096];
        let per_frame = self.block_bytes() as usize;
        let chunk = (buf.len() / per_frame).max(1);
        let format = self.format;
        let path = &self.path;
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| write_error(path, "the writer is already finished"))?;
        let mut from = 0;
        while from < frames {
            let n = chunk.min(frames - from);
            let bytes = encode_frames(planes, from, n, format, &mut buf);
            out.write_all(&buf[..bytes])
                .map_err(|e| write_error(path, e))?;
            from += n;
        }
        self.frames += frames as u64;
        if self.frames - self.frames_in_header >= self.sample_rate as u64 {
            self.write_header(0)?;
        }
        Ok(())
    }

    /// Write the `INFO` chunk if one was set, the final sizes, and flush; later calls do
    /// nothing.
    pub fn finish(&mut self) -> Result<()> {
        use std::io::Write;
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let extra = match self.info.take() {
            Some(info) => {
                let chunk = info.chunk();
                out.write_all(&chunk)
                    .map_err(|e| write_error(&self.path, e))?;
                chunk.len() as u32
            }
            None => 0,
        };
        self.write_header(extra)?;
        self.out = None;
        Ok(())
    }
}

impl Drop for WavWriter {
    /// A writer dropped without `finish` (an error path) still leaves a whole file.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn write_error(path: &Path, reason: impl std::fmt::Display) -> AudioError {
    AudioError::Write {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The largest WAV read whole to look for an embedded latent (over an hour of 48 kHz stereo
/// float); anything larger, or not a regular file (`/dev/zero`, a FIFO), is refused up front.
pub const MAX_WAV_BYTES: u64 = 1 << 30;

/// The latent embedded in a WAV written by `demon`, if any. Malformed chunks read as `None`.
pub fn read_embedded_latent(path: &Path) -> Result<Option<EmbeddedLatent>> {
    crate::load::check_regular_file(path, MAX_WAV_BYTES)?;
    let bytes = std::fs::read(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_embedded_latent(&bytes))
}

fn parse_embedded_latent(bytes: &[u8]) -> Option<EmbeddedLatent> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    let (_, body) = riff_chunks(&bytes[12..])
        .into_iter()
        .find(|(id, _)| *id == LATENT_CHUNK)?;
    if body.get(0..8)? != LATENT_MAGIC || u32_at(body, 8)? != 1 {
        return None;
    }
    let name_len = u32_at(body, 12)? as usize;
    let backend = String::from_utf8(body.get(16..16 + name_len)?.to_vec()).ok()?;
    let p = 16 + name_len;
    let frames = u32_at(body, p)? as usize;
    let channels = u32_at(body, p + 4)? as usize;
    let n = frames.checked_mul(channels)?;
    let raw = body.get(p + 8..p + 8 + n.checked_mul(4)?)?;
    let values: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some(EmbeddedLatent {
        backend,
        frames,
        channels,
        values,
    })
}

/// The `LIST/INFO` chunk of a WAV file's bytes, if it has one.
pub fn parse_wav_info(bytes: &[u8]) -> Option<WavInfo> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    riff_chunks(&bytes[12..])
        .into_iter()
        .filter(|(id, _)| *id == LIST_CHUNK)
        .find_map(|(_, body)| WavInfo::parse(body))
}

/// The `LIST/INFO` chunk of a WAV file, if it has one.
pub fn read_wav_info(path: &Path) -> Result<Option<WavInfo>> {
    crate::load::check_regular_file(path, MAX_WAV_BYTES)?;
    let bytes = std::fs::read(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_wav_info(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_info_chunk_parses_back_and_readers_still_read_the_samples() {
        let audio =
            Audio::new(48_000, vec![vec![0.25, -0.5, 0.125], vec![0.0, 0.5, -1.0]]).unwrap();
        let info = WavInfo {
            software: "demon 0.1.0".into(),
            comment: "prompt \"jazz piano trio\"; style funk; 108 bpm; A major; seed 7".into(),
        };
        let latent = EmbeddedLatent {
            backend: "sketch".into(),
            frames: 1,
            channels: 3,
            values: vec![0.5, -1.0, 2.0],
        };
        for latent in [None, Some(&latent)] {
            let bytes = wav_bytes_with_info(&audio, WavFormat::Pcm16, latent, Some(&info));
            assert_eq!(parse_wav_info(&bytes), Some(info.clone()));
            assert_eq!(parse_embedded_latent(&bytes).as_ref(), latent);
            let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(riff, bytes.len() - 8, "the RIFF size counts the chunk");
            let r = hound::WavReader::new(std::io::Cursor::new(&bytes)).unwrap();
            let samples: Vec<i16> = r
                .into_samples()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
            assert_eq!(samples, [8192, 0, -16384, 16384, 4096, -32767]);
            let ours = decode_bytes(bytes.clone(), "x.wav", LoadLimits::default()).unwrap();
            assert_eq!(ours.channels[1].len(), 3);
        }
        // Long texts are cut at a character boundary; odd lengths are padded.
        let long = WavInfo {
            software: "ab".into(),
            comment: "é".repeat(1000),
        };
        let bytes = wav_bytes_with_info(&audio, WavFormat::Pcm16, None, Some(&long));
        assert_eq!(bytes.len() % 2, 0);
        let back = parse_wav_info(&bytes).unwrap();
        assert_eq!(
            (back.software.as_str(), back.comment),
            ("ab", "é".repeat(511))
        );
        assert_eq!(
            parse_wav_info(&wav_bytes(&audio, WavFormat::Pcm16, None)),
            None
        );

        // The streaming writer (recordings) writes it when it finishes.
        let path = std::env::temp_dir().join(format!("demon-wav-info-{}.wav", std::process::id()));
        let mut w = WavWriter::create(&path, 48_000, 2, WavFormat::Float32).unwrap();
        w.append(&audio.channels).unwrap();
        w.set_info(info.clone());
        w.finish().unwrap();
        assert_eq!(read_wav_info(&path).unwrap(), Some(info));
        let r = hound::WavReader::open(&path).unwrap();
        let samples: Vec<f32> = r
            .into_samples()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(samples, [0.25, 0.0, -0.5, 0.5, 0.125, -1.0]);
        std::fs::remove_file(&path).unwrap();
    }
    use crate::load::{LoadLimits, decode_bytes};

    /// A canonical WAV header (`format` 1 PCM or 3 float) whose data chunk claims `data_bytes`,
    /// followed by `body`.
    fn wav_with(
        format: u16,
        channels: u16,
        rate: u32,
        bits: u16,
        data_bytes: u32,
        body: &[u8],
    ) -> Vec<u8> {
        let block = channels * bits / 8;
        let mut w = b"RIFF".to_vec();
        w.extend_from_slice(&(36 + data_bytes).to_le_bytes());
        w.extend_from_slice(b"WAVEfmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&format.to_le_bytes());
        w.extend_from_slice(&channels.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * block as u32).to_le_bytes());
        w.extend_from_slice(&block.to_le_bytes());
        w.extend_from_slice(&bits.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&data_bytes.to_le_bytes());
        w.extend_from_slice(body);
        w
    }

    #[test]
    fn total_samples_are_checked_from_the_header_before_decoding() {
        // 600 s of 8-channel 96 kHz 16-bit, as the header states it; the body is a few bytes:
        // refused from the header alone (it would be 460 M samples).
        let claimed = 600 * 96_000 * 8 * 2;
        let w = wav_with(1, 8, 96_000, 16, claimed, &[0; 64]);
        let e = decode_bytes(w, "big.wav", LoadLimits::default()).unwrap_err();
        match e {
            AudioError::TooManySamples { samples, limit, .. } => {
                assert_eq!(samples, 600 * 96_000 * 8);
                assert_eq!(limit, 1200 * 48_000 * 2);
            }
            other => panic!("{other}"),
        }
        // The same stated length in stereo 48 kHz is within the limit (and then truncated).
        let body: Vec<u8> = (0..4800u32)
            .flat_map(|i| ((i % 100) as i16).to_le_bytes())
            .collect();
        let w = wav_with(1, 2, 48_000, 16, body.len() as u32, &body);
        assert_eq!(
            decode_bytes(w, "ok.wav", LoadLimits::default())
                .unwrap()
                .frames(),
            2400
        );
    }

    #[test]
    fn non_finite_samples_are_refused() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let body: Vec<u8> = [0.0f32, 0.5, bad, 0.25]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let w = wav_with(3, 2, 48_000, 32, body.len() as u32, &body);
            let e = decode_bytes(w, "nan.wav", LoadLimits::default()).unwrap_err();
            assert!(
                e.to_string()
                    .contains("sample 1 of channel 0 is not a finite number"),
                "{e}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn devices_and_fifos_are_refused_before_reading() {
        let zero = Path::new("/dev/zero");
        for e in [
            read_embedded_latent(zero).unwrap_err(),
            crate::load::load_file(zero, LoadLimits::default()).unwrap_err(),
        ] {
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn a_wav_sent_in_pieces_is_the_same_bytes() {
        let left: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.01).sin()).collect();
        let right: Vec<f32> = left.iter().map(|v| -v * 0.5).collect();
        let audio = Audio::new(44_100, vec![left.clone(), right.clone()]).unwrap();
        for format in [WavFormat::Float32, WavFormat::Pcm16] {
            let mut sent = wav_header(format, 2, 44_100, 1001).unwrap().to_vec();
            for at in (0..1001).step_by(300) {
                let end = (at + 300).min(1001);
                sent.extend(wav_sample_bytes(&[&left[at..end], &right[at..end]], format));
            }
            assert_eq!(sent, wav_bytes(&audio, format, None), "{format:?}");
        }
        // 2^32 bytes of samples do not fit the header's sizes.
        assert!(wav_header(WavFormat::Float32, 2, 48_000, 1 << 29).is_none());
        assert!(wav_header(WavFormat::Float32, 2, 48_000, (1 << 29) - 5).is_some());
    }

    #[test]
    fn round_trips_audio_and_latent() {
        let audio = Audio::new(
            48_000,
            vec![vec![0.0, 0.5, -0.5, 1.0], vec![0.25, -1.0, 0.0, 0.1]],
        )
        .unwrap();
        let latent = EmbeddedLatent {
            backend: "sketch".into(),
            frames: 2,
            channels: 3,
            values: vec![0.1, -0.2, 0.3, 1.0, -1.0, 0.0],
        };
        let bytes = wav_bytes(&audio, WavFormat::Float32, Some(&latent));
        assert_eq!(parse_embedded_latent(&bytes), Some(latent));
        let back = decode_bytes(bytes, "x.wav", LoadLimits::default()).unwrap();
        assert_eq!(back.sample_rate, 48_000);
        assert_eq!(back.channels, audio.channels);
        // 16-bit: quantised, still decodable.
        let bytes = wav_bytes(&audio, WavFormat::Pcm16, None);
        let back = decode_bytes(bytes.clone(), "x.wav", LoadLimits::default()).unwrap();
        assert!((back.channels[0][1] - 0.5).abs() < 1e-4);
        assert_eq!(parse_embedded_latent(&bytes), None);
    }

    #[test]
    fn bad_files_give_named_errors() {
        let e = decode_bytes(
            b"this is not audio at all".to_vec(),
            "notes.txt",
            LoadLimits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("notes.txt"), "{e}");
        let empty = wav_bytes(
            &Audio::new(48_000, vec![vec![], vec![]]).unwrap(),
            WavFormat::Pcm16,
            None,
        );
        let e = decode_bytes(empty, "empty.wav", LoadLimits::default()).unwrap_err();
        assert!(matches!(e, AudioError::Empty { .. }), "{e}");
        let long = wav_bytes(
            &Audio::new(8_000, vec![vec![0.0; 8_000 * 3]]).unwrap(),
            WavFormat::Pcm16,
            None,
        );
        let e = decode_bytes(
            long,
            "long.wav",
            LoadLimits {
                max_seconds: 2.0,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, AudioError::TooLong { .. }), "{e}");
        let e = crate::load::load_file(Path::new("/nonexistent/x.wav"), LoadLimits::default())
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.wav"));
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("demon-wav-{}-{name}", std::process::id()))
    }

    fn tone(frames: usize, offset: usize) -> [Vec<f32>; 2] {
        let l = (offset..offset + frames)
            .map(|i| ((i % 97) as f32 / 97.0 - 0.5) * 0.8)
            .collect();
        let r = (offset..offset + frames)
            .map(|i| ((i % 31) as f32 / 31.0 - 0.5) * 0.5)
            .collect();
        [l, r]
    }

    #[test]
    fn a_streamed_file_equals_the_whole_file_writer() {
        for format in [WavFormat::Pcm16, WavFormat::Float32] {
            let path = tmp("stream.wav");
            let mut w = WavWriter::create(&path, 48_000, 2, format).unwrap();
            let mut all = [Vec::new(), Vec::new()];
            for k in 0..30 {
                let b = tone(1920 + k, all[0].len());
                all[0].extend_from_slice(&b[0]);
                all[1].extend_from_slice(&b[1]);
                w.append(&b).unwrap();
            }
            w.finish().unwrap();
            let whole = wav_bytes(&Audio::new(48_000, all.to_vec()).unwrap(), format, None);
            assert!(std::fs::read(&path).unwrap() == whole, "{format:?}");
            assert!(
                w.append(&tone(10, 0)).is_err(),
                "finished writers refuse audio"
            );
            assert!(
                w.append(&[vec![0.0f32; 3]]).is_err(),
                "a block must have every channel"
            );
            std::fs::remove_file(&path).ok();
        }
    }

    #[test]
    fn a_writer_killed_mid_recording_leaves_a_file_that_plays_to_the_last_update() {
        let path = tmp("killed.wav");
        let mut w = WavWriter::create(&path, 48_000, 2, WavFormat::Pcm16).unwrap();
        // 2.5 s in 40 ms blocks: the header was last updated after 2 s.
        let mut written = [Vec::new(), Vec::new()];
        for _ in 0..(2500 / 40) {
            let b = tone(1920, written[0].len());
            written[0].extend_from_slice(&b[0]);
            written[1].extend_from_slice(&b[1]);
            w.append(&b).unwrap();
        }
        // A kill: no finish, no destructor, the write buffer's tail never reaches the file.
        std::mem::forget(w);
        let mut reader = hound::WavReader::open(&path).expect("the header is valid");
        let spec = reader.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (2, 48_000, 16)
        );
        let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        let frames = samples.len() / 2;
        assert_eq!(frames, 96_000, "every whole second written before the kill");
        for (i, pair) in samples.chunks_exact(2).enumerate().step_by(997) {
            for c in 0..2 {
                let want = (written[c][i].clamp(-1.0, 1.0) * 32767.0).round() as i16;
                assert_eq!(pair[c], want, "frame {i} channel {c}");
            }
        }
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn mono_and_other_rates_become_48k_stereo() {
        let mono = wav_bytes(
            &Audio::new(24_000, vec![vec![0.3; 2400]]).unwrap(),
            WavFormat::Float32,
            None,
        );
        let d = decode_bytes(mono, "m.wav", LoadLimits::default()).unwrap();
        let a = d.to_stereo(48_000);
        assert_eq!(a.channels.len(), 2);
        assert_eq!(a.frames(), 4800);
        assert!((a.channels[1][2400] - 0.3).abs() < 1e-3);
    }
}
