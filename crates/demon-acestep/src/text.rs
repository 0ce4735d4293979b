//! The caption path (acestep.md §1.2): the SFT prompt template, the Qwen3 tokenizer read from
//! the checkpoint's `tokenizer.json`, and the Qwen3-Embedding text encoder (transformers
//! `Qwen3Model`: causal attention, per-head q/k RMSNorm before RoPE, final norm). The lyric path
//! uses only this model's embedding table (`embed`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use demon_engine::{Prompt, SourceHints};
use tokenizers::{Tokenizer, TruncationParams};

use crate::config::TextEncoderConfig;
use crate::error::{AceStepError, Result};
use crate::nn::{EncoderLayer, Mask, Params, RmsNorm, Rope, TensorSource};

/// Caption tokens kept (upstream `max_length=256`).
pub const MAX_TEXT_TOKENS: usize = 256;
/// Lyric tokens kept (upstream `max_length=2048`).
pub const MAX_LYRIC_TOKENS: usize = 2048;

/// The DiT task, which picks the instruction line of the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Text2Music,
    Cover,
    Repaint,
}

impl From<demon_engine::GenerationTask> for Task {
    fn from(t: demon_engine::GenerationTask) -> Self {
        match t {
            demon_engine::GenerationTask::TextToMusic => Task::Text2Music,
            demon_engine::GenerationTask::Cover => Task::Cover,
            demon_engine::GenerationTask::Repaint => Task::Repaint,
        }
    }
}

impl Task {
    /// Upstream `TASK_INSTRUCTIONS` (acestep.md §1.2).
    pub fn instruction(self) -> &'static str {
        match self {
            Task::Text2Music => "Fill the audio semantic mask based on the given conditions:",
            Task::Cover => "Generate audio semantic tokens based on the given conditions:",
            Task::Repaint => "Repaint the mask area based on the given conditions:",
        }
    }
}

/// Format a float the way Python's `str(int)` / `str(float)` would for BPM values.
fn bpm_text(bpm: f32) -> String {
    if bpm.fract() == 0.0 {
        format!("{}", bpm as i64)
    } else {
        format!("{bpm}")
    }
}

/// The caption prompt (SFT template) and the lyric prompt for `prompt` under `task`.
///
/// Metadata absent from the prompt is written `N/A`; a missing duration reads "30 seconds"
/// and the duration is truncated to whole seconds, like the reference.
pub fn format_prompt(prompt: &Prompt, task: Task) -> (String, String) {
    // A measured tempo or key of the playing source fills a field the prompt leaves open.
    let bpm = prompt
        .bpm
        .or(SourceHints::bpm(prompt))
        .filter(|b| *b > 0.0)
        .map(bpm_text)
        .unwrap_or_else(|| "N/A".into());
    let ts = prompt
        .time_signature
        .map(|t| t.to_string())
        .unwrap_or_else(|| "N/A".into());
    let key = prompt
        .key
        .as_deref()
        .or(SourceHints::key(prompt))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .unwrap_or("N/A");
    let duration = match prompt.duration_s {
        Some(d) if d > 0.0 && d.is_finite() => format!("{} seconds", d as i64),
        _ => "30 seconds".into(),
    };
    let metas =
        format!("- bpm: {bpm}\n- timesignature: {ts}\n- keyscale: {key}\n- duration: {duration}\n");
    let text = format!(
        "# Instruction\n{}\n\n# Caption\n{}\n\n# Metas\n{metas}<|endoftext|>\n",
        task.instruction(),
        prompt.tags
    );
    let language = prompt
        .language
        .as_deref()
        .filter(|l| !l.is_empty())
        .unwrap_or("en");
    let lyrics = format!(
        "# Languages\n{language}\n\n# Lyric\n{}<|endoftext|>",
        prompt.lyrics
    );
    (text, lyrics)
}

/// The Qwen3 tokenizer (`tokenizer.json`), with special tokens added as the bundled
/// post-processor specifies (it appends `<|endoftext|>`).
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
}

impl PromptTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(AceStepError::MissingFile {
                path: path.to_path_buf(),
                what: "tokenizer.json".into(),
            });
        }
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| AceStepError::Tokenizer {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        // One sequence at a time: a padding setting stored in the file must not pad it.
        tokenizer.with_padding(None);
        Ok(Self {
            tokenizer,
            path: path.to_path_buf(),
        })
    }

    /// Token ids of `text`, truncated to `max_len` tokens including the appended specials.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let mut tok = self.tokenizer.clone();
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| AceStepError::Tokenizer {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        let enc = tok
            .encode(text, true)
            .map_err(|e| AceStepError::Tokenizer {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }
}

/// Qwen3-Embedding: token embedding, causal pre-norm layers, final RMSNorm.
pub struct TextEncoder {
    pub embed_tokens: Tensor,
    pub layers: Vec<EncoderLayer>,
    pub norm: RmsNorm,
    pub cfg: TextEncoderConfig,
}

impl TextEncoder {
    /// Tensors `embed_tokens.weight`, `layers.N.*`, `norm.weight` (a `model.` prefix is stripped
    /// by the weight loader).
    pub fn load(src: &dyn TensorSource, cfg: &TextEncoderConfig) -> Result<Self> {
        let stack = cfg.stack();
        let p = Params::new(src);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&p.pp("layers").pp(i), &stack))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: p
                .pp("embed_tokens")
                .get("weight", &[cfg.vocab_size, cfg.hidden_size])?,
            layers,
            norm: RmsNorm::load(&p.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            cfg: cfg.clone(),
        })
    }

    fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Raw embedding lookup `[1, L, H]` (the lyric path: no layers, no norm).
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(AceStepError::input(format!(
                "token id {bad} is outside the text encoder's vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let idx = Tensor::from_vec(ids.to_vec(), ids.len(), self.device())?;
        Ok(self.embed_tokens.index_select(&idx, 0)?.unsqueeze(0)?)
    }

    /// `last_hidden_state` `[1, L, H]` of the causal model.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(AceStepError::input("empty token sequence"));
        }
        let l = ids.len();
        let rope = Rope::new(l, self.cfg.head_dim, self.cfg.rope_theta, self.device())?;
        let mut h = self.embed(ids)?;
        for layer in &self.layers {
            h = layer.forward(&h, &rope, Mask::Causal)?;
        }
        self.norm.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_template_matches_the_reference_text() {
        let p = Prompt {
            tags: "deep house".into(),
            lyrics: "la la".into(),
            bpm: Some(120.0),
            key: Some("A minor".into()),
            time_signature: Some(4),
            language: None,
            duration_s: Some(12.9),
            task: None,
            hints: None,
        };
        let (t, l) = format_prompt(&p, Task::Text2Music);
        assert_eq!(
            t,
            "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n# Caption\ndeep house\n\n\
             # Metas\n- bpm: 120\n- timesignature: 4\n- keyscale: A minor\n- duration: 12 seconds\n<|endoftext|>\n"
        );
        assert_eq!(l, "# Languages\nen\n\n# Lyric\nla la<|endoftext|>");
        let (t, _) = format_prompt(&Prompt::tags("x"), Task::Cover);
        assert!(t.contains(
            "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"
        ));
        assert!(t.starts_with("# Instruction\nGenerate audio semantic tokens"));
        assert_eq!(bpm_text(96.5), "96.5");
    }

    #[test]
    fn measured_tempo_and_key_fill_only_what_the_prompt_leaves_open() {
        let hints = Some(SourceHints {
            bpm: Some(101.5),
            key: Some("D minor".into()),
        });
        let open = Prompt {
            hints: hints.clone(),
            ..Prompt::tags("x")
        };
        let (t, _) = format_prompt(&open, Task::Cover);
        assert!(t.contains("- bpm: 101.5\n"), "{t}");
        assert!(t.contains("- keyscale: D minor\n"), "{t}");
        let asked = Prompt {
            bpm: Some(128.0),
            key: Some("F# major".into()),
            hints,
            ..Prompt::tags("x")
        };
        let (t, _) = format_prompt(&asked, Task::Cover);
        assert!(
            t.contains("- bpm: 128\n") && t.contains("- keyscale: F# major\n"),
            "{t}"
        );
    }
}
