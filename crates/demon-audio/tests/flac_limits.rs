//! Small files that decode to a great deal of audio (issue 15's blow-ups): a 500 KB FLAC of
//! 600 s of 8-channel 96 kHz silence is refused from its header, and the same stream without
//! a stated length is refused at the sample limit with the memory it used bounded by that
//! limit, not by the file's length. Peak heap use is measured by a counting allocator (this
//! test binary's own; the other test here allocates well under a megabyte).

#[path = "support/flac.rs"]
mod flac;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use demon_audio::{AudioError, LoadLimits, decode_bytes, decode_bytes_stereo};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap bytes above what was live before `f`, and its result.
fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (PEAK.load(Ordering::Relaxed) - base, out)
}

const MB: usize = 1 << 20;

#[test]
fn a_tiny_flac_of_endless_audio_is_refused_at_the_sample_limit_in_bounded_memory() {
    let limits = LoadLimits::default();
    let frames = 600 * 96_000;
    let stated = flac::constant_flac(96_000, 8, frames, 0, true);
    assert!(stated.len() < 600_000, "{} bytes", stated.len());

    // The header states 460.8 M samples: refused before decoding, naming the limit.
    let t0 = Instant::now();
    let (peak, e) = peak_of(|| decode_bytes_stereo(stated.clone(), "silence.flac", limits, 48_000));
    let e = e.unwrap_err();
    match &e {
        AudioError::TooManySamples { samples, limit, .. } => {
            assert_eq!(*samples, frames * 8);
            assert_eq!(*limit, limits.max_samples);
        }
        other => panic!("not a sample-limit refusal: {other}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("460800000 samples")
            && text.contains(&format!("limit {}", limits.max_samples)),
        "{text}"
    );
    assert!(t0.elapsed().as_secs_f64() < 1.0, "{:?}", t0.elapsed());
    assert!(peak < 4 * MB, "refusing from the header took {peak} bytes");
    // The planar decode (demon inspect) refuses it the same way.
    let e = decode_bytes(stated, "silence.flac", limits).unwrap_err();
    assert!(matches!(e, AudioError::TooManySamples { .. }), "{e}");

    // Without a stated length the decoder finds out by decoding: it stops at the limit. The
    // stereo decode holds only 48 kHz stereo (a quarter of the limit's samples here, plus
    // growth room); decoding everything first would have held 460.8 M samples (1.8 GB).
    let streamed = flac::constant_flac(96_000, 8, frames, 0, false);
    let (peak, e) =
        peak_of(|| decode_bytes_stereo(streamed.clone(), "silence.flac", limits, 48_000));
    let e = e.unwrap_err();
    match &e {
        AudioError::TooManySamples { samples, limit, .. } => {
            assert!(
                *samples > *limit && *samples <= limit + 8 * 4096,
                "{samples}"
            );
        }
        other => panic!("not a sample-limit refusal: {other}"),
    }
    // The limit's 115.2 M samples over 8 channels are 14.4 M frames at 96 kHz, 7.2 M stereo
    // frames at 48 kHz: 57.6 MB of f32. Bound: twice that (vector growth).
    let bound = limits.max_samples as usize;
    eprintln!(
        "stereo decode to the limit: peak {:.1} MB",
        peak as f64 / MB as f64
    );
    assert!(peak < bound, "peak {} MB over {} MB", peak / MB, bound / MB);
    // The planar decode keeps every channel at 96 kHz, still only up to the limit.
    let (peak, e) = peak_of(|| decode_bytes(streamed, "silence.flac", limits));
    assert!(matches!(e.unwrap_err(), AudioError::TooManySamples { .. }));
    let bound = 2 * 4 * limits.max_samples as usize + 8 * MB; // f32 samples, Vec doubling
    eprintln!(
        "planar decode to the limit: peak {:.1} MB",
        peak as f64 / MB as f64
    );
    assert!(peak < bound, "peak {} MB over {} MB", peak / MB, bound / MB);
}

#[test]
fn constant_flac_files_decode_to_their_value() {
    // The encoder the test above relies on makes valid FLAC (also checked by hand with sox).
    let f = flac::constant_flac(44_100, 2, 44_100 * 3 + 17, 1000, true);
    let d = decode_bytes(f, "dc.flac", LoadLimits::default()).unwrap();
    assert_eq!(
        (d.sample_rate, d.channels.len(), d.frames()),
        (44_100, 2, 44_100 * 3 + 17)
    );
    let v = 1000.0 / 32768.0;
    assert!(d.channels.iter().flatten().all(|s| (s - v).abs() < 1e-6));
    let f = flac::constant_flac(48_000, 1, 10_000, -5000, false);
    let a = decode_bytes_stereo(f, "mono.flac", LoadLimits::default(), 48_000).unwrap();
    assert_eq!(a.frames(), 10_000);
    assert_eq!(a.channels[0], a.channels[1]);
    assert!(
        a.channels[0]
            .iter()
            .all(|s| (s + 5000.0 / 32768.0).abs() < 1e-6)
    );
}
