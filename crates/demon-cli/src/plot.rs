//! A small PNG line plot for `demon bench --plot`: tick time and generations per second against
//! depth, two panels side by side. Self-contained: an RGB canvas, a 5×7 bitmap font and a PNG
//! writer with stored (uncompressed) deflate blocks.

use std::path::Path;

use anyhow::{Context, Result};

const W: usize = 900;
const H: usize = 420;

struct Canvas {
    px: Vec<[u8; 3]>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![[255, 255, 255]; W * H],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            self.px[y as usize * W + x as usize] = c;
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], width: i64) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (
                (x0 + (x1 - x0) * t).round() as i64,
                (y0 + (y1 - y0) * t).round() as i64,
            );
            for dx in -(width / 2)..=(width / 2) {
                for dy in -(width / 2)..=(width / 2) {
                    self.set(x + dx, y + dy, c);
                }
            }
        }
    }

    fn dot(&mut self, (x, y): (f64, f64), c: [u8; 3]) {
        for dx in -4..=4i64 {
            for dy in -4..=4i64 {
                if dx * dx + dy * dy <= 16 {
                    self.set(x.round() as i64 + dx, y.round() as i64 + dy, c);
                }
            }
        }
    }

    /// Text at 2× scale of the 5×7 font, top-left at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = glyph(ch);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        for sx in 0..2 {
                            for sy in 0..2 {
                                self.set(
                                    x + i as i64 * 12 + col * 2 + sx,
                                    y + row as i64 * 2 + sy,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [30, 1, 1, 14, 1, 1, 30],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        '/' => [1, 1, 2, 4, 8, 16, 16],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [30, 17, 17, 17, 17, 17, 30],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 25, 21, 19, 17, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 10, 4, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        _ => [0; 7],
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_bytes(c: &Canvas) -> Vec<u8> {
    let mut raw = Vec::with_capacity(H * (1 + W * 3));
    for y in 0..H {
        raw.push(0);
        for x in 0..W {
            raw.extend_from_slice(&c.px[y * W + x]);
        }
    }
    // zlib stream of stored blocks.
    let mut z = vec![0x78, 0x01];
    for (i, block) in raw.chunks(65_535).enumerate() {
        let last = (i + 1) * 65_535 >= raw.len();
        z.push(last as u8);
        z.extend_from_slice(&(block.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(block.len() as u16)).to_le_bytes());
        z.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(W as u32).to_be_bytes());
    ihdr.extend_from_slice(&(H as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    out
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 || v == 0.0 {
        format!("{v:.2}")
    } else {
        // Three significant digits for small rates (0.0427 generations/s).
        let digits = (2 - v.abs().log10().floor() as i32).clamp(3, 8) as usize;
        format!("{v:.digits$}")
    }
}

/// One panel: `points` (depth, value) in the box `[x0, x0 + w] × [y0, y0 + h]`.
#[allow(clippy::too_many_arguments)]
fn panel(
    c: &mut Canvas,
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    title: &str,
    points: &[(f64, f64)],
    color: [u8; 3],
) {
    let grey = [150, 150, 150];
    let black = [20, 20, 20];
    c.text(x0 as i64, (y0 - 34.0) as i64, title, black);
    c.line((x0, y0 + h), (x0 + w, y0 + h), black, 1);
    c.line((x0, y0), (x0, y0 + h), black, 1);
    if points.is_empty() {
        return;
    }
    let xmax = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymax = points.iter().map(|p| p.1).fold(1e-9, f64::max) * 1.15;
    let to = |(x, y): (f64, f64)| (x0 + w * (x / xmax), y0 + h - h * (y / ymax));
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let (_, y) = to((0.0, v));
        c.line(
            (x0 - 4.0, y),
            (x0 + w, y),
            if k == 0 { black } else { [225, 225, 225] },
            1,
        );
        c.text(4.max((x0 - 70.0) as i64), (y - 6.0) as i64, &fmt(v), grey);
    }
    for &(d, _) in points {
        let (x, _) = to((d, 0.0));
        c.line((x, y0 + h), (x, y0 + h + 5.0), black, 1);
        c.text(
            (x - 5.0) as i64,
            (y0 + h + 10.0) as i64,
            &format!("{d}"),
            black,
        );
    }
    c.text(
        (x0 + w / 2.0 - 30.0) as i64,
        (y0 + h + 30.0) as i64,
        "DEPTH",
        black,
    );
    for pair in points.windows(2) {
        c.line(to(pair[0]), to(pair[1]), color, 3);
    }
    for &p in points {
        c.dot(to(p), color);
        let (x, y) = to(p);
        let label = fmt(p.1);
        // Glyphs advance 12 px: a label that would run off the picture goes left of its point.
        let width = 12.0 * label.chars().count() as f64;
        let lx = if x + 6.0 + width > W as f64 {
            x - 6.0 - width
        } else {
            x + 6.0
        };
        c.text(lx as i64, (y - 22.0) as i64, &label, color);
    }
}

/// Write the plot of tick time and generations per second against depth.
pub fn write_depth_plot(
    path: &Path,
    tick_ms: &[(f64, f64)],
    gen_per_s: &[(f64, f64)],
    caption: &str,
) -> Result<()> {
    let mut c = Canvas::new();
    panel(
        &mut c,
        90.0,
        70.0,
        330.0,
        260.0,
        "TICK TIME (MS)",
        tick_ms,
        [200, 60, 40],
    );
    panel(
        &mut c,
        540.0,
        70.0,
        330.0,
        260.0,
        "GENERATIONS PER SECOND",
        gen_per_s,
        [40, 90, 200],
    );
    c.text(90, 392, caption, [60, 60, 60]);
    std::fs::write(path, png_bytes(&c))
        .with_context(|| format!("writing the plot `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_valid_png() {
        let p = std::env::temp_dir().join(format!("demon-plot-{}.png", std::process::id()));
        write_depth_plot(
            &p,
            &[(1.0, 5.0), (2.0, 9.0), (4.0, 17.0), (8.0, 33.0)],
            &[(1.0, 20.0), (2.0, 22.0), (4.0, 24.0), (8.0, 30.0)],
            "TEST",
        )
        .unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..8], &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        assert_eq!(&b[12..16], b"IHDR");
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(&b[b.len() - 8..b.len() - 4], b"IEND");
    }
}
