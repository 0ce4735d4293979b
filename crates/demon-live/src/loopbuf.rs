//! The song-length loop buffer the listener hears, with a playhead and an optional loop band.
//!
//! Windows of fresh audio are patched in with short linear crossfades at both edges (25 ms), so
//! a patch never clicks against what was there.

use serde::{Deserialize, Serialize};

/// Crossfade length at each edge of a patch: 25 ms at 48 kHz, or a quarter of the patch.
pub const CROSSFADE_SAMPLES: usize = 1200;

/// A loop region in samples, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopBand {
    pub start: usize,
    pub end: usize,
}

/// Planar stereo loop with a playhead.
#[derive(Clone, Debug)]
pub struct LoopBuffer {
    pub sample_rate: u32,
    channels: [Vec<f32>; 2],
    playhead: usize,
    band: Option<LoopBand>,
}

impl LoopBuffer {
    pub fn new(sample_rate: u32, samples: usize) -> Self {
        Self {
            sample_rate,
            channels: [vec![0.0; samples], vec![0.0; samples]],
            playhead: 0,
            band: None,
        }
    }

    pub fn len(&self) -> usize {
        self.channels[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn playhead(&self) -> usize {
        self.playhead
    }

    pub fn band(&self) -> Option<LoopBand> {
        self.band
    }

    pub fn channels(&self) -> &[Vec<f32>; 2] {
        &self.channels
    }

    /// Replace the whole content (a new source or a full decode), keeping the playhead when it
    /// still fits.
    pub fn replace(&mut self, channels: [Vec<f32>; 2]) {
        let n = channels[0].len();
        self.channels = channels;
        if self.playhead >= n {
            self.playhead = 0;
        }
        if let Some(b) = self.band
            && b.end > n
        {
            self.band = None;
        }
    }

    /// Set or clear the loop band; the playhead jumps into a band it is outside of.
    pub fn set_band(&mut self, band: Option<LoopBand>) -> Result<(), String> {
        if let Some(b) = band {
            if b.start >= b.end || b.end > self.len() {
                return Err(format!(
                    "loop band [{}, {}) samples is empty or beyond the song ({} samples)",
                    b.start,
                    b.end,
                    self.len()
                ));
            }
            if self.playhead < b.start || self.playhead >= b.end {
                self.playhead = b.start;
            }
        }
        self.band = band;
        Ok(())
    }

    pub fn seek(&mut self, sample: usize) -> Result<(), String> {
        if sample >= self.len() {
            return Err(format!(
                "seek to sample {sample} is beyond the song ({} samples)",
                self.len()
            ));
        }
        self.playhead = sample;
        Ok(())
    }

    /// The region that plays: the band, or the whole song.
    pub fn region(&self) -> (usize, usize) {
        match self.band {
            Some(b) => (b.start, b.end),
            None => (0, self.len()),
        }
    }

    /// Read `n` samples from the playhead, wrapping inside the playing region, and advance.
    pub fn read(&mut self, n: usize, out: &mut [Vec<f32>; 2]) {
        let (lo, hi) = self.region();
        for o in out.iter_mut() {
            o.clear();
        }
        if hi <= lo {
            return;
        }
        let mut p = self.playhead;
        for _ in 0..n {
            if p >= hi || p < lo {
                p = lo;
            }
            out[0].push(self.channels[0][p]);
            out[1].push(self.channels[1][p]);
            p += 1;
        }
        self.playhead = if p >= hi { lo } else { p };
    }

    /// Write `audio` (planar) at `start` with linear crossfades at both edges, wrapping around
    /// the end of the song.
    pub fn patch(&mut self, start: usize, audio: &[Vec<f32>]) {
        let n = audio.first().map_or(0, |c| c.len());
        let len = self.len();
        if n == 0 || len == 0 {
            return;
        }
        let xf = CROSSFADE_SAMPLES.min(n / 4).max(1);
        for (ch, src) in self
            .channels
            .iter_mut()
            .zip(audio.iter().chain(audio.iter()))
        {
            for (i, s) in src.iter().enumerate() {
                let w = if i < xf {
                    (i + 1) as f32 / (xf + 1) as f32
                } else if i >= n - xf {
                    (n - i) as f32 / (xf + 1) as f32
                } else {
                    1.0
                };
                let j = (start + i) % len;
                ch[j] = if w == 1.0 {
                    *s
                } else {
                    ch[j] + (s - ch[j]) * w
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrap_in_the_song_and_in_the_band() {
        let mut b = LoopBuffer::new(10, 10);
        b.replace([(0..10).map(|i| i as f32).collect(), vec![0.0; 10]]);
        let mut out = [Vec::new(), Vec::new()];
        b.read(4, &mut out);
        assert_eq!(out[0], vec![0.0, 1.0, 2.0, 3.0]);
        b.set_band(Some(LoopBand { start: 2, end: 5 })).unwrap();
        b.read(5, &mut out);
        assert_eq!(
            out[0],
            vec![4.0, 2.0, 3.0, 4.0, 2.0],
            "inside the band already: plays on, then loops"
        );
        b.set_band(Some(LoopBand { start: 6, end: 8 })).unwrap();
        b.read(3, &mut out);
        assert_eq!(
            out[0],
            vec![6.0, 7.0, 6.0],
            "outside the new band: jumps to its start"
        );
        assert!(b.set_band(Some(LoopBand { start: 5, end: 5 })).is_err());
        assert!(b.set_band(Some(LoopBand { start: 0, end: 11 })).is_err());
        assert!(b.seek(10).is_err());
        b.set_band(None).unwrap();
        b.seek(8).unwrap();
        b.read(4, &mut out);
        assert_eq!(out[0], vec![8.0, 9.0, 0.0, 1.0]);
    }

    #[test]
    fn patches_crossfade_and_wrap() {
        let mut b = LoopBuffer::new(10, 20);
        let patch = vec![vec![1.0f32; 12], vec![1.0; 12]];
        b.patch(14, &patch);
        let c = &b.channels()[0];
        // 3-sample fades (12 / 4) at both edges, full value in between, wrapped past the end.
        assert!((c[14] - 0.25).abs() < 1e-6 && (c[16] - 0.75).abs() < 1e-6);
        assert_eq!(c[17], 1.0);
        assert_eq!(c[2], 1.0);
        assert!((c[5] - 0.25).abs() < 1e-6);
        assert_eq!(c[6], 0.0);
    }
}
