//! Binary audio frames (the header is `protocol::FrameHeader`), the f16 delta mirror
//! (docs/protocol.md "Deltas keep client and server identical") and the [`FrameLog`] every
//! client shares: one mirror, each frame encoded once, whatever the number of clients.

use std::collections::VecDeque;

use bytes::Bytes;
use demon_live::loopbuf::LoopSnapshot;
use half::f16;

use crate::protocol::{FLAG_ZSTD, FrameError, FrameHeader, FrameKind, HEADER_BYTES};

/// `frame` (a delta: header, then f16 samples) with its samples as one zstd frame at level 1
/// and [`FLAG_ZSTD`] set in the header; the frame as it is if compressing fails.
pub fn zstd_delta(frame: &[u8]) -> Bytes {
    let Some((head, samples)) = frame.split_at_checked(HEADER_BYTES) else {
        return Bytes::copy_from_slice(frame);
    };
    let Ok(packed) = zstd::bulk::compress(samples, 1) else {
        return Bytes::copy_from_slice(frame);
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + packed.len());
    out.extend_from_slice(head);
    let flags = FrameHeader::flags(head).unwrap_or(0) | FLAG_ZSTD;
    FrameHeader::set_flags(&mut out, flags);
    out.extend_from_slice(&packed);
    Bytes::from(out)
}

/// What a frame reports besides its samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FrameMeta {
    pub tick: u64,
    pub tick_ms: f32,
    pub decode_ms: f32,
    pub generations: u64,
}

impl FrameMeta {
    fn header(&self, kind: FrameKind, start: u64, n: u64) -> Result<FrameHeader, FrameError> {
        FrameHeader::new(
            kind,
            start,
            n,
            self.tick,
            self.tick_ms,
            self.decode_ms,
            self.generations,
        )
    }
}

/// What one client holds, as the server knows it exactly.
pub struct Mirror {
    channels: [Vec<f32>; 2],
}

impl Mirror {
    /// A full-buffer frame; the mirror becomes the f16-rounded buffer.
    pub fn full_frame(
        buffer: &LoopSnapshot,
        meta: FrameMeta,
    ) -> Result<(Mirror, Vec<u8>), FrameError> {
        let n = buffer.len();
        let header = meta.header(FrameKind::Full, 0, n as u64)?;
        let mut out = Vec::with_capacity(HEADER_BYTES + n * 4);
        header.write(&mut out);
        let mut mirror = [Vec::with_capacity(n), Vec::with_capacity(n)];
        for (left, right) in buffer.runs(0).zip(buffer.runs(1)) {
            for (l, r) in left.iter().zip(right) {
                for (c, v) in [*l, *r].into_iter().enumerate() {
                    let h = f16::from_f32(v);
                    out.extend_from_slice(&h.to_bits().to_le_bytes());
                    mirror[c].push(h.to_f32());
                }
            }
        }
        Ok((Mirror { channels: mirror }, out))
    }

    /// A full-buffer frame of what the mirror holds, rounded to f16 (a client that takes it
    /// holds the mirror to within f16 rounding; later deltas do not grow the difference).
    pub fn encode_full(&self, meta: FrameMeta) -> Result<Vec<u8>, FrameError> {
        let n = self.len();
        let header = meta.header(FrameKind::Full, 0, n as u64)?;
        let mut out = Vec::with_capacity(HEADER_BYTES + n * 4);
        header.write(&mut out);
        for (l, r) in self.channels[0].iter().zip(&self.channels[1]) {
            for v in [*l, *r] {
                out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.channels[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn channels(&self) -> &[Vec<f32>; 2] {
        &self.channels
    }

    /// A delta frame moving the client's copy of `[start, start + n)` (wrapping) to `audio`.
    /// On an error the mirror is unchanged (nothing was sent).
    pub fn delta_frame(
        &mut self,
        start: u64,
        audio: &[Vec<f32>],
        meta: FrameMeta,
    ) -> Result<Vec<u8>, FrameError> {
        let n = audio.first().map_or(0, |c| c.len());
        let header = meta.header(FrameKind::Delta, start, n as u64)?;
        let len = self.len().max(1);
        let mut out = Vec::with_capacity(HEADER_BYTES + n * 4);
        header.write(&mut out);
        let start = (start % len as u64) as usize;
        for i in 0..n {
            let j = (start + i) % len;
            for c in 0..2 {
                let src = audio.get(c).or(audio.first()).map_or(0.0, |a| a[i]);
                let held = self.channels[c].get_mut(j);
                let base = held.as_deref().copied().unwrap_or(0.0);
                let d = f16::from_f32(src - base);
                out.extend_from_slice(&d.to_bits().to_le_bytes());
                if let Some(h) = held {
                    *h += d.to_f32();
                }
            }
        }
        Ok(out)
    }
}

/// What a client needs to hold the shared mirror as of frame `seq`: a full frame, then the
/// deltas after it, in order. Every client that asks before the next frame gets the same bytes.
#[derive(Clone, Debug)]
pub struct CatchUp {
    pub full: Bytes,
    pub deltas: Vec<Bytes>,
    pub seq: u64,
    /// Samples per channel of the loop.
    pub samples: usize,
}

/// The one mirror of the loop that every client holds, and the frames that moved it.
///
/// Frames are numbered: `seq` is the last one made. A client holding the mirror as of frame `s`
/// applies the deltas after `s` and is then identical to it. A full frame is encoded when a
/// client needs one, kept with the deltas after it (at most `max_catch_up` of them) and handed
/// to every client that joins meanwhile: a joining client costs no copy of the loop, and a
/// client that joins while the cached full frame is fresh ends bit-identical to the mirror.
/// One that joins later gets the mirror rounded to f16, which no later delta makes worse.
pub struct FrameLog {
    mirror: Mirror,
    seq: u64,
    tick: u64,
    /// The full frame of the mirror as of frame `.0`.
    full: Option<(u64, Bytes)>,
    /// The deltas after `full`, oldest first.
    since_full: VecDeque<Bytes>,
    max_catch_up: usize,
}

impl FrameLog {
    /// The log of a loop as it is at `tick`; frame 0 is its full frame.
    pub fn new(
        snapshot: &LoopSnapshot,
        tick: u64,
        max_catch_up: usize,
    ) -> Result<Self, FrameError> {
        let mut log = Self {
            mirror: Mirror {
                channels: [Vec::new(), Vec::new()],
            },
            seq: 0,
            tick,
            full: None,
            since_full: VecDeque::new(),
            max_catch_up,
        };
        log.replace(snapshot, tick)?;
        log.seq = 0;
        log.full = log.full.take().map(|(_, f)| (0, f));
        Ok(log)
    }

    /// The loop was replaced (a new source, a new length): the next frame is a full one.
    pub fn replace(&mut self, snapshot: &LoopSnapshot, tick: u64) -> Result<u64, FrameError> {
        let meta = FrameMeta {
            tick,
            ..Default::default()
        };
        let (mirror, full) = Mirror::full_frame(snapshot, meta)?;
        self.mirror = mirror;
        self.seq += 1;
        self.tick = tick;
        self.full = Some((self.seq, Bytes::from(full)));
        self.since_full.clear();
        Ok(self.seq)
    }

    /// A delta frame for fresh audio at `start`; its number and bytes. On an error nothing
    /// changes (no frame was made).
    pub fn delta(
        &mut self,
        start: u64,
        audio: &[Vec<f32>],
        meta: FrameMeta,
    ) -> Result<(u64, Bytes), FrameError> {
        let frame = Bytes::from(self.mirror.delta_frame(start, audio, meta)?);
        self.seq += 1;
        self.tick = meta.tick;
        if self.full.is_some() {
            if self.since_full.len() < self.max_catch_up {
                self.since_full.push_back(frame.clone());
            } else {
                // Older than a catch-up may replay: the next client gets a fresh full frame.
                self.full = None;
                self.since_full.clear();
            }
        }
        Ok((self.seq, frame))
    }

    /// What a joining (or resyncing) client needs; encodes a full frame only when none is kept.
    pub fn catch_up(&mut self) -> Result<CatchUp, FrameError> {
        if self.full.is_none() {
            let meta = FrameMeta {
                tick: self.tick,
                ..Default::default()
            };
            self.full = Some((self.seq, Bytes::from(self.mirror.encode_full(meta)?)));
            self.since_full.clear();
        }
        let full = self
            .full
            .as_ref()
            .map(|(_, f)| f.clone())
            .unwrap_or_default();
        Ok(CatchUp {
            full,
            deltas: self.since_full.iter().cloned().collect(),
            seq: self.seq,
            samples: self.mirror.len(),
        })
    }

    /// The last frame's number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }
}

/// Apply a frame to a client-side buffer (what a client does; used by tests).
#[allow(clippy::needless_range_loop)] // parallel arrays indexed together
pub fn apply_frame(buffer: &mut [Vec<f32>; 2], frame: &[u8]) -> Option<FrameHeader> {
    let h = FrameHeader::parse(frame)?;
    let n = h.num_samples as usize;
    let unpacked;
    let body = if FrameHeader::flags(frame)? & FLAG_ZSTD != 0 {
        unpacked = zstd::bulk::decompress(&frame[HEADER_BYTES..], n * 2 * 2).ok()?;
        &unpacked[..]
    } else {
        &frame[HEADER_BYTES..]
    };
    if body.len() != n * 2 * 2 {
        return None;
    }
    let val =
        |k: usize| f16::from_bits(u16::from_le_bytes([body[2 * k], body[2 * k + 1]])).to_f32();
    match h.kind {
        FrameKind::Full => {
            *buffer = [
                (0..n).map(|i| val(2 * i)).collect(),
                (0..n).map(|i| val(2 * i + 1)).collect(),
            ];
        }
        FrameKind::Slice | FrameKind::Delta => {
            let len = buffer[0].len().max(1);
            for i in 0..n {
                let j = (h.start_sample as usize + i) % len;
                for c in 0..2 {
                    if h.kind == FrameKind::Delta {
                        buffer[c][j] += val(2 * i + c);
                    } else {
                        buffer[c][j] = val(2 * i + c);
                    }
                }
            }
        }
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compressed delta carries the flag and the same header otherwise, is smaller for a
    /// quiet change, and applies to exactly what the plain one gives; a corrupt one is refused.
    #[test]
    fn zstd_deltas_apply_as_the_plain_ones() {
        let meta = FrameMeta {
            tick: 3,
            ..Default::default()
        };
        let n = 4800;
        let quiet: Vec<f32> = (0..n)
            .map(|i| if i % 97 == 0 { 0.25 } else { 0.0 })
            .collect();
        let mut log = FrameLog::new(
            &LoopSnapshot::from_planar(&[vec![0.0; n], vec![0.0; n]]),
            0,
            4,
        )
        .unwrap();
        let (_, plain) = log.delta(100, &[quiet.clone(), quiet], meta).unwrap();
        let plain = plain.to_vec();
        let packed = zstd_delta(&plain);
        assert!(
            packed.len() * 4 < plain.len(),
            "{} vs {} bytes",
            packed.len(),
            plain.len()
        );
        assert_eq!(u16::from_le_bytes([packed[2], packed[3]]), FLAG_ZSTD);
        assert_eq!(packed[..2], plain[..2]);
        assert_eq!(packed[4..HEADER_BYTES], plain[4..HEADER_BYTES]);
        let (mut a, mut b) = ([vec![0.0; n], vec![0.0; n]], [vec![0.0; n], vec![0.0; n]]);
        assert_eq!(apply_frame(&mut a, &plain), apply_frame(&mut b, &packed));
        assert!(
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        assert!(a[0].iter().any(|v| *v != 0.0));
        let mut broken = packed.to_vec();
        broken.truncate(broken.len() - 3);
        assert_eq!(apply_frame(&mut a, &broken), None);
    }

    #[test]
    fn deltas_keep_client_and_mirror_identical() {
        let meta = FrameMeta {
            tick: 1,
            tick_ms: 2.0,
            decode_ms: 3.0,
            generations: 4,
        };
        let buf: [Vec<f32>; 2] = [
            (0..100).map(|i| (i as f32 * 0.1).sin()).collect(),
            vec![0.25; 100],
        ];
        let (mut mirror, full) =
            Mirror::full_frame(&LoopSnapshot::from_planar(&buf), meta).unwrap();
        let mut client = [Vec::new(), Vec::new()];
        assert_eq!(apply_frame(&mut client, &full).unwrap().num_samples, 100);
        assert_eq!(client, *mirror.channels());
        // Many overlapping patches, including one that wraps.
        for k in 0..50 {
            let start = (k * 7) % 100;
            let patch: Vec<Vec<f32>> = (0..2)
                .map(|c| {
                    (0..30)
                        .map(|i| ((k * 31 + i + c) as f32 * 0.037).cos() * 0.8)
                        .collect()
                })
                .collect();
            let f = mirror.delta_frame(start as u64, &patch, meta).unwrap();
            let h = apply_frame(&mut client, &f).unwrap();
            assert_eq!((h.kind, h.tick, h.tick_ms), (FrameKind::Delta, 1, 2.0));
        }
        assert!(
            client == *mirror.channels(),
            "bit-identical after 50 overlapping deltas"
        );
        // And close to the true audio (f16 precision).
        let last: Vec<f32> = (0..30)
            .map(|i| ((49 * 31 + i) as f32 * 0.037).cos() * 0.8)
            .collect();
        for i in 0..30 {
            assert!((client[0][(49 * 7 % 100 + i) % 100] - last[i]).abs() < 1e-3);
        }
        assert!(apply_frame(&mut client, &full[..10]).is_none());
        // A tick past 32 bits is refused and leaves the mirror as it was.
        let before = mirror.channels().clone();
        let late = FrameMeta {
            tick: u32::MAX as u64 + 1,
            ..meta
        };
        assert_eq!(
            mirror.delta_frame(0, &[vec![9.0; 10], vec![9.0; 10]], late),
            Err(FrameError {
                field: "tick",
                value: u32::MAX as u64 + 1
            })
        );
        assert_eq!(*mirror.channels(), before);
    }

    fn patch(k: usize) -> Vec<Vec<f32>> {
        (0..2)
            .map(|c| {
                (0..30)
                    .map(|i| ((k * 17 + i + c) as f32 * 0.051).sin() * 0.9)
                    .collect()
            })
            .collect()
    }

    fn meta(tick: u64) -> FrameMeta {
        FrameMeta {
            tick,
            ..Default::default()
        }
    }

    fn join(log: &mut FrameLog) -> ([Vec<f32>; 2], u64) {
        let c = log.catch_up().unwrap();
        let mut client = [Vec::new(), Vec::new()];
        assert_eq!(
            apply_frame(&mut client, &c.full).unwrap().kind,
            FrameKind::Full
        );
        for d in &c.deltas {
            assert_eq!(apply_frame(&mut client, d).unwrap().kind, FrameKind::Delta);
        }
        assert_eq!(client[0].len(), c.samples);
        (client, c.seq)
    }

    #[test]
    fn one_shared_log_keeps_every_client_with_the_mirror() {
        let buf: [Vec<f32>; 2] = [
            (0..100).map(|i| (i as f32 * 0.1).sin()).collect(),
            vec![0.25; 100],
        ];
        let mut log = FrameLog::new(&LoopSnapshot::from_planar(&buf), 1, 8).unwrap();
        // From the start: the full frame, then every delta.
        let (mut first, seq) = join(&mut log);
        assert_eq!(seq, 0);
        // Joining twice before a frame hands out the very same bytes (one encoding).
        let (a, b) = (log.catch_up().unwrap(), log.catch_up().unwrap());
        assert_eq!(a.full.as_ptr(), b.full.as_ptr());
        let mut late = None;
        for k in 0..20 {
            let (seq, frame) = log
                .delta((k * 7 % 100) as u64, &patch(k), meta(2 + k as u64))
                .unwrap();
            assert_eq!(seq, k as u64 + 1);
            apply_frame(&mut first, &frame).unwrap();
            if let Some((client, _)) = late.as_mut() {
                apply_frame(client, &frame).unwrap();
            }
            if k == 4 {
                // Joins within the catch-up window: the kept full frame plus 5 deltas.
                let c = log.catch_up().unwrap();
                assert_eq!((c.seq, c.deltas.len()), (5, 5));
                late = Some(join(&mut log));
            }
        }
        assert!(
            first == *log.mirror().channels(),
            "bit-identical from the start"
        );
        let (late, _) = late.unwrap();
        assert!(
            late == *log.mirror().channels(),
            "bit-identical after a catch-up"
        );

        // Past the window, a fresh full frame of the mirror: equal to within f16 rounding, and
        // deltas afterwards do not let the difference grow.
        let (mut fresh, seq) = join(&mut log);
        assert_eq!((seq, log.catch_up().unwrap().deltas.len()), (20, 0));
        let gap = |client: &[Vec<f32>; 2], log: &FrameLog| {
            client
                .iter()
                .zip(log.mirror().channels())
                .flat_map(|(c, m)| c.iter().zip(m).map(|(a, b)| (a - b).abs()))
                .fold(0.0f32, f32::max)
        };
        let at_join = gap(&fresh, &log);
        assert!(at_join <= 1.0 / 2048.0, "{at_join}");
        for k in 20..200 {
            let (_, frame) = log
                .delta((k * 13 % 100) as u64, &patch(k), meta(2 + k as u64))
                .unwrap();
            apply_frame(&mut fresh, &frame).unwrap();
            apply_frame(&mut first, &frame).unwrap();
        }
        assert!(first == *log.mirror().channels());
        let after = gap(&fresh, &log);
        // (f32 additions round differently on the two sides: a few ulps over 50 patches each.)
        assert!(after <= at_join + 1e-5, "{at_join} grew to {after}");

        // A replaced loop: a new full frame at once, the new length.
        let seq = log
            .replace(
                &LoopSnapshot::from_planar(&[vec![0.5; 40], vec![0.5; 40]]),
                300,
            )
            .unwrap();
        let c = log.catch_up().unwrap();
        assert_eq!((c.seq, c.samples, c.deltas.len()), (seq, 40, 0));
        assert_eq!(apply_frame(&mut fresh, &c.full).unwrap().tick, 300);
        assert!(fresh == *log.mirror().channels());
    }
}
