//! The real-time sections and their debug-build no-allocation check (nih-plug's
//! `assert_process_allocs` approach, with the `assert_no_alloc` crate).
//!
//! Guarded, because they run at audio rate and must never wait on the allocator:
//! - the sound card's callback body ([`crate::sink::fill_output`]): copy from the wait-free
//!   ring into the device buffer;
//! - the played block of a tick: reading it from the loop buffer into buffers allocated once
//!   (`LiveCore::played`) and handing it to the sinks (null, WAV recorder, device ring).
//!
//! Not guarded, on purpose: the model forward and the codec decode run on candle tensors, which
//! allocate by design (a tick's denoiser call, a window decode), and so do the request and lane
//! built per tick and the event-bus messages; they run on the runner thread, never on the audio
//! callback, which only reads the ring. `docs/architecture.md` lists the same.
//!
//! A binary or test that wants the check installs [`AllocDisabler`] as its global allocator
//! (the `demon` binary does in debug builds). Without it, or in release builds, the guard costs
//! nothing. With it, an allocation inside a guarded section prints a warning and counts a
//! violation ([`violations`]); tests assert that none happened.

/// The checking allocator (debug builds only; release builds compile the check out).
#[cfg(debug_assertions)]
pub use assert_no_alloc::AllocDisabler;

/// Run `f` as a real-time section: in debug builds with [`AllocDisabler`] installed, any
/// allocation inside it is reported and counted.
#[inline]
pub fn no_alloc<T>(f: impl FnOnce() -> T) -> T {
    assert_no_alloc::assert_no_alloc(f)
}

/// Run `f` inside a real-time section with allocation allowed (error paths, which end the
/// section anyway).
#[inline]
pub fn permit_alloc<T>(f: impl FnOnce() -> T) -> T {
    assert_no_alloc::permit_alloc(f)
}

/// Allocations counted inside real-time sections on this thread so far (debug builds).
#[cfg(debug_assertions)]
pub fn violations() -> u32 {
    assert_no_alloc::violation_count()
}

/// Start counting again from zero (debug builds).
#[cfg(debug_assertions)]
pub fn reset_violations() {
    assert_no_alloc::reset_violation_count()
}
