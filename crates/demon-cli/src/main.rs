//! `demon`: the DEMON command line.
//!
//! `demon render` renders songs offline through the streaming engine. Errors print their whole
//! chain and exit non-zero; nothing a user types makes the binary panic.

mod args;
mod backends;
mod bench;
mod knobs;
mod mcp;
mod perform;
mod plot;
mod render;
mod serve;
mod tools;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Debug builds check that the real-time sections (the audio callback, the played block) never
// allocate: an allocation there prints a warning (demon_live::rt). Release builds use the
// system allocator as is.
#[cfg(debug_assertions)]
#[global_allocator]
static ALLOC: demon_live::rt::AllocDisabler = demon_live::rt::AllocDisabler;

#[derive(Parser)]
#[command(
    name = "demon",
    version,
    about = "DEMON in Rust: a real-time streaming diffusion engine for music"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render one or more takes of a song to WAV through the streaming engine.
    Render(Box<render::RenderArgs>),
    /// Measure tick time, throughput, propagation latency and decode cost on this machine.
    Bench(bench::BenchArgs),
    /// Run a headless live performance from a script of timed control events.
    Perform(Box<perform::PerformArgs>),
    /// Re-render a recorded session offline, bit-identically.
    Replay(perform::ReplayArgs),
    /// Serve the performer's web UI, WebSocket, REST, MCP (/mcp), OSC and MIDI for a live session.
    Serve(Box<serve::ServeArgs>),
    /// List the knobs a session has: name, range, default, unit and propagation class.
    Knobs(knobs::KnobsArgs),
    /// MCP over stdio, bridged to a running `demon serve` (for clients that only speak stdio).
    Mcp(mcp::McpArgs),
    /// Look at model weights.
    #[command(subcommand)]
    Inspect(tools::InspectCommand),
    /// Developer tools: run single model components (parity checks).
    #[command(subcommand)]
    Debug(tools::DebugCommand),
}

fn main() -> ExitCode {
    // candle's element-wise thread pool spins; the engine's small per-slot ops are faster on one
    // thread (model matmuls do not use that pool). Respect an explicit setting.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => render::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Perform(args) => perform::perform(*args),
        Command::Replay(args) => perform::replay(args),
        Command::Serve(args) => serve::serve(*args),
        Command::Knobs(args) => knobs::run(args),
        Command::Mcp(args) => mcp::run(args),
        Command::Inspect(cmd) => tools::inspect(cmd),
        Command::Debug(cmd) => tools::debug(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every flag and positional argument of every subcommand says what it is in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let has = arg
                    .get_help()
                    .or(arg.get_long_help())
                    .is_some_and(|h| !h.to_string().trim().is_empty());
                if !has {
                    let name = arg
                        .get_long()
                        .map_or_else(|| id.to_uppercase(), |l| format!("--{l}"));
                    missing.push(format!("{path} {name}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "demon", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without help:\n{}",
            missing.join("\n")
        );
    }
}
