//! Times loading audio files the way a session does: decoding at the file's own rate
//! (`load_file`) then folding to stereo and resampling to 48 kHz (`to_stereo`), and the
//! streaming decode that does both packet by packet (`load_file_stereo`, what uploads and file
//! sources use).
//!
//! `cargo run -p demon-audio --example load_timing -- FILE...`

use std::time::Instant;

use demon_audio::LoadLimits;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        return Err("usage: load_timing FILE...".into());
    }
    for f in files {
        let t0 = Instant::now();
        let decoded = demon_audio::load_file(f.as_ref(), LoadLimits::default())?;
        let decode_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let stereo = decoded.to_stereo(48_000);
        let stereo_s = t1.elapsed().as_secs_f64();
        drop(decoded);
        let t2 = Instant::now();
        let streamed = demon_audio::load_file_stereo(f.as_ref(), LoadLimits::default(), 48_000)?;
        let streamed_s = t2.elapsed().as_secs_f64();
        if streamed.channels != stereo.channels {
            return Err(format!("{f}: the streaming decode differs from to_stereo").into());
        }
        println!(
            "{f}: decode {decode_s:.3} s + to 48 kHz stereo {stereo_s:.3} s; streaming decode to 48 kHz stereo {streamed_s:.3} s ({} frames)",
            stereo.frames()
        );
    }
    Ok(())
}
