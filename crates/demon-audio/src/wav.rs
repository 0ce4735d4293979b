//! WAV output, with the render's exact latent riding along in a private RIFF chunk.
//!
//! Players ignore unknown chunks; `demon` reads the `dmnl` chunk back so that a render used as
//! a source is the exact latent it came from, not a re-analysis of its audio.

use std::path::Path;

use demon_engine::Audio;

use crate::{AudioError, Result};

const LATENT_CHUNK: &[u8; 4] = b"dmnl";
const LATENT_MAGIC: &[u8; 8] = b"DEMONLAT";

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
    let ch = audio.channels.len() as u16;
    let (bits, tag): (u16, u16) = match format {
        WavFormat::Pcm16 => (16, 1),
        WavFormat::Float32 => (32, 3),
    };
    let block = ch as u32 * bits as u32 / 8;
    let data_len = audio.frames() as u32 * block;
    let mut data = Vec::with_capacity(data_len as usize);
    for i in 0..audio.frames() {
        for c in &audio.channels {
            let s = c[i];
            match format {
                WavFormat::Pcm16 => {
                    let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
                    data.extend_from_slice(&v.to_le_bytes());
                }
                WavFormat::Float32 => data.extend_from_slice(&s.to_le_bytes()),
            }
        }
    }
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
    let mut out = Vec::with_capacity(44 + data.len() + extra.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(4 + 24 + 8 + data.len() as u32 + extra.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&ch.to_le_bytes());
    out.extend_from_slice(&audio.sample_rate.to_le_bytes());
    out.extend_from_slice(&(audio.sample_rate * block).to_le_bytes());
    out.extend_from_slice(&(block as u16).to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out.extend_from_slice(&extra);
    out
}

/// Write a WAV file.
pub fn write_wav(
    path: &Path,
    audio: &Audio,
    format: WavFormat,
    latent: Option<&EmbeddedLatent>,
) -> Result<()> {
    std::fs::write(path, wav_bytes(audio, format, latent)).map_err(|e| AudioError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The latent embedded in a WAV written by `demon`, if any. Malformed chunks read as `None`.
pub fn read_embedded_latent(path: &Path) -> Result<Option<EmbeddedLatent>> {
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
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32_at(bytes, pos + 4)? as usize;
        let body = bytes.get(pos + 8..pos + 8 + len)?;
        if id == LATENT_CHUNK {
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
            return Some(EmbeddedLatent {
                backend,
                frames,
                channels,
                values,
            });
        }
        pos += 8 + len + (len % 2);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{LoadLimits, decode_bytes};

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
        let e = decode_bytes(long, "long.wav", LoadLimits { max_seconds: 2.0 }).unwrap_err();
        assert!(matches!(e, AudioError::TooLong { .. }), "{e}");
        let e = crate::load::load_file(Path::new("/nonexistent/x.wav"), LoadLimits::default())
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.wav"));
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
