//! Decoding audio files of any common format to planar f32, or straight to the engine's
//! format: the stereo decode folds and resamples each packet as it arrives
//! ([`StereoBuilder`]), so memory is the 48 kHz stereo result plus one packet, whatever the
//! file's rate or channel count, and the time is linear in its length.

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

use crate::resample::Resampler;
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
        let mut b = StereoBuilder::new(self.sample_rate, n, rate, self.frames() as u64);
        let mut at = 0;
        while at < self.frames() {
            let len = CHUNK_FRAMES.min(self.frames() - at);
            b.push_frames(len, |f, c| self.channels[c][at + f]);
            at += len;
        }
        b.finish()
    }
}

/// Frames folded and resampled at a time when converting decoded audio.
const CHUNK_FRAMES: usize = 1 << 16;

/// Stereo at the engine's rate, built from audio of any rate and channel count as it arrives:
/// each piece is folded to two channels (mono duplicated; otherwise even channels averaged
/// into the left, odd into the right) and resampled, so nothing at the source's own rate or
/// channel count is kept beyond the piece.
pub struct StereoBuilder {
    channels: usize,
    to: u32,
    left: Resampler,
    right: Resampler,
    folded: [Vec<f32>; 2],
    out: [Vec<f32>; 2],
}

impl StereoBuilder {
    /// For `channels` channels at `from` Hz to stereo at `to` Hz; `frames_hint` (the source's
    /// length when known) sizes the output up front.
    pub fn new(from: u32, channels: usize, to: u32, frames_hint: u64) -> Self {
        let left = Resampler::new(from, to);
        let right = left.another();
        let out_frames = (frames_hint as f64 * to as f64 / from.max(1) as f64).ceil() as usize;
        let mono = channels <= 1;
        Self {
            channels: channels.max(1),
            to,
            left,
            right,
            folded: [Vec::new(), Vec::new()],
            out: [
                Vec::with_capacity(out_frames),
                Vec::with_capacity(if mono { 0 } else { out_frames }),
            ],
        }
    }

    /// `frames` frames, sample `(frame, channel)` given by `sample`.
    pub fn push_frames(&mut self, frames: usize, sample: impl Fn(usize, usize) -> f32) {
        let n = self.channels;
        let [l, r] = &mut self.folded;
        l.clear();
        r.clear();
        if n == 1 {
            l.extend((0..frames).map(|f| sample(f, 0)));
            self.left.push(l, &mut self.out[0]);
            return;
        }
        let (kl, kr) = (n.div_ceil(2) as f32, (n / 2) as f32);
        for f in 0..frames {
            let (mut a, mut b) = (0f32, 0f32);
            for c in 0..n {
                if c % 2 == 0 {
                    a += sample(f, c);
                } else {
                    b += sample(f, c);
                }
            }
            l.push(a / kl);
            r.push(b / kr);
        }
        self.left.push(l, &mut self.out[0]);
        self.right.push(r, &mut self.out[1]);
    }

    /// Interleaved samples `[frames][channels]`.
    pub fn push_interleaved(&mut self, x: &[f32]) {
        let n = self.channels;
        self.push_frames(x.len() / n, |f, c| x[f * n + c]);
    }

    /// The stereo audio, clamped to [−1, 1].
    pub fn finish(self) -> Audio {
        let [mut l, mut r] = self.out;
        self.left.finish(&mut l);
        if self.channels == 1 {
            r = l.clone();
        } else {
            self.right.finish(&mut r);
        }
        for c in [&mut l, &mut r] {
            c.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
        }
        Audio {
            sample_rate: self.to,
            channels: [l, r].into(),
        }
    }
}

/// Decode a file at its own rate and channel count.
pub fn load_file(path: &Path, limits: LoadLimits) -> Result<DecodedAudio> {
    let (source, hint) = open_file(path)?;
    let mut sink = Planar::default();
    let rate = decode(source, hint, path.to_path_buf(), limits, &mut sink)?;
    Ok(DecodedAudio {
        sample_rate: rate,
        channels: sink.channels,
    })
}

/// Decode a file straight to stereo at `rate` Hz (as [`DecodedAudio::to_stereo`] would make
/// it), streaming: the file is read, folded and resampled packet by packet.
pub fn load_file_stereo(path: &Path, limits: LoadLimits, rate: u32) -> Result<Audio> {
    let (source, hint) = open_file(path)?;
    let mut sink = Stereo::new(rate);
    decode(source, hint, path.to_path_buf(), limits, &mut sink)?;
    sink.finish(path)
}

fn open_file(path: &Path) -> Result<(Box<dyn MediaSource>, Hint)> {
    check_regular_file(path, u64::MAX)?;
    let file = File::open(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((Box::new(file), hint_for(path)))
}

fn hint_for(path: &Path) -> Hint {
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    hint
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

/// Decode bytes (an upload) at their own rate and channel count; `name` is used in messages
/// and as a format hint.
pub fn decode_bytes(bytes: Vec<u8>, name: &str, limits: LoadLimits) -> Result<DecodedAudio> {
    let mut sink = Planar::default();
    let rate = decode(
        Box::new(Cursor::new(bytes)),
        hint_for(Path::new(name)),
        PathBuf::from(name),
        limits,
        &mut sink,
    )?;
    Ok(DecodedAudio {
        sample_rate: rate,
        channels: sink.channels,
    })
}

/// Decode bytes (an upload) straight to stereo at `rate` Hz, packet by packet (see
/// [`load_file_stereo`]).
pub fn decode_bytes_stereo(
    bytes: Vec<u8>,
    name: &str,
    limits: LoadLimits,
    rate: u32,
) -> Result<Audio> {
    let path = PathBuf::from(name);
    let mut sink = Stereo::new(rate);
    decode(
        Box::new(Cursor::new(bytes)),
        hint_for(&path),
        path.clone(),
        limits,
        &mut sink,
    )?;
    sink.finish(&path)
}

/// Where the decode loop puts each packet's samples.
trait PacketSink {
    /// Before the first packet: the stream's rate, channel count and (when the container
    /// says) its length in frames.
    fn start(&mut self, rate: u32, channels: usize, frames_hint: Option<u64>);
    /// One packet, interleaved `[frames][channels]`.
    fn packet(&mut self, interleaved: &[f32], channels: usize);
}

/// Keeps every channel at its own rate.
#[derive(Default)]
struct Planar {
    channels: Vec<Vec<f32>>,
}

impl PacketSink for Planar {
    fn start(&mut self, _rate: u32, channels: usize, frames_hint: Option<u64>) {
        let cap = frames_hint.unwrap_or(0) as usize;
        self.channels = (0..channels).map(|_| Vec::with_capacity(cap)).collect();
    }

    fn packet(&mut self, interleaved: &[f32], channels: usize) {
        for (i, s) in interleaved.iter().enumerate() {
            self.channels[i % channels].push(*s);
        }
    }
}

/// Folds and resamples as packets arrive.
struct Stereo {
    rate: u32,
    builder: Option<StereoBuilder>,
}

impl Stereo {
    fn new(rate: u32) -> Self {
        Self {
            rate,
            builder: None,
        }
    }

    fn finish(self, path: &Path) -> Result<Audio> {
        self.builder
            .map(StereoBuilder::finish)
            .ok_or_else(|| AudioError::Empty {
                path: path.to_path_buf(),
            })
    }
}

impl PacketSink for Stereo {
    fn start(&mut self, rate: u32, channels: usize, frames_hint: Option<u64>) {
        self.builder = Some(StereoBuilder::new(
            rate,
            channels,
            self.rate,
            frames_hint.unwrap_or(0),
        ));
    }

    fn packet(&mut self, interleaved: &[f32], _channels: usize) {
        if let Some(b) = self.builder.as_mut() {
            b.push_interleaved(interleaved);
        }
    }
}

/// Decode the default audio track into `sink`, checking the limits from the header when it
/// states the length and after every packet; returns the sample rate.
fn decode(
    source: Box<dyn MediaSource>,
    hint: Hint,
    path: PathBuf,
    limits: LoadLimits,
    sink: &mut dyn PacketSink,
) -> Result<u32> {
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

    let frames_hint = track.num_frames;
    let mut rate = 0u32;
    let mut channels = 0usize;
    let mut frames = 0u64;
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
        if channels == 0 {
            rate = spec.rate();
            channels = n_ch;
            // The header's length, when it passed the limits above.
            let hint = frames_hint.filter(|f| f.saturating_mul(n_ch as u64) <= limits.max_samples);
            sink.start(rate, n_ch, hint);
        } else if n_ch != channels || spec.rate() != rate {
            return Err(AudioError::Decode {
                path,
                reason: "the channel layout or rate changes mid-stream".into(),
            });
        }
        // Checked before the packet is kept, so a stream whose header does not state its
        // length never holds more than the limit.
        let after = frames + (buf.samples_interleaved() / n_ch) as u64;
        let samples = after.saturating_mul(n_ch as u64);
        if samples > limits.max_samples {
            return Err(AudioError::TooManySamples {
                path,
                samples,
                limit: limits.max_samples,
            });
        }
        if rate > 0 && after as f64 / rate as f64 > limits.max_seconds {
            return Err(AudioError::TooLong {
                path,
                seconds: after as f64 / rate as f64,
                limit: limits.max_seconds,
            });
        }
        interleaved.resize(buf.samples_interleaved(), 0.0);
        buf.copy_to_slice_interleaved(&mut interleaved);
        if let Some(i) = interleaved.iter().position(|s| !s.is_finite()) {
            return Err(AudioError::Decode {
                path,
                reason: format!(
                    "sample {} of channel {} is not a finite number (NaN or infinite)",
                    frames + (i / n_ch) as u64,
                    i % n_ch
                ),
            });
        }
        sink.packet(&interleaved, n_ch);
        frames = after;
    }
    if frames == 0 || rate == 0 {
        return Err(AudioError::Empty { path });
    }
    Ok(rate)
}
