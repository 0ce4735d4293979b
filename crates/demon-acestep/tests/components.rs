//! Component parity against the reference forwards (tiny random models, fixtures made by
//! tools/acestep-fixtures/generate.py). Bound: 1e-4 max abs diff in f32.

mod common;

use candle_core::Device;
use common::*;
use demon_acestep::condition::ConditionEncoder;
use demon_acestep::config::{DitConfig, TextEncoderConfig, VaeConfig};
use demon_acestep::dit::Dit;
use demon_acestep::fsq::{AudioDetokenizer, AudioTokenizer};
use demon_acestep::silence::read_silence_latent;
use demon_acestep::text::{PromptTokenizer, TextEncoder};
use demon_acestep::vae::{VaeDecoder, VaeEncoder};
use demon_acestep::weights::ModelFiles;

const BOUND: f32 = 1e-4;

#[test]
fn all_components_match_the_reference() {
    let dev = Device::Cpu;
    let files = ModelFiles::discover(&original(), None).unwrap();
    let r = load("reference.safetensors");
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.dit_config).unwrap()).unwrap();
    let cfg = DitConfig::from_original_json(&cfg_json, &files.dit_config).unwrap();
    let w = files.open_dit(&dev).unwrap();

    // Tokenizer + text encoder
    let tok = PromptTokenizer::from_file(&files.tokenizer_json).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let text = cases["prompt"]["formatted_text"].as_str().unwrap();
    let lyr = cases["prompt"]["formatted_lyrics"].as_str().unwrap();
    let text_ids = tok.encode(text, 256).unwrap();
    assert_eq!(text_ids, ids(&r["text_ids"]));
    let lyric_ids = tok.encode(lyr, 2048).unwrap();
    assert_eq!(lyric_ids, ids(&r["lyric_ids"]));
    let te_cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(files.text_encoder_dir.join("config.json")).unwrap(),
    )
    .unwrap();
    let te_cfg = TextEncoderConfig::from_json(&te_cfg_json, &files.text_encoder_dir).unwrap();
    let te = TextEncoder::load(&files.open_text_encoder(&dev).unwrap(), &te_cfg).unwrap();
    check(
        "text encoder",
        &te.forward(&text_ids).unwrap(),
        &r["text_hidden"],
        BOUND,
    );
    let lyric_embeds = te.embed(&lyric_ids).unwrap();
    check("lyric embeddings", &lyric_embeds, &r["lyric_embeds"], 0.0);

    // Condition encoder
    let ce = ConditionEncoder::load(&w, &cfg).unwrap();
    check(
        "lyric encoder",
        &ce.encode_lyrics(&r["lyric_embeds"], None).unwrap(),
        &r["lyric_encoded"],
        BOUND,
    );
    check(
        "lyric encoder (padded batch)",
        &ce.encode_lyrics(&r["lyric_pad_in"], Some(&r["lyric_pad_mask"]))
            .unwrap(),
        &r["lyric_pad_out"],
        BOUND,
    );
    let silence = read_silence_latent(
        files.silence_latent.as_ref().unwrap(),
        Some(cfg.audio_acoustic_hidden_dim),
    )
    .unwrap();
    let timbre = ce
        .encode_timbre(&silence.narrow(1, 0, 750).unwrap())
        .unwrap();
    check("timbre encoder", &timbre, &r["timbre_out"], BOUND);
    let tm = candle_core::Tensor::ones((1, text_ids.len()), candle_core::DType::F32, &dev).unwrap();
    let lm =
        candle_core::Tensor::ones((1, lyric_ids.len()), candle_core::DType::F32, &dev).unwrap();
    let (enc, _) = ce
        .forward(
            &r["text_hidden"],
            &tm,
            &r["lyric_embeds"],
            &lm,
            &silence.narrow(1, 0, 750).unwrap(),
        )
        .unwrap();
    check(
        "packed conditioning",
        &enc,
        &r["encoder_hidden_states"],
        BOUND,
    );

    // FSQ
    let at = AudioTokenizer::load(&w, &cfg).unwrap();
    let ad = AudioDetokenizer::load(&w, &cfg).unwrap();
    let (q, idx) = at.tokenize(&r["fsq_in"], &silence).unwrap();
    let want_idx: Vec<i64> = ids(&r["fsq_indices"])
        .into_iter()
        .map(|v| v as i64)
        .collect();
    assert_eq!(idx.iter().map(|v| v[0]).collect::<Vec<_>>(), want_idx);
    check("fsq quantized", &q, &r["fsq_quantized"], BOUND);
    check("fsq hint", &ad.forward(&q).unwrap(), &r["fsq_hint"], BOUND);
    check(
        "fsq dequantize",
        &at.quantizer.dequantize(&idx).unwrap().unsqueeze(0).unwrap(),
        &r["fsq_codes_out"],
        BOUND,
    );

    // DiT
    let dit = Dit::load(&w, &cfg).unwrap();
    for (inp, out) in [
        ("dit_inputs.safetensors", "dit_out"),
        ("dit_inputs_r.safetensors", "dit_out_r"),
    ] {
        let i = load(inp);
        let t: Vec<f32> = i["timestep"].to_vec1().unwrap();
        let rr: Vec<f32> = i["timestep_r"].to_vec1().unwrap();
        let states: Vec<_> = (0..2)
            .map(|b| i["encoder_hidden_states"].narrow(0, b, 1).unwrap())
            .collect();
        let y = dit
            .forward(&i["hidden_states"], &t, &rr, &states, &i["context_latents"])
            .unwrap();
        check(out, &y, &r[out], BOUND);
    }

    // VAE
    let vj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files.vae_config).unwrap()).unwrap();
    let vcfg = VaeConfig::from_json(&vj, &files.vae_config).unwrap();
    let vw = files.open_vae(&dev).unwrap();
    let dec = VaeDecoder::load(&vw, &vcfg).unwrap();
    check(
        "vae decode",
        &dec.forward(&load("vae_decode_inputs.safetensors")["latents"])
            .unwrap(),
        &r["vae_decoded"],
        BOUND,
    );
    let encd = VaeEncoder::load(&vw, &vcfg).unwrap();
    check(
        "vae encode",
        &encd
            .forward(&load("vae_encode_inputs.safetensors")["sample"])
            .unwrap(),
        &r["vae_encoded_mean"],
        BOUND,
    );
}
