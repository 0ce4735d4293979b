//! `demon render`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Tensor;
use clap::Args;
use demon_audio::{EmbeddedLatent, WavFormat};
use demon_engine::{CurveSpec, Prompt};
use demon_live::{BackendFacts, RenderSpec};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{CfgMode, Solver, closed};
use crate::backends::{self, BackendArgs};

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// What to make: style words, mood, "124 bpm", "A minor"...
    #[arg(long, default_value = "house")]
    pub prompt: String,
    /// What to steer away from (acts with --guidance).
    #[arg(long)]
    pub negative: Option<String>,
    /// A second prompt to blend with the first.
    #[arg(long = "prompt-b")]
    pub prompt_b: Option<String>,
    /// Weight of prompt B: a number (crossfade; 0.5 when a second prompt has no --blend) or a
    /// curve spec (per-frame blend).
    #[arg(long)]
    pub blend: Option<String>,
    /// Tempo, 20..400; overrides the prompt and the style's default.
    #[arg(long, allow_negative_numbers = true)]
    pub bpm: Option<f32>,
    /// Key, e.g. "A minor", "F# major".
    #[arg(long)]
    pub key: Option<String>,
    /// Source: an audio file (a previous render is used exactly) or `library:STYLE[:N]`.
    #[arg(long)]
    pub source: Option<String>,
    /// Song length in seconds (default 30, or the source's length).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Denoising steps per generation (S), 1..16.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Flow shift of the timestep schedule, 1..6 (higher spends more steps at high noise).
    #[arg(long, default_value_t = 3.0)]
    pub shift: f32,
    /// 1 generates from noise; lower keeps more of the source (default 1, or 0.7 with a source).
    #[arg(long)]
    pub denoise: Option<f32>,
    /// Noise seed of the first take.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Ring depth: generations in flight together.
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// ode or sde.
    #[arg(long, default_value = "ode", value_parser = closed::<Solver>("solver"))]
    pub solver: Solver,
    /// APG guidance scale, 1..10 (off when absent or 1, as in live play).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// full, initialize or self.
    #[arg(long = "cfg-mode", default_value = "initialize", value_parser = closed::<CfgMode>("CFG mode"))]
    pub cfg_mode: CfgMode,
    /// NAME=SPEC, repeatable: velocity_scale, sde_denoise, ode_noise, x0_target_strength,
    /// guidance, apg_momentum, cfg_rescale, initial_noise, x0_target, mask, blend, dcw, dcw_high,
    /// channel_gain (how much of the ch_g*/ch_k* gains applies at each frame, 0..1).
    /// x0_target_strength, x0_target, initial_noise and mask act on the source (--source).
    /// SPEC: 0.7 | ramp:A:B | sine:MIN:MAX:CYCLES[:PHASE] | pulse:... | square:... | raw:v1,v2,...
    #[arg(long = "curve", value_name = "NAME=SPEC")]
    pub curves: Vec<String>,
    /// How much the source's structure steers the result, 0..1.
    #[arg(long, default_value_t = 0.0)]
    pub structure: f32,
    /// Turn off the DCW wavelet correction (on by default, double mode 0.05/0.02).
    #[arg(long = "no-dcw")]
    pub no_dcw: bool,
    /// The wavelet of DCW's band split: haar (default), db2..db8, sym2..sym8.
    #[arg(long = "dcw-wavelet", value_name = "NAME", default_value = "haar")]
    pub dcw_wavelet: String,
    /// Number of variations (seeds seed..seed+N-1), rendered in flight together.
    #[arg(long, default_value_t = 1)]
    pub takes: usize,
    /// Output WAV (48 kHz stereo); several takes are numbered NAME-01.wav, NAME-02.wav...
    #[arg(long, short = 'o', value_name = "WAV", default_value = "render.wav")]
    pub out: PathBuf,
    /// Write 32-bit float WAV instead of 16-bit PCM.
    #[arg(long)]
    pub float: bool,
    /// Gain each take to this integrated loudness (EBU R128 LUFS, e.g. -14) before writing.
    #[arg(long, value_name = "TARGET", allow_hyphen_values = true)]
    pub lufs: Option<f64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn run(args: RenderArgs) -> Result<()> {
    crate::args::source_file(args.source.as_deref())?;
    let mut backend = backends::build(&args.backend)?;
    let facts = BackendFacts::of(&mut backend.set);
    let mut prompt = Prompt {
        tags: args.prompt.clone(),
        bpm: args.bpm,
        key: args.key.clone(),
        ..Default::default()
    };
    prompt.validate()?;
    if let Some(target) = args.lufs {
        demon_audio::analysis::gain_to_target(None, target).context("--lufs")?;
    }
    if let Some(s) = args.seconds {
        if !(s.is_finite() && s > 0.0) {
            bail!("--seconds must be a positive number of seconds, got {s}");
        }
        if s > demon_live::render::MAX_SECONDS {
            bail!(
                "--seconds {s} is longer than the {} s limit",
                demon_live::render::MAX_SECONDS
            );
        }
    }
    let curves = args
        .curves
        .iter()
        .map(|c| {
            let (name, spec) = c
                .split_once('=')
                .ok_or_else(|| anyhow!("--curve `{c}` is not NAME=SPEC"))?;
            Ok((
                name.trim().to_string(),
                CurveSpec::parse(name.trim(), spec)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let blend = args
        .blend
        .as_deref()
        .map(|b| CurveSpec::parse("blend", b))
        .transpose()?;

    let wanted_frames = args.seconds.map(|s| facts.frames(s).max(1));
    let default_frames = facts.frames(30.0);
    let source = match &args.source {
        Some(s) => Some(backend.sources.latent(
            s,
            &prompt,
            wanted_frames.unwrap_or(default_frames),
            backend.set.codec.as_mut(),
        )?),
        None => None,
    };
    let frames = match (&source, wanted_frames) {
        (_, Some(f)) => f,
        (Some(src), None) => src.dim(1)?,
        (None, None) => default_frames,
    };
    let source = source.map(|s| fit_length(&s, frames)).transpose()?;
    if args.prompt_b.is_some() {
        // Prompt B plays at prompt A's tempo: the one the backend reads from A.
        prompt.bpm = backend.sources.tempo(&prompt);
    }
    let mut spec = RenderSpec::new(prompt, frames);
    spec.takes = args.takes;
    let c = &mut spec.controls;
    c.prompts.b = args.prompt_b.clone();
    c.prompts.negative = args.negative.clone();
    // A render has no time for a knob to travel: every value is the one asked for.
    c.set_slew(0.0)?;
    let knob = |c: &mut demon_live::Controls, name: &str, value: f64| -> Result<()> {
        c.set_knob(name, value, &facts)?;
        Ok(())
    };
    knob(c, "steps", args.steps as f64)?;
    knob(c, "shift", args.shift as f64)?;
    knob(c, "seed", args.seed as f64)?;
    knob(c, "depth", args.depth as f64)?;
    knob(c, "structure", args.structure as f64)?;
    knob(
        c,
        "denoise",
        args.denoise
            .unwrap_or(if source.is_some() { 0.7 } else { 1.0 }) as f64,
    )?;
    if let Some(g) = args.guidance {
        knob(c, "guidance", g as f64)?;
    }
    // A number crossfades the conditionings (the blend knob), a shape blends per frame (the
    // blend curve); a second prompt without either starts half way.
    let blends = blend.into_iter().chain(
        curves
            .iter()
            .filter(|(n, _)| n == "blend")
            .map(|(_, s)| s.clone()),
    );
    let mut blended = false;
    for b in blends {
        match b {
            CurveSpec::Constant { value } => knob(c, "blend", value as f64)?,
            shape => c.set_curve("blend", Some(&shape))?,
        }
        blended = true;
    }
    if !blended && c.prompts.b.is_some() {
        c.set_knob("blend", 0.5, &facts)?;
    }
    for (name, curve) in curves.iter().filter(|(n, _)| n != "blend") {
        c.set_curve(name, Some(curve))?;
    }
    c.solver = args.solver.into();
    c.cfg_mode = args.cfg_mode.into();
    c.dcw_enabled = !args.no_dcw;
    c.dcw_wavelet = args
        .dcw_wavelet
        .parse()
        .with_context(|| format!("--dcw-wavelet {}", args.dcw_wavelet))?;
    c.set_source(source.map(|s| (args.source.clone().unwrap_or_default(), s)));
    // Its measured tempo and key fill the prompt's where it names none: say what was measured.
    demon_live::render::analyse_source(backend.set.codec.as_mut(), c)?;
    if let (Some(src), Some(analysis)) = (c.source(), c.source_analysis())
        && !args.quiet
    {
        eprintln!("{}", describe_analysis(&src.name, analysis));
    }
    spec.validate(&facts)?;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} rendering [{bar:32}] {pos}/{len} steps  {elapsed_precise}  {msg}",
        )
        .map_err(|e| anyhow!("progress bar template: {e}"))?
        .progress_chars("=> "),
    );
    bar.set_message(format!(
        "{} take(s), depth {}",
        spec.takes,
        spec.controls.depth()
    ));
    let started = std::time::Instant::now();
    let takes = demon_live::render(&mut backend.set, &spec, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();

    let paths = output_paths(&args.out, takes.len());
    let format = if args.float {
        WavFormat::Float32
    } else {
        WavFormat::Pcm16
    };
    for (take, path) in takes.iter().zip(&paths) {
        let mut audio = take.audio.clone();
        if let Some(target) = args.lufs {
            let m = demon_audio::analysis::match_loudness(&mut audio, target)?;
            if !args.quiet {
                match m.before_lufs {
                    Some(l) => eprintln!(
                        "loudness {l:.1} LUFS -> {target:.1} LUFS (gain {:+.1} dB)",
                        20.0 * m.gain.log10()
                    ),
                    None => eprintln!("note: {} is silent; --lufs left it as is", path.display()),
                }
            }
        }
        // Like ACE-Step upstream: scale down only when the peak exceeds full scale.
        let peak = audio.peak();
        if peak > 1.0 {
            let g = 0.99 / peak;
            audio.channels.iter_mut().flatten().for_each(|x| *x *= g);
            if !args.quiet {
                eprintln!(
                    "note: peak {peak:.2} exceeds full scale; {} scaled by {g:.3}{}",
                    path.display(),
                    if args.lufs.is_some() {
                        " (below the --lufs target)"
                    } else {
                        ""
                    }
                );
            }
        }
        let (_, t, c) = take.latent.dims3()?;
        let values: Vec<f32> = take.latent.flatten_all()?.to_vec1()?;
        let latent = EmbeddedLatent {
            backend: backend.set.name.clone(),
            frames: t,
            channels: c,
            values,
        };
        // What conditioned the render: the prompt with the source's tempo and key filled in.
        let used = backend
            .set
            .conditioner
            .prompt_use(&spec.controls.conditioning_prompts().a);
        let info =
            demon_live::render::wav_info(&spec.controls.prompts.a.tags, used.as_ref(), take.seed);
        demon_audio::write_wav_with_info(path, &audio, format, Some(&latent), Some(&info))?;
        if !args.quiet {
            eprintln!(
                "wrote {} ({:.1} s, seed {}, peak {:.2}, rms {:.3})",
                path.display(),
                audio.seconds(),
                take.seed,
                audio.peak(),
                audio.rms()
            );
        }
    }
    if !args.quiet {
        let audio_s = facts.seconds(frames) * takes.len() as f64;
        let wall = started.elapsed().as_secs_f64();
        eprintln!(
            "rendered {audio_s:.1} s of audio in {wall:.2} s ({:.1}x real time)",
            audio_s / wall
        );
    }
    Ok(())
}

/// One line of what was measured on a source: tempo, key, loudness, length, and which of
/// them the prompt takes (a clear enough tempo or key, where the prompt names none).
pub fn describe_analysis(name: &str, a: &demon_live::analysis::SourceAnalysis) -> String {
    let hints = a.hints();
    let tempo = match (a.bpm, a.bpm_strength) {
        (Some(b), Some(s)) => format!("{b:.1} BPM (pulse {s:.2})"),
        _ => "no pulse".into(),
    };
    let key = a.key.clone().unwrap_or_else(|| "no key".into());
    let lufs = a
        .integrated_lufs
        .map_or("silent".into(), |l| format!("{l:.1} LUFS"));
    let mut lends = Vec::new();
    if let Some(b) = hints.bpm {
        lends.push(format!("{b} BPM"));
    }
    if let Some(k) = &hints.key {
        lends.push(k.clone());
    }
    let lends = if lends.is_empty() {
        "too unclear to lend the prompt a tempo or key".to_string()
    } else {
        format!(
            "lends the prompt {} where it names none",
            lends.join(" and ")
        )
    };
    format!(
        "source {name}: {:.1} s, {tempo}, {key}, {lufs}; {lends}",
        a.duration_seconds
    )
}

/// `out.wav` for one take; `out-01.wav`, `out-02.wav`... for several.
pub fn output_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("render");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("wav");
    let width = n.to_string().len().max(2);
    (1..=n)
        .map(|k| out.with_file_name(format!("{stem}-{k:0width$}.{ext}")))
        .collect()
}

/// Crop, or loop, a latent to `frames`.
fn fit_length(latent: &Tensor, frames: usize) -> Result<Tensor> {
    let t = latent.dim(1)?;
    if t == frames {
        return Ok(latent.clone());
    }
    if t > frames {
        return Ok(latent.narrow(1, 0, frames)?);
    }
    let reps = frames.div_ceil(t);
    let tiled = Tensor::cat(&vec![latent.clone(); reps], 1)?;
    Ok(tiled.narrow(1, 0, frames)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_outputs() {
        assert_eq!(
            output_paths(Path::new("a/x.wav"), 1),
            vec![PathBuf::from("a/x.wav")]
        );
        assert_eq!(
            output_paths(Path::new("x.wav"), 3)[2],
            PathBuf::from("x-03.wav")
        );
        assert_eq!(
            output_paths(Path::new("x.wav"), 120)[0],
            PathBuf::from("x-001.wav")
        );
    }
}
