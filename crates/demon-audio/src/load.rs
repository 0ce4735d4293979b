//! Decoding audio files of any common format to planar f32, then to the engine's format.

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use demon_engine::Audio;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

use crate::resample::resample;
use crate::{AudioError, Result};

/// Decoded audio at its own rate and channel count.
#[derive(Clone, Debug)]
pub struct DecodedAudio {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

/// Bounds on what a file may contain (uploads must not exhaust memory).
#[derive(Clone, Copy, Debug)]
pub struct LoadLimits {
    pub max_seconds: f64,
    /// Samples over all channels (channels × rate × seconds): what decoding costs in memory
    /// and time, whatever the rate or channel count. Checked from the header before decoding
    /// when the container states its length, and while decoding otherwise.
    pub max_samples: u64,
}

impl Default for LoadLimits {
    fn default() -> Self {
        Self {
            max_seconds: 30.0 * 60.0,
            // 20 minutes of 48 kHz stereo.
            max_samples: 1200 * 48_000 * 2,
        }
    }
}

impl DecodedAudio {
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, |c| c.len())
    }

    /// Stereo at `rate` Hz: mono is duplicated, more than two channels are folded into two
    /// (even channels left, odd right), samples are clamped to [−1, 1].
    pub fn to_stereo(&self, rate: u32) -> Audio {
        let n = self.channels.len().max(1);
        let fold = |parity: usize| -> Vec<f32> {
            let chans: Vec<&Vec<f32>> = if n == 1 {
                vec![&self.channels[0]]
            } else {
                self.channels
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 2 == parity)
                    .map(|(_, c)| c)
                    .collect()
            };
            let k = chans.len().max(1) as f32;
            (0..self.frames())
                .map(|i| chans.iter().map(|c| c[i]).sum::<f32>() / k)
                .collect()
        };
        let chans = [fold(0), fold(1)].map(|c| {
            resample(&c, self.sample_rate, rate)
                .into_iter()
                .map(|v| v.clamp(-1.0, 1.0))
                .collect()
        });
        Audio {
            sample_rate: rate,
            channels: chans.into(),
        }
    }
}

/// Decode a file.
pub fn load_file(path: &Path, limits: LoadLimits) -> Result<DecodedAudio> {
    check_regular_file(path, u64::MAX)?;
    let file = File::open(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    decode(Box::new(file), hint, path.to_path_buf(), limits)
}

/// Refuse what is not a regular file of at most `max_bytes` (devices and FIFOs would block a
/// reader or never end), before opening it.
pub fn check_regular_file(path: &Path, max_bytes: u64) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(AudioError::Unsupported {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    if meta.len() > max_bytes {
        return Err(AudioError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("{} bytes, over the limit of {max_bytes}", meta.len()),
        });
    }
    Ok(())
}

/// Decode bytes (an upload); `name` is used in messages and as a format hint.
pub fn decode_bytes(bytes: Vec<u8>, name: &str, limits: LoadLimits) -> Result<DecodedAudio> {
    let mut hint = Hint::new();
    if let Some(ext) = Path::new(name).extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    decode(
        Box::new(Cursor::new(bytes)),
        hint,
        PathBuf::from(name),
        limits,
    )
}

fn decode(
    source: Box<dyn MediaSource>,
    hint: Hint,
    path: PathBuf,
    limits: LoadLimits,
) -> Result<DecodedAudio> {
    let mss = MediaSourceStream::new(source, Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| AudioError::Unsupported {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| AudioError::Unsupported {
            path: path.clone(),
            reason: "no audio track".into(),
        })?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| AudioError::Unsupported {
            path: path.clone(),
            reason: "no audio codec parameters".into(),
        })?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::Unsupported {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let track_id = track.id;
    if let (Some(frames), Some(ch), Some(r)) = (
        track.num_frames,
        params.channels.as_ref().map(|c| c.count() as u64),
        params.sample_rate,
    ) {
        let samples = frames.saturating_mul(ch);
        if samples > limits.max_samples {
            return Err(AudioError::TooManySamples {
                path,
                samples,
                limit: limits.max_samples,
            });
        }
        let seconds = frames as f64 / r.max(1) as f64;
        if seconds > limits.max_seconds {
            return Err(AudioError::TooLong {
                path,
                seconds,
                limit: limits.max_seconds,
            });
        }
    }

    let mut rate = 0u32;
    let mut planar: Vec<Vec<f32>> = Vec::new();
    let mut interleaved: Vec<f32> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                return Err(AudioError::Decode {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(b) => b,
            // A damaged packet is skipped, as players do.
            Err(SymError::DecodeError(_)) => continue,
            Err(e) => {
                return Err(AudioError::Decode {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let spec = buf.spec();
        let n_ch = spec.channels().count();
        if n_ch == 0 {
            return Err(AudioError::Decode {
                path,
                reason: "a packet with zero channels".into(),
            });
        }
        if planar.is_empty() {
            rate = spec.rate();
            planar = vec![Vec::new(); n_ch];
        } else if n_ch != planar.len() || spec.rate() != rate {
            return Err(AudioError::Decode {
                path,
                reason: "the channel layout or rate changes mid-stream".into(),
            });
        }
        interleaved.resize(buf.samples_interleaved(), 0.0);
        buf.copy_to_slice_interleaved(&mut interleaved);
        if let Some(i) = interleaved.iter().position(|s| !s.is_finite()) {
            return Err(AudioError::Decode {
                path,
                reason: format!(
                    "sample {} of channel {} is not a finite number (NaN or infinite)",
                    planar[0].len() + i / n_ch,
                    i % n_ch
                ),
            });
        }
        for (i, s) in interleaved.iter().enumerate() {
            planar[i % n_ch].push(*s);
        }
        let samples = (planar[0].len() * n_ch) as u64;
        if samples > limits.max_samples {
            return Err(AudioError::TooManySamples {
                path,
                samples,
                limit: limits.max_samples,
            });
        }
        if rate > 0 && planar[0].len() as f64 / rate as f64 > limits.max_seconds {
            return Err(AudioError::TooLong {
                path,
                seconds: planar[0].len() as f64 / rate as f64,
                limit: limits.max_seconds,
            });
        }
    }
    if planar.is_empty() || planar[0].is_empty() || rate == 0 {
        return Err(AudioError::Empty { path });
    }
    Ok(DecodedAudio {
        sample_rate: rate,
        channels: planar,
    })
}
