//! Where played audio goes: the null sink (no sound card: servers, CI), a WAV recorder of what
//! was played, and the system audio device through cpal when one exists.
//!
//! The runner hands each sink the block of audio it played this tick. The device sink passes it
//! to the audio callback through a wait-free ring buffer: the callback never locks, allocates
//! or logs.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{SessionError, SessionResult};

/// A consumer of played audio blocks (planar stereo).
pub trait AudioSink: Send {
    fn name(&self) -> &str;
    fn play(&mut self, block: &[Vec<f32>; 2]) -> SessionResult<()>;
    /// Finish (close files); called once at the end.
    fn finish(&mut self) -> SessionResult<()> {
        Ok(())
    }
    /// Samples that can be queued before `play` would have to wait (device sinks); `None` for
    /// sinks that never apply backpressure.
    fn room(&self) -> Option<usize> {
        None
    }
}

/// Discards audio, counting it. With no sound card the runner paces itself to the wall clock
/// (see `SessionConfig::realtime`), so this sink is "clock-paced" by the session.
#[derive(Default)]
pub struct NullSink {
    pub samples: u64,
}

impl AudioSink for NullSink {
    fn name(&self) -> &str {
        "null"
    }
    fn play(&mut self, block: &[Vec<f32>; 2]) -> SessionResult<()> {
        self.samples += block[0].len() as u64;
        Ok(())
    }
}

/// Writes what was played to a 16-bit or 32-bit-float WAV file, streaming.
pub struct WavRecorder {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    float: bool,
    frames: u64,
    sample_rate: u32,
}

impl WavRecorder {
    pub fn create(path: &Path, sample_rate: u32, float: bool) -> SessionResult<Self> {
        let file = File::create(path).map_err(|e| SessionError::io(path, e))?;
        let mut rec = Self {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(file)),
            float,
            frames: 0,
            sample_rate,
        };
        rec.write_header()?;
        Ok(rec)
    }

    fn write_header(&mut self) -> SessionResult<()> {
        let (bits, tag): (u16, u16) = if self.float { (32, 3) } else { (16, 1) };
        let block = 2 * bits as u32 / 8;
        let data = (self.frames * block as u64).min(u32::MAX as u64 - 64) as u32;
        let sr = self.sample_rate;
        let out = self.out.as_mut().ok_or_else(|| finished(&self.path))?;
        let mut h = Vec::with_capacity(44);
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&(36 + data).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&tag.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&sr.to_le_bytes());
        h.extend_from_slice(&(sr * block).to_le_bytes());
        h.extend_from_slice(&(block as u16).to_le_bytes());
        h.extend_from_slice(&bits.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data.to_le_bytes());
        let io = |e| SessionError::io(&self.path, e);
        out.seek(SeekFrom::Start(0)).map_err(io)?;
        out.write_all(&h).map_err(io)?;
        out.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn seconds(&self) -> f64 {
        self.frames as f64 / self.sample_rate as f64
    }
}

impl AudioSink for WavRecorder {
    fn name(&self) -> &str {
        "wav"
    }
    fn play(&mut self, block: &[Vec<f32>; 2]) -> SessionResult<()> {
        let float = self.float;
        let out = self.out.as_mut().ok_or_else(|| finished(&self.path))?;
        let mut bytes = Vec::with_capacity(block[0].len() * 8);
        for i in 0..block[0].len() {
            for ch in block {
                let s = ch[i];
                if float {
                    bytes.extend_from_slice(&s.to_le_bytes());
                } else {
                    bytes.extend_from_slice(
                        &((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes(),
                    );
                }
            }
        }
        out.write_all(&bytes)
            .map_err(|e| SessionError::io(&self.path, e))?;
        self.frames += block[0].len() as u64;
        Ok(())
    }
    fn finish(&mut self) -> SessionResult<()> {
        if self.out.is_none() {
            return Ok(());
        }
        self.write_header()?;
        if let Some(mut out) = self.out.take() {
            out.flush().map_err(|e| SessionError::io(&self.path, e))?;
        }
        Ok(())
    }
}

fn finished(path: &Path) -> SessionError {
    SessionError::io(path, "the recorder is already finished")
}

impl Drop for WavRecorder {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(feature = "audio-device")]
pub mod device {
    //! The system output device through cpal, fed by a wait-free SPSC ring.

    use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

    use super::AudioSink;
    use crate::error::{SessionError, SessionResult};

    fn device_error(problem: impl std::fmt::Display) -> SessionError {
        SessionError::Io {
            path: "audio device".into(),
            problem: problem.to_string(),
        }
    }

    /// Plays through the default output device.
    pub struct DeviceSink {
        producer: rtrb::Producer<f32>,
        _stream: cpal::Stream,
        name: String,
    }

    // The stream handle is only kept alive here, never used across threads.
    unsafe impl Send for DeviceSink {}

    /// Open the default output device at 48 kHz stereo f32, or explain why not.
    pub fn open_device(sample_rate: u32) -> SessionResult<DeviceSink> {
        let host = cpal::default_host();
        let device = host
            .default_output_device()
            .ok_or_else(|| device_error("no audio output device"))?;
        let config = device
            .default_output_config()
            .map_err(|e| device_error(format!("no usable output configuration: {e}")))?;
        if config.channels() < 2 {
            return Err(device_error("the output device is not stereo"));
        }
        let mut stream_config: cpal::StreamConfig = config.into();
        stream_config.sample_rate = sample_rate;
        stream_config.channels = 2;
        // One second of interleaved stereo.
        let (producer, mut consumer) = rtrb::RingBuffer::<f32>::new(sample_rate as usize * 2);
        let stream = device
            .build_output_stream(
                stream_config,
                move |out: &mut [f32], _| {
                    // Real-time callback: no locks, no allocation, no logging.
                    let n = consumer.slots().min(out.len());
                    if let Ok(chunk) = consumer.read_chunk(n) {
                        let (a, b) = chunk.as_slices();
                        out[..a.len()].copy_from_slice(a);
                        out[a.len()..a.len() + b.len()].copy_from_slice(b);
                        chunk.commit_all();
                    }
                    for s in &mut out[n..] {
                        *s = 0.0;
                    }
                },
                |_err| {},
                None,
            )
            .map_err(|e| device_error(format!("cannot open the output stream: {e}")))?;
        stream
            .play()
            .map_err(|e| device_error(format!("cannot start the output stream: {e}")))?;
        let name = device
            .description()
            .map(|d| d.to_string())
            .unwrap_or_else(|_| "audio device".into());
        Ok(DeviceSink {
            producer,
            _stream: stream,
            name,
        })
    }

    impl AudioSink for DeviceSink {
        fn name(&self) -> &str {
            &self.name
        }
        fn play(&mut self, block: &[Vec<f32>; 2]) -> SessionResult<()> {
            let n = block[0].len();
            let mut written = 0;
            // Wait (off the audio thread) until the device has consumed enough.
            while written < n {
                let room = self.producer.slots() / 2;
                if room == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    continue;
                }
                let take = room.min(n - written);
                if let Ok(mut chunk) = self.producer.write_chunk_uninit(take * 2) {
                    let (a, b) = chunk.as_mut_slices();
                    for (k, slot) in a.iter_mut().chain(b.iter_mut()).enumerate() {
                        slot.write(block[k % 2][written + k / 2]);
                    }
                    unsafe { chunk.commit_all() };
                }
                written += take;
            }
            Ok(())
        }
        fn room(&self) -> Option<usize> {
            Some(self.producer.slots() / 2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_recorder_writes_a_valid_file() {
        let path = std::env::temp_dir().join(format!("demon-rec-{}.wav", std::process::id()));
        let mut r = WavRecorder::create(&path, 48_000, false).unwrap();
        r.play(&[vec![0.5; 100], vec![-0.5; 100]]).unwrap();
        r.play(&[vec![0.0; 20], vec![0.0; 20]]).unwrap();
        r.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 120 * 4);
        assert_eq!(u32::from_le_bytes(bytes[40..44].try_into().unwrap()), 480);
        assert_eq!(i16::from_le_bytes(bytes[44..46].try_into().unwrap()), 16384);
    }
}
