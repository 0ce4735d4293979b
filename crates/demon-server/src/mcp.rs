//! MCP for agents (rmcp, streamable HTTP at `/mcp`): every control of the live session as a
//! tool, with descriptions written for a language model performing with the instrument.

use std::collections::BTreeMap;
use std::sync::Arc;

use demon_engine::CurveSpec;
use demon_live::control::{ControlMessage, SourceSpec};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::api::{apply_control, knob_catalog, resolve};
use crate::{App, OfflineRender};

/// Origin id of agent-sent controls in echoes.
pub const MCP_ORIGIN: u64 = u64::MAX - 3;

const INSTRUCTIONS: &str = "DEMON is a live music instrument: a diffusion model keeps regenerating a looping song while you \
turn its knobs. Read `state` and `list_knobs` first. Changes take effect between engine ticks: shared per-step knobs \
(velocity_scale, ode_noise, guidance, ...) are heard on the next tick; per-slot knobs (denoise, seed, prompts, blend) \
after about S ticks (a second or two). Make musical moves: small knob changes every few bars, prompt blends for \
transitions, a new seed for a variation.";

#[derive(Clone)]
pub struct DemonMcp {
    app: Arc<App>,
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
pub struct DepthArgs {
    /// Generations in flight, 1..=8 (more = more throughput, longer per-slot latency).
    pub depth: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct LoraArgs {
    /// Adapter id from `list_loras`.
    pub id: String,
    /// Strength 0..=2 (0 disables).
    #[serde(default)]
    pub strength: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SourceArgs {
    /// `library:STYLE[:N]` (e.g. "library:funk:2"), an audio file path on the server, or "none".
    pub source: String,
}

fn text(v: serde_json::Value) -> String {
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

impl DemonMcp {
    async fn control(&self, m: ControlMessage) -> Result<String, String> {
        let m = resolve(&self.app, m)?;
        let (tick, ms) = apply_control(&self.app, MCP_ORIGIN, m).await?;
        Ok(text(
            json!({"ok": true, "applied_before_tick": tick, "latency_ms": ms}),
        ))
    }
}

#[tool_router]
impl DemonMcp {
    pub fn new(app: Arc<App>) -> Self {
        Self {
            app,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "The live session's state: prompts, knob values (effective and target), curves, source, loop band, playhead, tick time, generations per second, adapters."
    )]
    async fn state(&self) -> Result<String, String> {
        Ok(text(json!(self.app.handle.state())))
    }

    #[tool(
        description = "Every knob: name, range, default, propagation class (shared_per_step = heard next tick; per_slot = heard after S ticks; global_weights = LoRA; structural) and what it does musically."
    )]
    async fn list_knobs(&self) -> Result<String, String> {
        Ok(text(knob_catalog(&self.app)))
    }

    #[tool(description = "One knob's current effective (slew-limited) value and its target.")]
    async fn get_knob(&self, Parameters(a): Parameters<KnobName>) -> Result<String, String> {
        let st = self
            .app
            .handle
            .state()
            .ok_or("the session has not started")?;
        let (Some(v), Some(t)) = (st.knobs.get(&a.name), st.targets.get(&a.name)) else {
            return Err(format!("unknown knob `{}` (see list_knobs)", a.name));
        };
        Ok(text(json!({"name": a.name, "value": v, "target": t})))
    }

    #[tool(description = "Set one knob. Large jumps are slew-limited so they do not click.")]
    async fn set_knob(&self, Parameters(a): Parameters<KnobValue>) -> Result<String, String> {
        self.control(ControlMessage::SetKnob {
            name: a.name,
            value: a.value,
        })
        .await
    }

    #[tool(description = "Set several knobs at once (applied on the same tick; all or nothing).")]
    async fn set_knobs(&self, Parameters(a): Parameters<KnobValues>) -> Result<String, String> {
        self.control(ControlMessage::SetKnobs { values: a.values })
            .await
    }

    #[tool(
        description = "Change prompt A, prompt B, the negative prompt, tempo or key. Omitted fields stay as they are."
    )]
    async fn set_prompt(&self, Parameters(a): Parameters<PromptArgs>) -> Result<String, String> {
        self.control(ControlMessage::SetPrompt {
            prompt: a.prompt,
            prompt_b: a.prompt_b,
            negative: a.negative,
            bpm: a.bpm,
            key: a.key,
        })
        .await
    }

    #[tool(
        description = "Crossfade between prompt A (0) and prompt B (1). Needs a prompt B (set_prompt)."
    )]
    async fn set_prompt_blend(
        &self,
        Parameters(a): Parameters<BlendArgs>,
    ) -> Result<String, String> {
        self.control(ControlMessage::SetKnob {
            name: "blend".into(),
            value: a.value,
        })
        .await
    }

    #[tool(
        description = "Draw a per-frame curve over the song for a curve parameter (e.g. ode_noise rising through the song), or remove it with null."
    )]
    async fn set_curve(&self, Parameters(a): Parameters<CurveArgs>) -> Result<String, String> {
        let curve = match a.curve {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<CurveSpec>(v)
                    .map_err(|e| format!("not a curve spec: {e}"))?,
            ),
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
    async fn set_depth(&self, Parameters(a): Parameters<DepthArgs>) -> Result<String, String> {
        self.control(ControlMessage::SetKnob {
            name: "depth".into(),
            value: a.depth as f64,
        })
        .await
    }

    #[tool(description = "Weight adapters (LoRA) the backend has, with their strengths.")]
    async fn list_loras(&self) -> Result<String, String> {
        let st = self
            .app
            .handle
            .state()
            .ok_or("the session has not started")?;
        Ok(text(json!(st.adapters)))
    }

    #[tool(
        description = "Enable a LoRA adapter at a strength (default 1). Heard from the next model call on."
    )]
    async fn enable_lora(&self, Parameters(a): Parameters<LoraArgs>) -> Result<String, String> {
        self.control(ControlMessage::SetLora {
            id: a.id,
            strength: a.strength.unwrap_or(1.0),
        })
        .await
    }

    #[tool(description = "Disable a LoRA adapter.")]
    async fn disable_lora(&self, Parameters(a): Parameters<LoraArgs>) -> Result<String, String> {
        self.control(ControlMessage::SetLora {
            id: a.id,
            strength: 0.0,
        })
        .await
    }

    #[tool(
        description = "Replace the source the engine remixes: `library:STYLE[:N]`, an audio file path on the server, or `none` for text-to-music."
    )]
    async fn set_source(&self, Parameters(a): Parameters<SourceArgs>) -> Result<String, String> {
        let source = if a.source == "none" {
            SourceSpec::None
        } else {
            (self.app.hooks.resolve_source)(&a.source)?
        };
        self.control(ControlMessage::SetSource { source }).await
    }

    #[tool(description = "Start recording what is played to a WAV file on the server.")]
    async fn start_recording(&self) -> Result<String, String> {
        let name = format!("demon-mcp-{}.wav", std::process::id());
        let path = self.app.opts.recordings_dir.join(&name);
        let app = self.app.clone();
        tokio::task::spawn_blocking(move || app.handle.start_recording(&path, false))
            .await
            .map_err(|e| e.to_string())??;
        Ok(text(json!({"recording": name})))
    }

    #[tool(description = "Stop recording; returns the WAV's download URL and length.")]
    async fn stop_recording(&self) -> Result<String, String> {
        let app = self.app.clone();
        let r = tokio::task::spawn_blocking(move || app.handle.stop_recording())
            .await
            .map_err(|e| e.to_string())??;
        Ok(text(match r {
            Some((path, seconds)) => {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                json!({"url": format!("/api/recordings/{name}"), "path": path, "seconds": seconds})
            }
            None => json!({"url": null, "note": "no recording was running"}),
        }))
    }

    #[tool(
        description = "Render a separate song offline (not the live loop) from a prompt; returns the WAV path on the server."
    )]
    async fn render_offline(
        &self,
        Parameters(a): Parameters<OfflineRender>,
    ) -> Result<String, String> {
        let render = self.app.hooks.render_offline.clone();
        let path = tokio::task::spawn_blocking(move || render(&a))
            .await
            .map_err(|e| e.to_string())??;
        Ok(text(json!({"path": path})))
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
pub fn service(app: Arc<App>) -> StreamableHttpService<DemonMcp, LocalSessionManager> {
    StreamableHttpService::new(
        move || Ok(DemonMcp::new(app.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    )
}
