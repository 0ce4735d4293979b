//! A FLAC encoder for constant signals (silence and DC), enough to make the small files that
//! decode to a great deal of audio: every subframe is a CONSTANT subframe (FLAC format
//! specification, RFC 9639 §9.2 frame header, §9.2.1 CONSTANT), so 600 s of 8-channel 96 kHz
//! silence is about half a megabyte. Shared by the demon-audio and demon-server tests.

/// Blocks of this many frames (the encoder default of the reference `flac`).
const BLOCK_FRAMES: u64 = 4096;

/// A FLAC stream of `frames` frames of `channels` (1..=8) channels at `rate` Hz, 16-bit, every
/// sample `value`. `state_length`: whether STREAMINFO states the total length (a streamed
/// encoder leaves it 0, so a decoder learns the length only by decoding).
pub fn constant_flac(
    rate: u32,
    channels: u8,
    frames: u64,
    value: i16,
    state_length: bool,
) -> Vec<u8> {
    assert!((1..=8).contains(&channels) && rate < (1 << 20) && frames < (1 << 36));
    let mut out = b"fLaC".to_vec();
    // STREAMINFO, the last metadata block: flag bit + type 0, length 34.
    out.extend_from_slice(&[0x80, 0, 0, 34]);
    let block = BLOCK_FRAMES as u16;
    out.extend_from_slice(&block.to_be_bytes()); // min block size
    out.extend_from_slice(&block.to_be_bytes()); // max block size
    out.extend_from_slice(&[0; 6]); // min and max frame sizes unknown
    let total = if state_length { frames } else { 0 };
    // 20 bits rate, 3 bits channels − 1, 5 bits bits-per-sample − 1, 36 bits total frames.
    let packed: u64 =
        ((rate as u64) << 44) | (((channels - 1) as u64) << 41) | (15u64 << 36) | total;
    out.extend_from_slice(&packed.to_be_bytes());
    out.extend_from_slice(&[0; 16]); // MD5 unknown
    let mut number = 0u64;
    let mut done = 0u64;
    while done < frames {
        let n = BLOCK_FRAMES.min(frames - done);
        let start = out.len();
        // Sync code, fixed block size; block size from the end of the header (code 0b0111),
        // rate from STREAMINFO (0); independent channels, 16 bits (0b100).
        out.extend_from_slice(&[0xFF, 0xF8, 0x70, ((channels - 1) << 4) | 0b1000]);
        out.extend_from_slice(&utf8_number(number));
        out.extend_from_slice(&((n - 1) as u16).to_be_bytes());
        out.push(crc8(&out[start..]));
        for _ in 0..channels {
            // Zero bit, CONSTANT type 0b000000, no wasted bits; then the value.
            out.push(0);
            out.extend_from_slice(&value.to_be_bytes());
        }
        let crc = crc16(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
        number += 1;
        done += n;
    }
    out
}

/// The frame number coded like UTF-8 (up to 31 bits).
fn utf8_number(n: u64) -> Vec<u8> {
    match n {
        0..0x80 => vec![n as u8],
        0x80..0x800 => vec![0xC0 | (n >> 6) as u8, 0x80 | (n & 0x3F) as u8],
        0x800..0x10000 => vec![
            0xE0 | (n >> 12) as u8,
            0x80 | ((n >> 6) & 0x3F) as u8,
            0x80 | (n & 0x3F) as u8,
        ],
        _ => vec![
            0xF0 | (n >> 18) as u8,
            0x80 | ((n >> 12) & 0x3F) as u8,
            0x80 | ((n >> 6) & 0x3F) as u8,
            0x80 | (n & 0x3F) as u8,
        ],
    }
}

/// CRC-8, polynomial x⁸ + x² + x + 1, initial 0 (the frame header's).
fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in bytes {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// CRC-16, polynomial x¹⁶ + x¹⁵ + x² + 1, initial 0 (the whole frame's).
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
    }
    crc
}
