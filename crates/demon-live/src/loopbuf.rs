//! The song-length loop buffer the listener hears, with a playhead and an optional loop band.
//!
//! Windows of fresh audio are patched in with short linear crossfades at both edges (25 ms), so
//! a patch never clicks against what was there.
//!
//! The samples live in [`ChunkedAudio`]: fixed-size chunks behind `Arc`s. A snapshot for a
//! client ([`LoopBuffer::snapshot`]) clones one pointer, whatever the song's length, and a patch
//! made while snapshots are out copies only the chunks it touches (`Arc::make_mut`). So neither
//! a client connecting nor a buffer replacement copies the whole loop on the runner thread.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{SessionError, SessionResult};

/// Crossfade length at each edge of a patch: 25 ms at 48 kHz, or a quarter of the patch.
pub const CROSSFADE_SAMPLES: usize = 1200;

/// Samples per chunk of [`ChunkedAudio`] (a power of two: indexing is a shift and a mask).
pub const CHUNK_SAMPLES: usize = 4096;
const CHUNK_SHIFT: u32 = CHUNK_SAMPLES.trailing_zeros();

type Chunk = [f32; CHUNK_SAMPLES];

/// Planar stereo audio in copy-on-write chunks. Cloning is O(1) (one `Arc`); writing to a
/// clone copies only the chunks written (and, once, the table of chunk pointers: 8 bytes per
/// 4096 samples).
#[derive(Clone, Debug)]
pub struct ChunkedAudio {
    len: usize,
    /// `[channel][chunk]`; the last chunk is zero-padded past `len`.
    chunks: Arc<[Vec<Arc<Chunk>>; 2]>,
    /// Bytes copied because a chunk or the chunk table was shared when written (instrumentation
    /// for tests: a snapshot must not make the runner copy the loop).
    copied_bytes: u64,
}

/// An immutable view of the whole loop at one tick (what a client starts from).
pub type LoopSnapshot = ChunkedAudio;

impl ChunkedAudio {
    /// `len` samples of silence per channel.
    pub fn zeros(len: usize) -> Self {
        let n = len.div_ceil(CHUNK_SAMPLES);
        let zero = Arc::new([0.0f32; CHUNK_SAMPLES]);
        Self {
            len,
            chunks: Arc::new([vec![zero.clone(); n], vec![zero; n]]),
            copied_bytes: 0,
        }
    }

    /// From planar channels; a mono input (or a missing second channel) is used for both.
    /// Channels shorter than the first are zero-padded.
    pub fn from_planar(channels: &[Vec<f32>]) -> Self {
        let len = channels.first().map_or(0, Vec::len);
        let build = |src: &[f32]| -> Vec<Arc<Chunk>> {
            (0..len.div_ceil(CHUNK_SAMPLES))
                .map(|k| {
                    let mut c = [0.0f32; CHUNK_SAMPLES];
                    let lo = (k * CHUNK_SAMPLES).min(src.len());
                    let hi = ((k + 1) * CHUNK_SAMPLES).min(src.len()).min(len);
                    c[..hi.saturating_sub(lo)].copy_from_slice(&src[lo..hi.max(lo)]);
                    Arc::new(c)
                })
                .collect()
        };
        let left = channels.first().map_or(&[][..], |c| c.as_slice());
        let right = channels.get(1).map_or(left, |c| c.as_slice());
        Self {
            len,
            chunks: Arc::new([build(left), build(right)]),
            copied_bytes: 0,
        }
    }

    /// Samples per channel.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One sample; `channel` 0 is left, 1 right. Panics past the end, like slice indexing.
    pub fn sample(&self, channel: usize, i: usize) -> f32 {
        assert!(i < self.len, "sample {i} beyond {} samples", self.len);
        self.chunks[channel][i >> CHUNK_SHIFT][i & (CHUNK_SAMPLES - 1)]
    }

    /// The samples of one channel in order, chunk by chunk (the last trimmed to `len`).
    pub fn runs(&self, channel: usize) -> impl Iterator<Item = &[f32]> + '_ {
        let len = self.len;
        self.chunks[channel].iter().enumerate().map(move |(k, c)| {
            let n = (len - k * CHUNK_SAMPLES).min(CHUNK_SAMPLES);
            &c[..n]
        })
    }

    /// The whole audio as plain planar vectors (a full copy: for files, not for the tick path).
    pub fn to_planar(&self) -> [Vec<f32>; 2] {
        let one = |c: usize| -> Vec<f32> {
            let mut v = Vec::with_capacity(self.len);
            for r in self.runs(c) {
                v.extend_from_slice(r);
            }
            v
        };
        [one(0), one(1)]
    }

    /// `n` samples of both channels from `start`, wrapping around the end.
    pub fn copy_range(&self, start: usize, n: usize) -> Vec<Vec<f32>> {
        (0..2)
            .map(|c| {
                let mut out = Vec::with_capacity(n);
                self.for_each_run(start, n, |at, run_len| {
                    let (k, o) = (at >> CHUNK_SHIFT, at & (CHUNK_SAMPLES - 1));
                    out.extend_from_slice(&self.chunks[c][k][o..o + run_len]);
                });
                out
            })
            .collect()
    }

    /// Bytes copied so far because shared storage was written (see the type's docs).
    pub fn copied_bytes(&self) -> u64 {
        self.copied_bytes
    }

    /// Whether two values share all their storage (a snapshot of an unchanged buffer does).
    pub fn shares_storage_with(&self, other: &ChunkedAudio) -> bool {
        Arc::ptr_eq(&self.chunks, &other.chunks)
    }

    /// Calls `f(index, run_len)` for the runs of `[start, start + n)` (wrapping at `len`) that
    /// stay inside one chunk each.
    fn for_each_run(&self, start: usize, n: usize, mut f: impl FnMut(usize, usize)) {
        if self.len == 0 {
            return;
        }
        let mut at = start % self.len;
        let mut left = n;
        while left > 0 {
            let to_chunk_end = CHUNK_SAMPLES - (at & (CHUNK_SAMPLES - 1));
            let run = left.min(to_chunk_end).min(self.len - at);
            f(at, run);
            left -= run;
            at += run;
            if at == self.len {
                at = 0;
            }
        }
    }

    /// Rewrite `[start, start + n)` (wrapping) of both channels: `f(channel, i, &mut sample)`
    /// with `i` counted from `start`. Shared chunks are copied first, only those touched.
    pub fn write_with(
        &mut self,
        start: usize,
        n: usize,
        mut f: impl FnMut(usize, usize, &mut f32),
    ) {
        let mut runs = Vec::new();
        self.for_each_run(start, n, |at, len| runs.push((at, len)));
        if runs.is_empty() {
            return;
        }
        if Arc::get_mut(&mut self.chunks).is_none() {
            self.copied_bytes +=
                (2 * self.chunks[0].len() * std::mem::size_of::<Arc<Chunk>>()) as u64;
        }
        let table = Arc::make_mut(&mut self.chunks);
        for (c, chunks) in table.iter_mut().enumerate() {
            let mut i = 0;
            for &(at, len) in &runs {
                let (k, o) = (at >> CHUNK_SHIFT, at & (CHUNK_SAMPLES - 1));
                if Arc::get_mut(&mut chunks[k]).is_none() {
                    self.copied_bytes += std::mem::size_of::<Chunk>() as u64;
                }
                let chunk = Arc::make_mut(&mut chunks[k]);
                for s in &mut chunk[o..o + len] {
                    f(c, i, s);
                    i += 1;
                }
            }
        }
    }
}

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
    audio: ChunkedAudio,
    playhead: usize,
    band: Option<LoopBand>,
}

impl LoopBuffer {
    pub fn new(sample_rate: u32, samples: usize) -> Self {
        Self {
            sample_rate,
            audio: ChunkedAudio::zeros(samples),
            playhead: 0,
            band: None,
        }
    }

    pub fn len(&self) -> usize {
        self.audio.len()
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

    /// The whole loop as it is now, without copying it: later patches copy the chunks they
    /// touch instead.
    pub fn snapshot(&self) -> LoopSnapshot {
        let mut s = self.audio.clone();
        s.copied_bytes = 0;
        s
    }

    /// One sample (`channel` 0 left, 1 right).
    pub fn sample(&self, channel: usize, i: usize) -> f32 {
        self.audio.sample(channel, i)
    }

    /// `n` samples of both channels from `start`, wrapping around the end of the song.
    pub fn copy_range(&self, start: usize, n: usize) -> Vec<Vec<f32>> {
        self.audio.copy_range(start, n)
    }

    /// Bytes patches had to copy because snapshots shared the storage they wrote.
    pub fn copied_bytes(&self) -> u64 {
        self.audio.copied_bytes()
    }

    /// Replace the whole content (a new source or a full decode), keeping the playhead when it
    /// still fits.
    pub fn replace(&mut self, channels: [Vec<f32>; 2]) {
        let n = channels[0].len();
        self.audio = ChunkedAudio::from_planar(&channels);
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
    pub fn set_band(&mut self, band: Option<LoopBand>) -> SessionResult<()> {
        if let Some(b) = band {
            if b.start >= b.end || b.end > self.len() {
                return Err(SessionError::bad_value(
                    "loop band",
                    format!(
                        "[{}, {}) samples is empty or beyond the song ({} samples)",
                        b.start,
                        b.end,
                        self.len()
                    ),
                ));
            }
            if self.playhead < b.start || self.playhead >= b.end {
                self.playhead = b.start;
            }
        }
        self.band = band;
        Ok(())
    }

    pub fn seek(&mut self, sample: usize) -> SessionResult<()> {
        if sample >= self.len() {
            return Err(SessionError::bad_value(
                "seek",
                format!(
                    "sample {sample} is beyond the song ({} samples)",
                    self.len()
                ),
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
            out[0].push(self.audio.sample(0, p));
            out[1].push(self.audio.sample(1, p));
            p += 1;
        }
        self.playhead = if p >= hi { lo } else { p };
    }

    /// Write `audio` (planar; a mono patch is used for both channels) at `start` with linear
    /// crossfades at both edges, wrapping around the end of the song.
    pub fn patch(&mut self, start: usize, audio: &[Vec<f32>]) {
        let n = audio.first().map_or(0, |c| c.len());
        if n == 0 || self.is_empty() {
            return;
        }
        let xf = CROSSFADE_SAMPLES.min(n / 4).max(1);
        let left = &audio[0];
        let right = audio.get(1).unwrap_or(left);
        self.audio.write_with(start, n, |c, i, held| {
            // A channel shorter than the first leaves the rest of its region as it was.
            let Some(&s) = (if c == 0 { left } else { right }).get(i) else {
                return;
            };
            let w = if i < xf {
                (i + 1) as f32 / (xf + 1) as f32
            } else if i >= n - xf {
                (n - i) as f32 / (xf + 1) as f32
            } else {
                1.0
            };
            *held = if w == 1.0 { s } else { *held + (s - *held) * w };
        });
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
        let c = b.snapshot().to_planar()[0].clone();
        // 3-sample fades (12 / 4) at both edges, full value in between, wrapped past the end.
        assert!((c[14] - 0.25).abs() < 1e-6 && (c[16] - 0.75).abs() < 1e-6);
        assert_eq!(c[17], 1.0);
        assert_eq!(c[2], 1.0);
        assert!((c[5] - 0.25).abs() < 1e-6);
        assert_eq!(c[6], 0.0);
    }

    /// A plain-vector reference of `patch`, to check the chunked storage against.
    #[allow(clippy::needless_range_loop)] // `i` indexes the patch and, wrapped, the buffer
    fn reference_patch(buf: &mut [Vec<f32>; 2], start: usize, audio: &[Vec<f32>]) {
        let n = audio[0].len();
        let len = buf[0].len();
        let xf = CROSSFADE_SAMPLES.min(n / 4).max(1);
        for (c, ch) in buf.iter_mut().enumerate() {
            for i in 0..n {
                let w = if i < xf {
                    (i + 1) as f32 / (xf + 1) as f32
                } else if i >= n - xf {
                    (n - i) as f32 / (xf + 1) as f32
                } else {
                    1.0
                };
                let j = (start + i) % len;
                let s = audio[c][i];
                ch[j] = if w == 1.0 { s } else { ch[j] + (s - ch[j]) * w };
            }
        }
    }

    #[test]
    fn chunked_storage_matches_plain_vectors_across_chunk_edges_and_the_wrap() {
        // A length that is not a multiple of the chunk, patches that straddle chunk edges, span
        // several chunks and wrap around the end.
        let len = 3 * CHUNK_SAMPLES + 1234;
        let init: [Vec<f32>; 2] = [
            (0..len).map(|i| (i as f32 * 0.01).sin()).collect(),
            (0..len).map(|i| (i as f32 * 0.02).cos()).collect(),
        ];
        let mut b = LoopBuffer::new(48_000, len);
        b.replace(init.clone());
        let mut want = init;
        for (k, &(start, n)) in [
            (CHUNK_SAMPLES - 10, 40),
            (len - 300, 900),
            (5, 2 * CHUNK_SAMPLES + 77),
            (len - 1, 8),
        ]
        .iter()
        .enumerate()
        {
            let patch: Vec<Vec<f32>> = (0..2)
                .map(|c| (0..n).map(|i| (k * 7 + c + i) as f32 * 1e-3).collect())
                .collect();
            b.patch(start, &patch);
            reference_patch(&mut want, start, &patch);
        }
        assert_eq!(b.snapshot().to_planar(), want);
        assert_eq!(b.copy_range(len - 3, 5)[1], {
            let w = &want[1];
            vec![w[len - 3], w[len - 2], w[len - 1], w[0], w[1]]
        });
        assert_eq!(b.sample(1, 7), want[1][7]);
        // Reading runs through the same storage.
        let mut out = [Vec::new(), Vec::new()];
        b.seek(len - 2).unwrap();
        b.read(4, &mut out);
        assert_eq!(
            out[0],
            vec![want[0][len - 2], want[0][len - 1], want[0][0], want[0][1]]
        );
    }

    #[test]
    fn a_snapshot_copies_nothing_and_a_patch_after_it_copies_only_the_chunks_it_touches() {
        let len = 60 * 48_000; // a 60 s loop: 2 × 11.5 MB of samples
        let mut b = LoopBuffer::new(48_000, len);
        b.replace([vec![0.5; len], vec![-0.5; len]]);
        let chunks = len.div_ceil(CHUNK_SAMPLES);
        // Without snapshots, patches write in place.
        b.patch(1000, &[vec![1.0; 20_000], vec![1.0; 20_000]]);
        assert_eq!(b.copied_bytes(), 0);
        // A snapshot shares everything.
        let snap = b.snapshot();
        let again = b.snapshot();
        assert!(snap.shares_storage_with(&again));
        assert_eq!(b.copied_bytes(), 0);
        // A patch of 20 000 samples starting mid-chunk touches 6 chunks per channel: it copies
        // those and the pointer table once, and the snapshot keeps the old samples.
        b.patch(1000, &[vec![0.25; 20_000], vec![0.25; 20_000]]);
        let touched = (1000 + 20_000usize).div_ceil(CHUNK_SAMPLES) - 1000 / CHUNK_SAMPLES;
        let table = 2 * chunks * std::mem::size_of::<Arc<Chunk>>();
        let chunk_bytes = std::mem::size_of::<Chunk>();
        assert_eq!(b.copied_bytes() as usize, table + 2 * touched * chunk_bytes);
        assert!(
            (b.copied_bytes() as usize) < len * 4 / 20,
            "under 5 % of one channel of the loop"
        );
        assert_eq!(snap.sample(0, 5000), 1.0);
        assert_eq!(b.sample(0, 5000), 0.25);
        // Once the snapshots are gone, writing is in place again.
        drop((snap, again));
        let before = b.copied_bytes();
        b.patch(30_000, &[vec![0.1; 9000], vec![0.1; 9000]]);
        assert_eq!(b.copied_bytes(), before);
    }
}
