//! MCP for agents (rmcp, streamable HTTP at `/mcp`): every control of the live session as a
//! tool, with descriptions written for a language model performing with the instrument.

use std::collections::BTreeMap;
use std::sync::Arc;

use demon_engine::CurveSpec;
use demon_live::automation::{AutomationLane, LaneInterpolation, LanePoint};
use demon_live::control::{ControlMessage, ReferenceRole, SourceSpec};
use demon_live::preset::PromptTask;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::protocol::{AckBody, ApiError, ErrorBody, ErrorCode};
use crate::service::{OfflineRender, Origin, Service};

const INSTRUCTIONS: &str = "DEMON is a live music instrument: a diffusion model keeps regenerating a looping song while you \
turn its knobs. Read `state` and `list_knobs` first. Changes take effect between engine ticks: shared per-step knobs \
(velocity_scale, ode_noise, guidance, ...) are heard on the next tick; per-slot knobs (denoise, seed, prompts, blend) \
after about S ticks (a second or two). Make musical moves: small knob changes every few bars, prompt blends for \
transitions, a new seed for a variation.";

#[derive(Clone)]
pub struct DemonMcp {
    svc: Arc<Service>,
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KnobName {
    /// Knob name from `list_knobs` (e.g. "denoise", "velocity_scale", "lora:funk").
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KnobValue {
    /// Knob name from `list_knobs`.
    pub name: String,
    /// New value inside the knob's range.
    pub value: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KnobValues {
    /// Knob name → value; applied together on the same tick.
    pub values: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PromptArgs {
    /// Prompt A: style words, mood, instruments ("deep house, warm pads").
    #[serde(default)]
    pub prompt: Option<String>,
    /// Prompt B for blending; "" removes it.
    #[serde(default)]
    pub prompt_b: Option<String>,
    /// What to steer away from (acts when the guidance knob is above 1); "" removes it.
    #[serde(default)]
    pub negative: Option<String>,
    /// Tempo in BPM.
    #[serde(default)]
    pub bpm: Option<f32>,
    /// Key, e.g. "A minor".
    #[serde(default)]
    pub key: Option<String>,
    /// Lyrics ("" removes them; "[Instrumental]" for none).
    #[serde(default)]
    pub lyrics: Option<String>,
    /// Beats per bar, e.g. 4 or 3 (0 removes it).
    #[serde(default)]
    pub time_signature: Option<u32>,
    /// Language of the lyrics, e.g. "en" ("" removes it).
    #[serde(default)]
    pub language: Option<String>,
    /// "cover" (a new rendition of the playing source), "text_to_music", or "auto" (cover
    /// while a source plays).
    #[serde(default)]
    pub task: Option<TaskArg>,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskArg {
    Auto,
    TextToMusic,
    Cover,
}

impl From<TaskArg> for PromptTask {
    fn from(t: TaskArg) -> Self {
        match t {
            TaskArg::Auto => Self::Auto,
            TaskArg::TextToMusic => Self::TextToMusic,
            TaskArg::Cover => Self::Cover,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AnalyzeArgs {
    /// An audio file in the server's media folders; omitted: the playing source.
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RcfgArgs {
    /// "full" (a negative pass every step), "initialize" (one at each generation's first step,
    /// the default) or "self" (none: the initial noise stands in). For no guidance at all set
    /// the guidance knob to 1.
    pub mode: String,
}

/// One live session, as `list_sessions` shows it.
#[derive(Debug, Serialize)]
pub struct SessionSummary {
    /// Every tool acts on this session (a server runs one).
    pub id: &'static str,
    pub backend: String,
    pub tick: u64,
    pub prompt: String,
    pub source: Option<String>,
    pub song_seconds: f64,
    pub playing: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct BlendArgs {
    /// 0 = prompt A only, 1 = prompt B only.
    pub value: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CurveArgs {
    /// Curve parameter: velocity_scale, sde_denoise, ode_noise, x0_target_strength, guidance,
    /// apg_momentum, cfg_rescale, initial_noise, x0_target or blend.
    pub name: String,
    /// A curve over the whole song: {"type":"ramp","start":0,"end":1}, {"type":"sine","min":0,
    /// "max":1,"cycles":4}, {"type":"square",...}, {"type":"pulse",...}, {"type":"constant",
    /// "value":v} or {"type":"raw","values":[...]}; null removes the curve.
    pub curve: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AutomationArgs {
    /// The knob the lane moves: any catalog knob but depth and steps (e.g. denoise, feedback,
    /// shift, structure), or lora:<id> for an adapter's strength.
    pub knob: String,
    /// Points over the song timeline, strictly increasing in time:
    /// [{"at_s": 0, "value": 0.3}, {"at_s": 8, "value": 0.9}]. Values within the knob's range.
    pub points: Vec<PointArg>,
    /// Between points: "step", "linear" (the default) or "smooth".
    #[serde(default)]
    pub interpolation: Option<InterpolationArg>,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
pub struct PointArg {
    /// Seconds into the song.
    pub at_s: f64,
    /// The knob's value there.
    pub value: f64,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InterpolationArg {
    Step,
    Linear,
    Smooth,
}

impl From<InterpolationArg> for LaneInterpolation {
    fn from(i: InterpolationArg) -> Self {
        match i {
            InterpolationArg::Step => Self::Step,
            InterpolationArg::Linear => Self::Linear,
            InterpolationArg::Smooth => Self::Smooth,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KnobNameArgs {
    /// The knob whose automation lane is removed.
    pub knob: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DepthArgs {
    /// Generations in flight, 1..=8 (more = more throughput, longer per-slot latency).
    pub depth: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct LoraArgs {
    /// Adapter id from `list_loras`.
    pub id: String,
    /// Strength 0..=2 (0 disables); enable_lora without one uses the recommended strength, else 1.
    #[serde(default)]
    pub strength: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct LoraId {
    /// Adapter id from `list_loras`.
    pub id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SourceArgs {
    /// `library:STYLE[:N]` (e.g. "library:funk:2"), an audio file path on the server, or "none".
    pub source: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FixtureArgs {
    /// A sketch library style (see the `library:` sources, e.g. "funk").
    pub style: String,
    /// Song number in that style (default 0).
    #[serde(default)]
    pub index: u64,
}

impl FixtureArgs {
    fn source(self) -> SourceSpec {
        SourceSpec::Library {
            style: self.style,
            index: self.index,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AudioPathArgs {
    /// An audio file in the server's media folders (at most 60 s is used as a reference).
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PresetArgs {
    /// A preset as `save_preset` returns it: `{"preset_version": 1, "prompts": {...}, "knobs":
    /// {...}, "loras": {...}, "curves": {...}, "source": {"kind": "library", ...}, ...}`; fields
    /// left out take their defaults.
    pub preset: serde_json::Value,
}

/// A tool's result: the JSON of the same protocol types the other surfaces send.
type ToolResult = Result<String, String>;

fn json(v: &impl Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Success as JSON text, or the error as `{"ok": false, "code", "error"}` (a tool error).
fn answer<T: Serialize>(r: Result<T, ApiError>) -> ToolResult {
    r.map(|v| json(&v)).map_err(|e| json(&ErrorBody::from(e)))
}

impl DemonMcp {
    async fn reference(&self, role: ReferenceRole, source: SourceSpec) -> ToolResult {
        self.control(ControlMessage::SetReference { role, source })
            .await
    }

    /// A source change by the name `demon` gives sources (`set_source`, `swap_to_*`).
    async fn source(&self, name: String) -> ToolResult {
        let applied = self.svc.set_source_by_name(Origin::Mcp, name).await;
        answer(applied.map(|a| AckBody {
            ok: true,
            result: a,
        }))
    }

    async fn control(&self, m: ControlMessage) -> ToolResult {
        answer(self.svc.apply(Origin::Mcp, m).await.map(|a| AckBody {
            ok: true,
            result: a,
        }))
    }
}

#[tool_router]
impl DemonMcp {
    pub fn new(svc: Arc<Service>) -> Self {
        Self {
            svc,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "The live session's state: prompts, knob values (effective and target), curves, source, loop band, playhead, tick time, generations per second, adapters."
    )]
    async fn state(&self) -> ToolResult {
        answer(self.svc.state())
    }

    #[tool(
        description = "Every knob: name, range, default, propagation class (shared_per_step = heard next tick; per_slot = heard after S ticks; global_weights = LoRA; structural) and what it does musically."
    )]
    async fn list_knobs(&self) -> ToolResult {
        Ok(json(&self.svc.knobs()))
    }

    #[tool(description = "One knob's current effective (slew-limited) value and its target.")]
    async fn get_knob(&self, Parameters(a): Parameters<KnobName>) -> ToolResult {
        answer(self.svc.knob(&a.name))
    }

    #[tool(description = "Set one knob. Large jumps are slew-limited so they do not click.")]
    async fn set_knob(&self, Parameters(a): Parameters<KnobValue>) -> ToolResult {
        self.control(ControlMessage::SetKnob {
            name: a.name,
            value: a.value,
        })
        .await
    }

    #[tool(description = "Set several knobs at once (applied on the same tick; all or nothing).")]
    async fn set_knobs(&self, Parameters(a): Parameters<KnobValues>) -> ToolResult {
        self.control(ControlMessage::SetKnobs { values: a.values })
            .await
    }

    #[tool(
        description = "Change prompt A, prompt B, the negative prompt, tempo, key, time signature, lyrics, their language or the task (cover / text_to_music / auto). Omitted fields stay as they are."
    )]
    async fn set_prompt(&self, Parameters(a): Parameters<PromptArgs>) -> ToolResult {
        self.control(ControlMessage::SetPrompt {
            prompt: a.prompt,
            prompt_b: a.prompt_b,
            negative: a.negative,
            bpm: a.bpm,
            key: a.key,
            lyrics: a.lyrics,
            time_signature: a.time_signature,
            language: a.language,
            task: a.task.map(PromptTask::from),
        })
        .await
    }

    #[tool(
        description = "Crossfade between prompt A (0) and prompt B (1). Needs a prompt B (set_prompt)."
    )]
    async fn set_prompt_blend(&self, Parameters(a): Parameters<BlendArgs>) -> ToolResult {
        self.control(ControlMessage::SetKnob {
            name: "blend".into(),
            value: a.value,
        })
        .await
    }

    #[tool(
        description = "Automate a knob over the song timeline: the playhead plays the lane back at every tick (step, linear or smooth between points), and the knob refuses hand moves until the lane is cleared. Recorded and replayed exactly."
    )]
    async fn set_automation(&self, Parameters(a): Parameters<AutomationArgs>) -> ToolResult {
        self.control(ControlMessage::SetAutomation {
            knob: a.knob,
            lane: Some(AutomationLane {
                points: a
                    .points
                    .iter()
                    .map(|p| LanePoint {
                        at_s: p.at_s,
                        value: p.value,
                    })
                    .collect(),
                interpolation: a.interpolation.map(Into::into).unwrap_or_default(),
            }),
        })
        .await
    }

    #[tool(
        description = "Remove a knob's automation lane; the knob keeps the value the lane last gave it and can be moved by hand again."
    )]
    async fn clear_automation(&self, Parameters(a): Parameters<KnobNameArgs>) -> ToolResult {
        self.control(ControlMessage::SetAutomation {
            knob: a.knob,
            lane: None,
        })
        .await
    }

    #[tool(
        description = "Draw a per-frame curve over the song for a curve parameter (e.g. ode_noise rising through the song), or remove it with null."
    )]
    async fn set_curve(&self, Parameters(a): Parameters<CurveArgs>) -> ToolResult {
        let curve = match a.curve {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => match serde_json::from_value::<CurveSpec>(v) {
                Ok(c) => Some(c),
                Err(e) => {
                    return answer::<()>(Err(ApiError::new(
                        ErrorCode::BadValue,
                        format!("not a curve spec: {e}"),
                    )));
                }
            },
        };
        self.control(ControlMessage::SetCurve {
            name: a.name,
            curve,
        })
        .await
    }

    #[tool(
        description = "Generations in flight (ring depth, 1..=8). In-flight work always finishes."
    )]
    async fn set_depth(&self, Parameters(a): Parameters<DepthArgs>) -> ToolResult {
        self.control(ControlMessage::SetKnob {
            name: "depth".into(),
            value: a.depth as f64,
        })
        .await
    }

    #[tool(
        description = "Weight adapters (LoRA): `adapters`, those in the model with their strengths, and `library`, every adapter of the LoRA folders with its group, metadata and status (registered, loading, loaded, failed). Enabling a registered one loads it first."
    )]
    async fn list_loras(&self) -> ToolResult {
        answer(self.svc.loras())
    }

    #[tool(
        description = "Scan the LoRA folders again: new adapter files are registered (not loaded), vanished ones dropped unless loaded. Answers the ids added and removed and any file that cannot be read."
    )]
    async fn rescan_loras(&self) -> ToolResult {
        answer(self.svc.rescan_loras().await)
    }

    #[tool(
        description = "Enable a LoRA adapter at a strength (default: the strength its files recommend, else 1); a library adapter is loaded first. Heard from the next model call on."
    )]
    async fn enable_lora(&self, Parameters(a): Parameters<LoraArgs>) -> ToolResult {
        let strength = match a.strength {
            Some(s) => s,
            None => self
                .svc
                .lora(&a.id)
                .ok()
                .and_then(|info| info.metadata.recommended_strength.map(f64::from))
                .unwrap_or(1.0),
        };
        self.control(ControlMessage::SetLora { id: a.id, strength })
            .await
    }

    #[tool(
        description = "What a LoRA adapter's files say about it: trigger words (added to the prompt while it is enabled), recommended strength, group, base model; with its strength and the modules it touches."
    )]
    async fn get_lora_metadata(&self, Parameters(a): Parameters<LoraId>) -> ToolResult {
        answer(self.svc.lora(&a.id))
    }

    #[tool(description = "Disable a LoRA adapter.")]
    async fn disable_lora(&self, Parameters(a): Parameters<LoraArgs>) -> ToolResult {
        self.control(ControlMessage::SetLora {
            id: a.id,
            strength: 0.0,
        })
        .await
    }

    #[tool(
        description = "Replace the source the engine remixes: `library:STYLE[:N]`, an audio file path on the server, or `none` for text-to-music."
    )]
    async fn set_source(&self, Parameters(a): Parameters<SourceArgs>) -> ToolResult {
        self.source(a.source).await
    }

    #[tool(
        description = "Make a library song (style, index) the source: `set_source` with `library:STYLE:N`."
    )]
    async fn swap_to_fixture(&self, Parameters(a): Parameters<FixtureArgs>) -> ToolResult {
        self.source(format!("library:{}:{}", a.style, a.index))
            .await
    }

    #[tool(
        description = "Make an audio file in the server's media folders the source: `set_source` with its path."
    )]
    async fn swap_to_audio(&self, Parameters(a): Parameters<AudioPathArgs>) -> ToolResult {
        self.source(a.path).await
    }

    #[tool(
        description = "Library songs that `swap_to_fixture`, `set_timbre_fixture` and `set_structure_fixture` take, as `library:STYLE:N` names."
    )]
    async fn list_fixtures(&self) -> ToolResult {
        Ok(json(&self.svc.library()))
    }

    #[tool(
        description = "Tempo (BPM), key, duration and loudness (LUFS) of the playing source, or of an audio file in the media folders. The session feeds a measured tempo and key into the prompt when the prompt names none."
    )]
    async fn analyze(&self, Parameters(a): Parameters<AnalyzeArgs>) -> ToolResult {
        answer(self.svc.analyze(a.source).await)
    }

    #[tool(
        description = "The live sessions this server runs (one: every tool acts on it), with backend, tick, prompt and source."
    )]
    async fn list_sessions(&self) -> ToolResult {
        answer(self.svc.state().map(|s| {
            vec![SessionSummary {
                id: "live",
                backend: s.backend,
                tick: s.tick,
                prompt: s.prompt,
                source: s.source,
                song_seconds: s.song_seconds,
                playing: s.playing,
            }]
        }))
    }

    #[tool(
        description = "Classifier-free guidance mode (DEMON's rcfg_mode): full, initialize or self; the same as the WebSocket set_cfg_mode."
    )]
    async fn set_rcfg_mode(&self, Parameters(a): Parameters<RcfgArgs>) -> ToolResult {
        let mode = match a.mode.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => {
                return answer::<()>(Err(ApiError::new(
                    ErrorCode::BadValue,
                    "mode `off`: this engine has no guidance-free mode; set the guidance knob to 1 for no guidance",
                )));
            }
            m => match m.parse::<demon_engine::CfgMode>() {
                Ok(mode) => mode,
                Err(e) => {
                    return answer::<()>(Err(ApiError::new(ErrorCode::BadValue, e.to_string())));
                }
            },
        };
        self.control(ControlMessage::SetCfgMode { mode }).await
    }

    #[tool(
        description = "Give the timbre fader a reference of its own: a library song (style, index). The fader then steers the voice toward it instead of the source's."
    )]
    async fn set_timbre_fixture(&self, Parameters(a): Parameters<FixtureArgs>) -> ToolResult {
        let source = a.source();
        self.reference(ReferenceRole::Timbre, source).await
    }

    #[tool(
        description = "Give the timbre fader a reference of its own: an audio file in the server's media folders (at most 60 s)."
    )]
    async fn set_timbre_audio(&self, Parameters(a): Parameters<AudioPathArgs>) -> ToolResult {
        let source = SourceSpec::File { path: a.path };
        self.reference(ReferenceRole::Timbre, source).await
    }

    #[tool(
        description = "Clear the timbre reference: the timbre fader follows the source's own voice again."
    )]
    async fn clear_timbre(&self) -> ToolResult {
        self.reference(ReferenceRole::Timbre, SourceSpec::None)
            .await
    }

    #[tool(
        description = "Give the structure fader a reference of its own: a library song (style, index) whose rhythm and harmony steer generation, looped to the song."
    )]
    async fn set_structure_fixture(&self, Parameters(a): Parameters<FixtureArgs>) -> ToolResult {
        let source = a.source();
        self.reference(ReferenceRole::Structure, source).await
    }

    #[tool(
        description = "Give the structure fader a reference of its own: an audio file in the server's media folders (at most 60 s), looped to the song."
    )]
    async fn set_structure_audio(&self, Parameters(a): Parameters<AudioPathArgs>) -> ToolResult {
        let source = SourceSpec::File { path: a.path };
        self.reference(ReferenceRole::Structure, source).await
    }

    #[tool(
        description = "Clear the structure reference: the structure fader follows the source again."
    )]
    async fn clear_structure(&self) -> ToolResult {
        self.reference(ReferenceRole::Structure, SourceSpec::None)
            .await
    }

    #[tool(
        description = "The whole performer-set state (prompts, knobs, LoRA strengths, curves, source, loop band) as a JSON preset that `load_preset` restores."
    )]
    async fn save_preset(&self) -> ToolResult {
        answer(self.svc.preset().await)
    }

    #[tool(
        description = "Restore a preset from `save_preset`, all or nothing: a bad one is refused naming the field, and nothing changes."
    )]
    async fn load_preset(&self, Parameters(a): Parameters<PresetArgs>) -> ToolResult {
        let body = a.preset.to_string();
        answer(
            self.svc
                .load_preset(Origin::Mcp, body.as_bytes())
                .await
                .map(|a| AckBody {
                    ok: true,
                    result: a,
                }),
        )
    }

    #[tool(description = "Start recording what is played to a WAV file on the server.")]
    async fn start_recording(&self) -> ToolResult {
        answer(self.svc.start_recording().await)
    }

    #[tool(description = "Stop recording; returns the WAV's download URL and length.")]
    async fn stop_recording(&self) -> ToolResult {
        answer(self.svc.stop_recording().await)
    }

    #[tool(
        description = "Render a separate song offline (not the live loop) from a prompt; returns the WAV path on the server."
    )]
    async fn render_offline(&self, Parameters(a): Parameters<OfflineRender>) -> ToolResult {
        answer(self.svc.render_offline(a).await)
    }
}

#[tool_handler]
impl ServerHandler for DemonMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions(INSTRUCTIONS)
    }
}

/// The `/mcp` tower service.
pub fn service(svc: Arc<Service>) -> StreamableHttpService<DemonMcp, LocalSessionManager> {
    StreamableHttpService::new(
        move || Ok(DemonMcp::new(svc.clone())),
        Arc::new(LocalSessionManager::default()),
        // Hosts and origins are checked for every route alike by `auth::guard`, token-aware;
        // rmcp's own loopback-only host list would refuse remote clients that carry the token.
        StreamableHttpServerConfig::default().disable_allowed_hosts(),
    )
}
