//! Binary audio frames and the per-client f16 delta mirror (docs/protocol.md).

use half::f16;

/// Frame kinds.
pub const KIND_FULL: u8 = 0;
pub const KIND_SLICE: u8 = 1;
pub const KIND_DELTA: u8 = 2;
pub const HEADER_BYTES: usize = 28;

/// Header fields of an audio frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameHeader {
    pub kind: u8,
    pub channels: u8,
    pub start_sample: u32,
    pub num_samples: u32,
    pub tick: u32,
    pub tick_ms: f32,
    pub decode_ms: f32,
    pub generations: u32,
}

impl FrameHeader {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.kind);
        out.push(self.channels);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.start_sample.to_le_bytes());
        out.extend_from_slice(&self.num_samples.to_le_bytes());
        out.extend_from_slice(&self.tick.to_le_bytes());
        out.extend_from_slice(&self.tick_ms.to_le_bytes());
        out.extend_from_slice(&self.decode_ms.to_le_bytes());
        out.extend_from_slice(&self.generations.to_le_bytes());
    }

    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        if b.len() < HEADER_BYTES {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let f32_at = |i: usize| f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(FrameHeader {
            kind: b[0],
            channels: b[1],
            start_sample: u32_at(4),
            num_samples: u32_at(8),
            tick: u32_at(12),
            tick_ms: f32_at(16),
            decode_ms: f32_at(20),
            generations: u32_at(24),
        })
    }
}

/// What one client holds, as the server knows it exactly.
pub struct Mirror {
    channels: [Vec<f32>; 2],
}

impl Mirror {
    /// A full-buffer frame; the mirror becomes the f16-rounded buffer.
    #[allow(clippy::needless_range_loop)] // parallel arrays indexed together
    pub fn full_frame(buffer: &[Vec<f32>; 2], header: FrameHeader) -> (Mirror, Vec<u8>) {
        let n = buffer[0].len();
        let mut out = Vec::with_capacity(HEADER_BYTES + n * 4);
        FrameHeader {
            kind: KIND_FULL,
            channels: 2,
            start_sample: 0,
            num_samples: n as u32,
            ..header
        }
        .write(&mut out);
        let mut mirror = [Vec::with_capacity(n), Vec::with_capacity(n)];
        for i in 0..n {
            for c in 0..2 {
                let h = f16::from_f32(buffer[c][i]);
                out.extend_from_slice(&h.to_bits().to_le_bytes());
                mirror[c].push(h.to_f32());
            }
        }
        (Mirror { channels: mirror }, out)
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
    pub fn delta_frame(
        &mut self,
        start: usize,
        audio: &[Vec<f32>],
        header: FrameHeader,
    ) -> Vec<u8> {
        let n = audio.first().map_or(0, |c| c.len());
        let len = self.len().max(1);
        let mut out = Vec::with_capacity(HEADER_BYTES + n * 4);
        FrameHeader {
            kind: KIND_DELTA,
            channels: 2,
            start_sample: start as u32,
            num_samples: n as u32,
            ..header
        }
        .write(&mut out);
        for i in 0..n {
            let j = (start + i) % len;
            for c in 0..2 {
                let src = audio.get(c).or(audio.first()).map_or(0.0, |a| a[i]);
                let d = f16::from_f32(src - self.channels[c][j]);
                out.extend_from_slice(&d.to_bits().to_le_bytes());
                self.channels[c][j] += d.to_f32();
            }
        }
        out
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
        KIND_FULL => {
            *buffer = [
                (0..n).map(|i| val(2 * i)).collect(),
                (0..n).map(|i| val(2 * i + 1)).collect(),
            ];
        }
        KIND_SLICE | KIND_DELTA => {
            let len = buffer[0].len().max(1);
            for i in 0..n {
                let j = (h.start_sample as usize + i) % len;
                for c in 0..2 {
                    if h.kind == KIND_DELTA {
                        buffer[c][j] += val(2 * i + c);
                    } else {
                        buffer[c][j] = val(2 * i + c);
                    }
                }
            }
        }
        _ => return None,
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_client_and_mirror_identical() {
        let head = FrameHeader {
            kind: 0,
            channels: 2,
            start_sample: 0,
            num_samples: 0,
            tick: 1,
            tick_ms: 2.0,
            decode_ms: 3.0,
            generations: 4,
        };
        let buf: [Vec<f32>; 2] = [
            (0..100).map(|i| (i as f32 * 0.1).sin()).collect(),
            vec![0.25; 100],
        ];
        let (mut mirror, full) = Mirror::full_frame(&buf, head);
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
            let f = mirror.delta_frame(start, &patch, head);
            let h = apply_frame(&mut client, &f).unwrap();
            assert_eq!((h.kind, h.tick, h.tick_ms), (KIND_DELTA, 1, 2.0));
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
    }
}
