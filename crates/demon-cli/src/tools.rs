//! `demon inspect weights` and `demon debug forward`: looking at ACE-Step weights and running
//! single components for parity checks against the reference implementation.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::args::{Component, closed};

#[derive(Subcommand, Debug)]
pub enum InspectCommand {
    /// Components found in a weights folder: parameter counts, dtypes, layout.
    Weights {
        /// The weights folder (original or diffusers layout).
        dir: PathBuf,
    },
    /// Tempo, key, duration and loudness of an audio file (WAV, FLAC, MP3, OGG, AIFF).
    Audio {
        /// The audio file.
        file: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Run one model component on named input tensors and save the result as `out`.
    Forward(ForwardArgs),
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// text-encoder, condition-encoder, dit, vae-encode, vae-decode or fsq-roundtrip.
    #[arg(value_parser = closed::<Component>("component"))]
    pub component: Component,
    /// The ACE-Step weights folder (original or diffusers layout).
    #[arg(long)]
    pub weights: PathBuf,
    /// Safetensors file with the inputs, named after the reference forward's arguments.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the output tensor (`out`).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn inspect(cmd: InspectCommand) -> Result<()> {
    match cmd {
        InspectCommand::Weights { dir } => {
            let report = demon_acestep::inspect_weights(&dir)
                .with_context(|| format!("inspecting `{}`", dir.display()))?;
            println!("{report}");
            Ok(())
        }
        InspectCommand::Audio { file, json } => inspect_audio(&file, json),
    }
}

pub fn debug(cmd: DebugCommand) -> Result<()> {
    match cmd {
        DebugCommand::Forward(a) => {
            let component = demon_acestep::Component::from(a.component);
            let out = demon_acestep::debug_forward(component, &a.weights, &a.inputs, &a.out)?;
            eprintln!("wrote `out` {:?} to {}", out.dims(), a.out.display());
            Ok(())
        }
    }
}

/// `demon inspect audio FILE`: the analysis of `demon_audio::analysis::analyze`.
fn inspect_audio(file: &std::path::Path, json: bool) -> Result<()> {
    let decoded = demon_audio::load_file(file, demon_audio::LoadLimits::default())?;
    let audio = demon_engine::Audio::new(decoded.sample_rate, decoded.channels)
        .with_context(|| format!("reading `{}`", file.display()))?;
    let info = demon_audio::analysis::analyze(&audio);
    if json {
        let value = serde_json::json!({
            "file": file.display().to_string(),
            "duration_seconds": info.duration_seconds,
            "sample_rate": info.sample_rate,
            "channels": info.channels,
            "bpm": info.bpm.map(|t| t.bpm),
            "bpm_strength": info.bpm.map(|t| t.strength),
            "bpm_half_strength": info.bpm.and_then(|t| t.half_strength),
            "bpm_double_strength": info.bpm.and_then(|t| t.double_strength),
            "key": info.key.map(|k| k.key.to_string()),
            "key_correlation": info.key.map(|k| k.correlation),
            "key_runner_up": info.key.map(|k| k.runner_up.to_string()),
            "integrated_lufs": info.integrated_lufs,
            "peak": info.peak,
        });
        println!("{value}");
        return Ok(());
    }
    println!("{}", file.display());
    println!(
        "  duration   {:.2} s ({} Hz, {} channel(s))",
        info.duration_seconds, info.sample_rate, info.channels
    );
    match info.bpm {
        Some(t) => println!(
            "  tempo      {:.2} BPM (pulse strength {:.2}; half {}, double {})",
            t.bpm,
            t.strength,
            t.half_strength.map_or("-".into(), |s| format!("{s:.2}")),
            t.double_strength.map_or("-".into(), |s| format!("{s:.2}")),
        ),
        None => println!("  tempo      none (no pulse)"),
    }
    match info.key {
        Some(k) => println!(
            "  key        {} (correlation {:.2}; runner-up {} {:.2})",
            k.key, k.correlation, k.runner_up, k.runner_up_correlation
        ),
        None => println!("  key        none (no pitched content)"),
    }
    match info.integrated_lufs {
        Some(l) => println!("  loudness   {l:.1} LUFS integrated"),
        None => println!("  loudness   silent"),
    }
    println!(
        "  peak       {:.3} ({:.1} dBFS)",
        info.peak,
        20.0 * info.peak.max(1e-9).log10()
    );
    Ok(())
}
