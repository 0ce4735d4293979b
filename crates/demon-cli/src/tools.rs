//! `demon inspect weights` and `demon debug forward`: looking at ACE-Step weights and running
//! single components for parity checks against the reference implementation.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum InspectCommand {
    /// Components found in a weights folder: parameter counts, dtypes, layout.
    Weights {
        /// The weights folder (original or diffusers layout).
        dir: PathBuf,
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
    pub component: String,
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
    }
}

pub fn debug(cmd: DebugCommand) -> Result<()> {
    match cmd {
        DebugCommand::Forward(a) => {
            let component: demon_acestep::Component = a.component.parse()?;
            let out = demon_acestep::debug_forward(component, &a.weights, &a.inputs, &a.out)?;
            eprintln!("wrote `out` {:?} to {}", out.dims(), a.out.display());
            Ok(())
        }
    }
}
