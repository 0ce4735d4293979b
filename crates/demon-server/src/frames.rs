//! Binary audio frames (the header is `protocol::FrameHeader`) and the per-client f16 delta
//! mirror (docs/protocol.md "Deltas keep client and server identical").

use demon_live::loopbuf::LoopSnapshot;
use half::f16;

use crate::protocol::{FrameError, FrameHeader, FrameKind, HEADER_BYTES};

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

/// Apply a frame to a client-side buffer (what a client does; used by tests).
#[allow(clippy::needless_range_loop)] // parallel arrays indexed together
pub fn apply_frame(buffer: &mut [Vec<f32>; 2], frame: &[u8]) -> Option<FrameHeader> {
    let h = FrameHeader::parse(frame)?;
    let n = h.num_samples as usize;
    let body = &frame[HEADER_BYTES..];
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
}
