//! Render one library song per style straight through the synthesizer (no diffusion) to
//! `out/audition-<style>.wav`, printing level figures and decode speed. For listening checks.
use std::time::Instant;

use demon_sketch::composer::{SongSpec, compose};
use demon_sketch::layout::{CHANNELS, SAMPLE_RATE};
use demon_sketch::{Style, synth};

fn main() {
    std::fs::create_dir_all("out").expect("out dir");
    let seconds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    for style in Style::ALL {
        let spec = SongSpec {
            style,
            bpm: style.default_bpm(),
            tonic: 9,
            minor: style.default_minor(),
            seed: 1,
            frames: seconds * 25,
        };
        let song = compose(spec);
        let t0 = Instant::now();
        let [l, r] = synth::render(&song.latent, 0);
        let dt = t0.elapsed().as_secs_f64();
        let peak = l.iter().chain(&r).fold(0f32, |m, x| m.max(x.abs()));
        let rms =
            (l.iter().chain(&r).map(|x| (x * x) as f64).sum::<f64>() / (2 * l.len()) as f64).sqrt();
        println!(
            "{:>14}: {} frames, decode {:.3} s ({:.0}x real time), peak {:.3}, rms {:.3} ({:.1} dBFS)",
            style.name(),
            song.latent.len() / CHANNELS,
            dt,
            seconds as f64 / dt,
            peak,
            rms,
            20.0 * rms.log10()
        );
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let name = format!("out/audition-{}.wav", style.name().replace(' ', "-"));
        let mut w = hound::WavWriter::create(&name, spec).expect("wav");
        for (a, b) in l.iter().zip(&r) {
            w.write_sample((a * 32767.0) as i16).expect("write");
            w.write_sample((b * 32767.0) as i16).expect("write");
        }
        w.finalize().expect("finalize");
    }
}
