//! Decode scheduling and playback: which window of the loop to decode this tick (the playhead
//! plus the decode lead, wrapped inside the playing region), the decode itself (the first
//! generation of a song fills the whole loop, later ones patch windows) and the block of audio
//! played per tick. The lead itself is `crate::lead`.
//!
//! Playing is the real-time part of a tick: the block is read from the loop into buffers
//! allocated once, under the debug-build no-allocation check (`crate::rt`).

use std::sync::Arc;

use super::{LiveCore, Patch, Playback, StreamingState};
use crate::decode::WindowedDecoder;
use crate::error::SessionResult;
use crate::loopbuf::LoopBuffer;

impl StreamingState for Playback {
    /// Forget what the loop holds: nothing decoded, nothing filled yet.
    fn reset_state(&mut self) {
        self.decoder.mark_all(0);
        self.filled = false;
    }
}

impl Playback {
    pub(super) fn new(
        decoder: WindowedDecoder,
        buffer: LoopBuffer,
        lead_frames: u32,
        samples_per_tick: usize,
        playing: bool,
    ) -> Self {
        Self {
            decoder,
            buffer,
            filled: false,
            replaced_between_ticks: false,
            lead_frames,
            playing,
            samples_per_tick,
            played: [
                Vec::with_capacity(samples_per_tick),
                Vec::with_capacity(samples_per_tick),
            ],
        }
    }

    /// A song of `frames` latent frames: a silent loop of that length, nothing decoded.
    pub(super) fn resize(&mut self, frames: usize, hop: usize) {
        self.decoder =
            WindowedDecoder::new(self.decoder.field, self.decoder.keep_frames, hop, frames);
        self.buffer = LoopBuffer::new(self.buffer.sample_rate, frames * hop);
        self.reset_state();
        self.replaced_between_ticks = true;
    }

    /// Replace the whole loop with `channels`, marking every frame as holding `version`.
    pub(super) fn replace_all(&mut self, channels: [Vec<f32>; 2], version: u64) {
        self.buffer.replace(channels);
        self.decoder.mark_all(version);
        self.replaced_between_ticks = true;
    }

    /// The decode target (a song frame) and the playing region in frames: `lead` frames after
    /// the first frame boundary at or after the playhead, wrapped inside the region (the loop
    /// band, or the whole song). So the target starts at least `lead` whole frames ahead of
    /// the playhead, exactly that many when the playhead sits on a boundary (ticks of one
    /// frame from a start at 0 always do).
    pub(super) fn decode_target(
        &self,
        lead: u32,
        song_frames: usize,
        hop: usize,
    ) -> (usize, (usize, usize)) {
        let playhead = self.buffer.playhead();
        let (lo, hi) = self.buffer.region();
        let region = (lo / hop, hi.div_ceil(hop).min(song_frames));
        let span = (region.1 - region.0).max(1);
        let target =
            region.0 + (playhead.div_ceil(hop).saturating_sub(region.0) + lead as usize) % span;
        (target, region)
    }

    /// Read this tick's block from the loop at the playhead (nothing when stopped). Returns the
    /// samples played. Does not allocate.
    pub(super) fn play(&mut self) -> usize {
        let (playing, n) = (self.playing, self.samples_per_tick);
        let (buffer, played) = (&mut self.buffer, &mut self.played);
        crate::rt::no_alloc(|| {
            if playing {
                buffer.read(n, played);
            } else {
                played.iter_mut().for_each(Vec::clear);
            }
        });
        self.played[0].len()
    }
}

impl LiveCore {
    /// Bring the loop at the decode target up to the newest latent: the first generation of a
    /// song without a source fills the whole loop; later ones patch the stale window near the
    /// target. Returns the patches (what the loop holds there now) and whether the whole loop
    /// was replaced.
    pub(super) fn decode(
        &mut self,
        target: usize,
        region: (usize, usize),
    ) -> SessionResult<(Vec<Patch>, bool)> {
        let mut patches = Vec::new();
        let mut replaced = false;
        let Some(latent) = self.harvest.latest.clone() else {
            return Ok((patches, replaced));
        };
        let hop = self.facts.hop_samples;
        let pb = &mut self.playback;
        if !pb.filled && self.controls.source().is_none() && self.song.window == self.song.frames {
            let audio = self.backend.codec.decode(&latent, 0)?;
            let mut ch = audio.channels.into_iter();
            let l = ch.next().unwrap_or_default();
            let r = ch.next().unwrap_or_else(|| l.clone());
            pb.replace_all([l, r], self.harvest.version);
            replaced = true;
        } else if let Some(w) = pb.decoder.update_chunk(
            self.backend.codec.as_mut(),
            &latent,
            (self.song.chunk_offset, self.song.window),
            self.harvest.version,
            target,
            region,
            &mut pb.buffer,
        )? {
            // Clients get exactly what the loop holds now (the crossfaded patch), so their
            // copy matches the server's, edges included.
            let start = w.start_frame * hop;
            let n = w.frames * hop;
            patches.push((start as u64, Arc::new(pb.buffer.copy_range(start, n))));
        }
        pb.filled = true;
        Ok((patches, replaced))
    }
}
