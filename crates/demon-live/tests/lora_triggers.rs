//! Issue 12, item 2: an ACE-Step LoRA's trigger words (from its `NAME.json` sidecar) join the
//! conditioning prompts while the adapter is enabled, and leave them when it is disabled; the
//! conditioning itself changes with them (tiny random-weight ACE-Step fixture).

use candle_core::Device;
use demon_engine::{BackendSet, Prompt};
use demon_live::{BackendFacts, Controls};

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demon-acestep/tests/fixtures")
}

fn states(backend: &mut BackendSet, p: &Prompt) -> Vec<u32> {
    let c = backend.conditioner.condition(p).unwrap();
    let v: Vec<f32> = c.states.flatten_all().unwrap().to_vec1().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

#[test]
fn trigger_words_condition_the_prompt_while_the_adapter_is_on() {
    let dir = std::env::temp_dir().join(format!("demon-lora-triggers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tape.safetensors");
    std::fs::copy(fixtures().join("lora/comfy_lora.safetensors"), &file).unwrap();
    std::fs::write(
        dir.join("tape.json"),
        r#"{"trigger_words": ["tape hiss", "lofi"]}"#,
    )
    .unwrap();
    let model =
        demon_acestep::AceStep::load(&fixtures().join("weights/original"), &Device::Cpu).unwrap();
    let (mut denoiser, codec, conditioner) = model.into_parts();
    denoiser.add_lora(&file, 1.0).unwrap();
    let mut backend = BackendSet {
        name: "acestep".into(),
        denoiser: Box::new(denoiser),
        codec: Box::new(codec),
        conditioner: Box::new(conditioner),
    };
    let facts = BackendFacts::of(&mut backend);
    assert_eq!(
        facts.adapter_triggers.get("tape"),
        Some(&vec!["tape hiss".to_string(), "lofi".to_string()])
    );

    let mut c = Controls::new(Prompt::tags("deep house"), 100);
    let off = c.conditioning_prompts().a;
    assert!(c.set_knob("lora:tape", 0.8, &facts).unwrap().prompts);
    let on = c.conditioning_prompts().a;
    assert_eq!(on.tags, "tape hiss, lofi, deep house");
    assert_ne!(
        states(&mut backend, &on),
        states(&mut backend, &off),
        "the trigger words reach the text encoder"
    );
    assert!(c.set_knob("lora:tape", 0.0, &facts).unwrap().prompts);
    assert_eq!(
        states(&mut backend, &c.conditioning_prompts().a),
        states(&mut backend, &off),
        "disabling gives the conditioning back"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
