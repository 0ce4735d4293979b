//! Windowed decode (the paper's mechanism 4, demon.md §9).
//!
//! Only the window the listener is about to hear is decoded: `keep` frames starting at the
//! decode target (playhead + lead), plus the codec's measured receptive field on each side,
//! gathered cyclically so a loop's tail gives context to its head. The kept samples are trimmed
//! out and patched into the loop buffer. A per-frame record of which latent each frame of the
//! loop holds lets an unchanged latent skip decoding entirely.

use candle_core::Tensor;
use demon_engine::{Codec, ReceptiveField};

use crate::loopbuf::LoopBuffer;

/// One decoded window, ready to patch.
pub struct DecodedWindow {
    pub start_frame: usize,
    pub frames: usize,
    /// Planar audio of the kept frames.
    pub audio: Vec<Vec<f32>>,
}

/// Schedules and runs windowed decodes for one song.
pub struct WindowedDecoder {
    pub field: ReceptiveField,
    pub keep_frames: usize,
    hop: usize,
    /// Version of the latent whose audio each frame of the loop holds (0 = none yet).
    frame_version: Vec<u64>,
}

impl WindowedDecoder {
    pub fn new(field: ReceptiveField, keep_frames: usize, hop: usize, song_frames: usize) -> Self {
        Self {
            field,
            keep_frames: keep_frames.max(1),
            hop,
            frame_version: vec![0; song_frames],
        }
    }

    pub fn song_frames(&self) -> usize {
        self.frame_version.len()
    }

    /// Forget what the loop holds (after a source change or a full replacement by `version`).
    pub fn mark_all(&mut self, version: u64) {
        self.frame_version.iter_mut().for_each(|v| *v = version);
    }

    /// The first frame, scanning `n` frames from `start` and wrapping inside `[lo, hi)`, that does
    /// not hold `version` yet.
    pub fn stale_from(
        &self,
        start: usize,
        n: usize,
        version: u64,
        (lo, hi): (usize, usize),
    ) -> Option<usize> {
        let span = hi.saturating_sub(lo);
        if span == 0 || start < lo || start >= hi {
            return None;
        }
        (0..n.min(span))
            .map(|i| lo + (start - lo + i) % span)
            .find(|&f| self.frame_version[f] != version)
    }

    /// The latent frames `[start − before, start + keep + after)`, gathered cyclically.
    fn gather(
        &self,
        latent: &Tensor,
        start: usize,
        keep: usize,
    ) -> candle_core::Result<(Tensor, i64)> {
        let t = latent.dim(1)? as i64;
        let lo = start as i64 - self.field.before as i64;
        let hi = (start + keep + self.field.after) as i64;
        let idx: Vec<u32> = (lo..hi).map(|f| f.rem_euclid(t) as u32).collect();
        let contiguous = idx.windows(2).all(|w| w[1] == w[0] + 1);
        let window = if contiguous {
            latent.narrow(1, idx[0] as usize, idx.len())?
        } else {
            let ids = Tensor::from_vec(idx.clone(), idx.len(), latent.device())?;
            latent.index_select(&ids, 1)?
        };
        Ok((window, lo))
    }

    /// Decode `keep` frames at `start` of `latent` (`[1, T, C]`).
    pub fn decode(
        &self,
        codec: &mut dyn Codec,
        latent: &Tensor,
        start: usize,
        keep: usize,
    ) -> demon_engine::Result<DecodedWindow> {
        let (window, first) = self.gather(latent, start, keep)?;
        let before = self.field.before;
        let audio = codec.decode_kept(&window, first, before..before + keep)?;
        Ok(DecodedWindow {
            start_frame: start,
            frames: keep,
            audio: audio.channels,
        })
    }

    /// Bring the frames at the decode target up to `version`: decode the next window starting at
    /// the first stale frame within `keep` frames of `target_frame`, patch it into `buffer` and
    /// return it; `None` when nothing near the target is stale (the latent did not change: no
    /// decode at all).
    ///
    /// `latent` covers the song frames `[chunk.0, chunk.0 + chunk.1)` (the whole song, or the
    /// sliding window of a long one); `region` is the playing region in frames (the loop band or
    /// the whole song). Windows never cross the end of the region or of the chunk; the wrapped
    /// remainder is decoded on a later tick, anchored at the region's start.
    #[allow(clippy::too_many_arguments)]
    pub fn update_chunk(
        &mut self,
        codec: &mut dyn Codec,
        latent: &Tensor,
        chunk: (usize, usize),
        version: u64,
        target_frame: usize,
        region: (usize, usize),
        buffer: &mut LoopBuffer,
    ) -> demon_engine::Result<Option<DecodedWindow>> {
        let t = self.song_frames();
        let (offset, len) = chunk;
        let lo = region.0.max(offset);
        let hi = region.1.min(offset + len).min(t);
        if hi <= lo {
            return Ok(None);
        }
        let target = if target_frame < lo || target_frame >= hi {
            lo
        } else {
            target_frame
        };
        let Some(start) = self.stale_from(target, self.keep_frames, version, (lo, hi)) else {
            return Ok(None);
        };
        let keep = self.keep_frames.min(hi - start).max(1);
        let mut w = self.decode(codec, latent, start - offset, keep)?;
        w.start_frame = start;
        buffer.patch(start * self.hop, &w.audio);
        for f in start..start + keep {
            self.frame_version[f] = version;
        }
        Ok(Some(w))
    }
}
