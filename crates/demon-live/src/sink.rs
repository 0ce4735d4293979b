//! Where played audio goes: the null sink (no sound card: servers, CI), a WAV recorder of what
//! was played, and the system audio device through cpal when one exists.
//!
//! The runner hands each sink the block of audio it played this tick, inside the real-time
//! section (`crate::rt`): sinks must not allocate in [`AudioSink::play`]. The device sink passes
//! the block to the audio callback through a wait-free ring buffer; the callback's body,
//! [`fill_output`], never locks, allocates or logs.

use std::path::Path;

use demon_audio::{WavFormat, WavWriter};

use crate::error::{SessionError, SessionResult};

/// A consumer of played audio blocks (planar stereo).
pub trait AudioSink: Send {
    fn name(&self) -> &str;
    /// Take one block. Runs in the real-time part of a tick: no allocation on success.
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
/// (see `RunOptions::realtime`), so this sink is "clock-paced" by the session.
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

/// Writes what was played to a 16-bit or 32-bit-float WAV file as it plays, through
/// demon-audio's crash-safe [`WavWriter`]: a recording cut short by a crash plays up to the
/// last second written.
pub struct WavRecorder {
    writer: WavWriter,
}

impl WavRecorder {
    pub fn create(path: &Path, sample_rate: u32, float: bool) -> SessionResult<Self> {
        let format = if float {
            WavFormat::Float32
        } else {
            WavFormat::Pcm16
        };
        let writer = WavWriter::create(path, sample_rate, 2, format)
            .map_err(|e| SessionError::io(path, e))?;
        Ok(Self { writer })
    }

    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    pub fn seconds(&self) -> f64 {
        self.writer.seconds()
    }

    /// What the file's `LIST/INFO` chunk says (written when the recording finishes).
    pub fn set_info(&mut self, info: demon_audio::WavInfo) {
        self.writer.set_info(info);
    }
}

impl AudioSink for WavRecorder {
    fn name(&self) -> &str {
        "wav"
    }
    fn play(&mut self, block: &[Vec<f32>; 2]) -> SessionResult<()> {
        let r = self.writer.append(block);
        r.map_err(|e| crate::rt::permit_alloc(|| SessionError::io(self.writer.path(), e)))
    }
    fn finish(&mut self) -> SessionResult<()> {
        let path = self.writer.path().to_path_buf();
        self.writer.finish().map_err(|e| SessionError::io(&path, e))
    }
}

/// The audio callback's body: fill `out` (interleaved) from the ring, silence for what the
/// ring does not hold yet. Never locks, allocates or logs; callable without a device.
pub fn fill_output(ring: &mut rtrb::Consumer<f32>, out: &mut [f32]) {
    crate::rt::no_alloc(|| {
        let n = ring.slots().min(out.len());
        if let Ok(chunk) = ring.read_chunk(n) {
            let (a, b) = chunk.as_slices();
            out[..a.len()].copy_from_slice(a);
            out[a.len()..a.len() + b.len()].copy_from_slice(b);
            chunk.commit_all();
        }
        out[n..].fill(0.0);
    })
}

/// Queue as much of `block[.][from..]` (planar stereo) as the ring has room for, interleaved;
/// returns the frames queued. Never allocates.
pub fn queue_block(ring: &mut rtrb::Producer<f32>, block: &[Vec<f32>; 2], from: usize) -> usize {
    let n = block[0].len().saturating_sub(from);
    let take = (ring.slots() / 2).min(n);
    if take == 0 {
        return 0;
    }
    match ring.write_chunk_uninit(take * 2) {
        Ok(chunk) => {
            let frames = block[0][from..from + take]
                .iter()
                .zip(&block[1][from..from + take]);
            chunk.fill_from_iter(frames.flat_map(|(l, r)| [*l, *r]));
            take
        }
        Err(_) => 0,
    }
}

#[cfg(feature = "audio-device")]
pub mod device {
    //! The system output device through cpal, fed by a wait-free SPSC ring.

    use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

    use super::{AudioSink, fill_output, queue_block};
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

    // The runner thread owns the sink: it must be `Send`, and is without any `unsafe impl`
    // (cpal's `Stream` is `Send`; the ring's producer too).
    const _: () = {
        const fn assert_send<T: Send>() {}
        assert_send::<DeviceSink>();
    };

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
                move |out: &mut [f32], _| fill_output(&mut consumer, out),
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
            let mut written = 0;
            // Wait (off the audio thread) until the device has consumed enough.
            while written < block[0].len() {
                let n = queue_block(&mut self.producer, block, written);
                if n == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                written += n;
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
        assert!((r.seconds() - 120.0 / 48_000.0).abs() < 1e-12);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 120 * 4);
        assert_eq!(u32::from_le_bytes(bytes[40..44].try_into().unwrap()), 480);
        assert_eq!(i16::from_le_bytes(bytes[44..46].try_into().unwrap()), 16384);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn the_callback_plays_what_was_queued_then_silence() {
        let (mut tx, mut rx) = rtrb::RingBuffer::<f32>::new(64);
        let block = [vec![0.1, 0.2, 0.3], vec![-0.1, -0.2, -0.3]];
        assert_eq!(queue_block(&mut tx, &block, 1), 2);
        let mut out = [9.0f32; 8];
        fill_output(&mut rx, &mut out);
        assert_eq!(out, [0.2, -0.2, 0.3, -0.3, 0.0, 0.0, 0.0, 0.0]);
        // A full ring takes what fits.
        let (mut tx, _rx) = rtrb::RingBuffer::<f32>::new(4);
        assert_eq!(queue_block(&mut tx, &block, 0), 2);
        assert_eq!(queue_block(&mut tx, &block, 2), 0);
    }
}
