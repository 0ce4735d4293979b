//! The sketch latent: 64 channels at 25 Hz whose values are musical parameters.
//!
//! Every channel lives in roughly [−1, 1] so that data and noise have the same scale. Binary
//! facts (a pitch class sounds, an onset happens) are ±1; a mixture of library latents gives
//! values in between, which the synthesizer plays as partial amplitudes. Onset channels carry a
//! companion "phase" channel: where inside the 40 ms frame the hit lands, so any tempo can be
//! played on the 25 Hz grid without jitter.

/// Latent channels.
pub const CHANNELS: usize = 64;
/// Output sample rate.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples per latent frame (48 kHz / 25 Hz), the same hop as ACE-Step's VAE.
pub const HOP: usize = 1920;
/// Latent frames per second.
pub const FPS: f64 = 25.0;

/// Pad/keys chord tones: 12 pitch classes.
pub const CHORD: usize = 0;
/// Bass pitch class: 12 channels.
pub const BASS_PC: usize = 12;
/// Lead pitch class: 12 channels.
pub const LEAD_PC: usize = 24;
/// Lead register: −1 low octave … +1 high octave.
pub const LEAD_OCTAVE: usize = 36;

/// A percussive or note-on voice: its onset channel and the phase channel beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnsetVoice {
    pub onset: usize,
    pub phase: usize,
}

pub const BASS_ON: OnsetVoice = OnsetVoice {
    onset: 37,
    phase: 38,
};
pub const LEAD_ON: OnsetVoice = OnsetVoice {
    onset: 39,
    phase: 40,
};
pub const KICK: OnsetVoice = OnsetVoice {
    onset: 41,
    phase: 42,
};
pub const SNARE: OnsetVoice = OnsetVoice {
    onset: 43,
    phase: 44,
};
pub const HAT: OnsetVoice = OnsetVoice {
    onset: 45,
    phase: 46,
};
pub const OPEN_HAT: OnsetVoice = OnsetVoice {
    onset: 47,
    phase: 48,
};
pub const CLAP: OnsetVoice = OnsetVoice {
    onset: 49,
    phase: 50,
};
pub const STAB: OnsetVoice = OnsetVoice {
    onset: 51,
    phase: 52,
};

/// The drum voices, in the order the synthesizer renders them.
pub const DRUMS: [OnsetVoice; 5] = [KICK, SNARE, HAT, OPEN_HAT, CLAP];

pub const PAD_LEVEL: usize = 53;
pub const BASS_LEVEL: usize = 54;
pub const LEAD_LEVEL: usize = 55;
pub const DRUM_LEVEL: usize = 56;
/// Pad filter brightness.
pub const PAD_BRIGHT: usize = 57;
/// Bass brightness / drive.
pub const BASS_BRIGHT: usize = 58;
/// Lead waveform: −1 sine … 0 square … +1 saw.
pub const LEAD_SHAPE: usize = 59;
pub const STAB_LEVEL: usize = 60;
pub const REVERB: usize = 61;
pub const WIDTH: usize = 62;
/// Sidechain pump depth (ducking of the tonal bus after each kick).
pub const PUMP: usize = 63;

/// Channel names, for inspection and docs.
pub fn channel_name(c: usize) -> String {
    const PC: [&str; 12] = [
        "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
    ];
    match c {
        0..=11 => format!("chord.{}", PC[c]),
        12..=23 => format!("bass.{}", PC[c - 12]),
        24..=35 => format!("lead.{}", PC[c - 24]),
        36 => "lead.octave".into(),
        37 => "bass.onset".into(),
        38 => "bass.phase".into(),
        39 => "lead.onset".into(),
        40 => "lead.phase".into(),
        41 => "kick.onset".into(),
        42 => "kick.phase".into(),
        43 => "snare.onset".into(),
        44 => "snare.phase".into(),
        45 => "hat.onset".into(),
        46 => "hat.phase".into(),
        47 => "open_hat.onset".into(),
        48 => "open_hat.phase".into(),
        49 => "clap.onset".into(),
        50 => "clap.phase".into(),
        51 => "stab.onset".into(),
        52 => "stab.phase".into(),
        53 => "pad.level".into(),
        54 => "bass.level".into(),
        55 => "lead.level".into(),
        56 => "drums.level".into(),
        57 => "pad.bright".into(),
        58 => "bass.bright".into(),
        59 => "lead.shape".into(),
        60 => "stab.level".into(),
        61 => "reverb".into(),
        62 => "width".into(),
        63 => "pump".into(),
        _ => format!("ch{c}"),
    }
}

/// ±1 flag value.
pub fn flag(on: bool) -> f32 {
    if on { 1.0 } else { -1.0 }
}

/// Map a latent value in [−1, 1] to an amplitude in [0, 1].
#[inline]
pub fn unit(v: f32) -> f32 {
    ((v + 1.0) * 0.5).clamp(0.0, 1.0)
}

/// Map an amplitude in [0, 1] to a latent value in [−1, 1].
#[inline]
pub fn from_unit(a: f32) -> f32 {
    a.clamp(0.0, 1.0) * 2.0 - 1.0
}
