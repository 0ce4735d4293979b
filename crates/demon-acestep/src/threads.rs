//! The thread setting the backend needs on a CPU, applied by the library itself (not only by the
//! `demon` binary): candle's element-wise pool (`CANDLE_NUM_THREADS`) on one thread. Its workers
//! spin between operations, which cost 5–7× on the small per-slot tensors of the engine's solver
//! (docs/performance.md); the heavy kernels of this crate use their own threads (rayon's pool),
//! so they keep every core.
//!
//! candle reads the variable once, when its pool first starts, and a process's environment may
//! only be changed while no other thread can read it. So [`apply`] sets it only when it is unset
//! and this process has a single thread (nothing can race the write); otherwise it leaves the
//! environment alone and says so. Every backend constructor of this crate calls it first, which
//! covers a program that builds its model before starting threads; a program that starts threads
//! first sets `CANDLE_NUM_THREADS=1` itself (as the `demon` binary does).

use std::sync::OnceLock;

/// What [`apply`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CandleThreads {
    /// `CANDLE_NUM_THREADS` was already set (by the user, or by the `demon` binary): kept.
    AlreadySet,
    /// The library set it to 1.
    SetToOne,
    /// Unset, and left unset because other threads were running (or the thread count could not
    /// be read): candle's pool uses every core.
    LeftUnset,
}

/// Apply the setting once per process (later calls return the first outcome).
pub fn apply() -> CandleThreads {
    static OUTCOME: OnceLock<CandleThreads> = OnceLock::new();
    *OUTCOME.get_or_init(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
            return CandleThreads::AlreadySet;
        }
        if process_threads() != Some(1) {
            return CandleThreads::LeftUnset;
        }
        // SAFETY: this process has exactly one thread (checked just above, and this one cannot
        // start another meanwhile), so no other thread can read or write the environment
        // concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
        CandleThreads::SetToOne
    })
}

/// Threads of this process (`Threads:` of `/proc/self/status`; Linux, `None` elsewhere).
pub fn process_threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the outcome, the environment says the same; applied once. (The single-thread
    /// path runs in `tests/threads.rs`, a test without the threaded harness.)
    #[test]
    fn the_outcome_matches_the_environment() {
        let outcome = apply();
        let var = std::env::var("CANDLE_NUM_THREADS").ok();
        match outcome {
            CandleThreads::AlreadySet => assert!(var.is_some()),
            CandleThreads::SetToOne => assert_eq!(var.as_deref(), Some("1")),
            CandleThreads::LeftUnset => assert!(var.is_none()),
        }
        assert_eq!(apply(), outcome, "applied once");
        assert!(process_threads().is_some_and(|n| n >= 1));
    }
}
