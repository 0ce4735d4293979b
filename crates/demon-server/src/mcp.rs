//! MCP for agents (rmcp, streamable HTTP at `/mcp`): every control of the live session as a
//! tool, with descriptions written for a language model performing with the instrument.

use std::collections::BTreeMap;
use std::sync::Arc;

use demon_engine::CurveSpec;
use demon_live::control::ControlMessage;
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
        description = "Change prompt A, prompt B, the negative prompt, tempo or key. Omitted fields stay as they are."
    )]
    async fn set_prompt(&self, Parameters(a): Parameters<PromptArgs>) -> ToolResult {
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
    async fn set_prompt_blend(&self, Parameters(a): Parameters<BlendArgs>) -> ToolResult {
        self.control(ControlMessage::SetKnob {
            name: "blend".into(),
            value: a.value,
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

    #[tool(description = "Weight adapters (LoRA) the backend has, with their strengths.")]
    async fn list_loras(&self) -> ToolResult {
        answer(self.svc.state().map(|s| s.adapters))
    }

    #[tool(
        description = "Enable a LoRA adapter at a strength (default 1). Heard from the next model call on."
    )]
    async fn enable_lora(&self, Parameters(a): Parameters<LoraArgs>) -> ToolResult {
        self.control(ControlMessage::SetLora {
            id: a.id,
            strength: a.strength.unwrap_or(1.0),
        })
        .await
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
        let svc = self.svc.clone();
        let source = match tokio::task::spawn_blocking(move || svc.source_by_name(&a.source)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return answer::<()>(Err(e)),
            Err(e) => {
                return answer::<()>(Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("internal error: {e}"),
                )));
            }
        };
        self.control(ControlMessage::SetSource { source }).await
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
