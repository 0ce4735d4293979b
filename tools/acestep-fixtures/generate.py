#!/usr/bin/env python3
"""Build the tiny ACE-Step 1.5 parity fixtures for `crates/demon-acestep/tests/`.

What it does
  * builds TINY random-weight models from the reference classes shipped in PyPI packages:
    diffusers (AceStepTransformer1DModel, AceStepConditionEncoder, AceStepAudioTokenizer,
    AceStepAudioTokenDetokenizer, AutoencoderOobleck, AceStepPipeline) and transformers
    (Qwen3Model); the tokenizer is a small byte-level BPE trained here with `tokenizers`,
    shaped like Qwen3's tokenizer.json (same pre-tokenizer regex, appended <|endoftext|>);
  * saves the same weights in BOTH checkpoint layouts: the original ACE-Step layout
    (acestep-v15-turbo/{config.json, model.safetensors shards + index, silence_latent.pt},
    vae/, Qwen3-Embedding-0.6B/) and the diffusers layout (pipeline.save_pretrained);
  * runs the reference forwards on fixed inputs and stores inputs and outputs as safetensors;
  * makes a PEFT LoRA adapter for the transformer and stores the reference merged weights.

Run (CPU is enough, takes well under a minute):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -r tools/acestep-fixtures/requirements.txt
    /tmp/venv/bin/python tools/acestep-fixtures/generate.py
Output: crates/demon-acestep/tests/fixtures/ (overwritten).
"""

import json
import math
import os
import shutil
import sys
import zlib

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
from diffusers.pipelines.ace_step.modeling_ace_step import (
    AceStepAudioTokenDetokenizer,
    AceStepAudioTokenizer,
    AceStepConditionEncoder,
)
from diffusers.pipelines.ace_step.pipeline_ace_step import AceStepPipeline
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "demon-acestep", "tests", "fixtures")

torch.manual_seed(1234)
torch.set_grad_enabled(False)

# ---------------------------------------------------------------- tiny sizes
LATENT = 8  # latent channels (64 in the real model)
ENC = 32  # condition-encoder width (2048)
DIT = 64  # decoder width (2048 / 2560); != ENC like the XL model
DIT_HEADS, DIT_KV, DIT_HEAD_DIM = 6, 2, 16  # q width 96 != DIT, GQA 3:1 (XL: 32 x 128 vs 2560)
ENC_HEADS, ENC_KV, ENC_HEAD_DIM = 4, 2, 8
WINDOW = 3  # sliding window (128); small so the band is exercised
TEXT_HIDDEN = 24  # Qwen3 width (1024)
VAE_RATIOS = [2, 6]  # hop 12 (1920)
VAE_SR = 12 * 25  # keeps 25 latent frames per second
SILENCE_FRAMES = 15000

# ---------------------------------------------------------------- tokenizer
# The pre-tokenizer split pattern used by Qwen2/Qwen3 tokenizer.json files.
SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
CORPUS = [
    "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n# Caption\n",
    "# Metas\n- bpm: 120\n- timesignature: 4\n- keyscale: A minor\n- duration: 30 seconds\n",
    "# Languages\nen\n\n# Lyric\n[verse]\nHello darkness my old friend\n[chorus]\nla la la\n",
    "deep house, warm pads, punchy kick, rolling bassline, female vocals, 2000s",
    "Generate audio semantic tokens based on the given conditions: Repaint the mask area",
    "lofi hip hop, dusty drums, mellow piano, vinyl crackle, rain, N/A",
]


def build_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0 <|endoftext|>:0",
        pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eos)],
    )
    return tok


# ---------------------------------------------------------------- helpers
def perturb(module, norm_scale=0.1, bias_scale=0.05):
    """Random weights everywhere (norm gains and biases too, so no parameter stays at its
    neutral default and a mis-mapped tensor is always visible in the outputs)."""
    g = torch.Generator().manual_seed(zlib.crc32(type(module).__name__.encode()))
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if "norm" in name and name.endswith("weight") and p.ndim == 1:
            p.data = 1.0 + norm_scale * noise
        elif name.endswith("bias"):
            p.data = bias_scale * noise
        elif name.endswith("alpha") or name.endswith("beta"):
            p.data = 0.2 * noise
        elif name.endswith("weight_g"):
            p.data = p.data * (1.0 + 0.2 * noise.abs())
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            p.data = noise / math.sqrt(fan_in)
        else:
            p.data = 0.5 * noise


def f32(d):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in d.items()}


def rename_to_original(prefix, name):
    """diffusers tensor name -> original ACE-Step checkpoint name (acestep.md §3.3)."""
    parts = name.split(".")
    out = []
    i = 0
    while i < len(parts):
        p = parts[i]
        m = {
            "to_q": "q_proj",
            "to_k": "k_proj",
            "to_v": "v_proj",
            "norm_q": "q_norm",
            "norm_k": "k_norm",
            "proj_in_conv": "proj_in.1",
            "proj_out_conv": "proj_out.1",
        }.get(p, p)
        if p == "to_out" and i + 1 < len(parts) and parts[i + 1] == "0":
            m = "o_proj"
            i += 1
        out.append(m)
        i += 1
    return prefix + ".".join(out)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    print("diffusers", diffusers.__version__, "torch", torch.__version__)

    # ------------------------------------------------------------ models
    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")

    qcfg = Qwen3Config(
        vocab_size=vocab,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    text_encoder = Qwen3Model(qcfg).eval()
    perturb(text_encoder)

    common = dict(
        num_attention_heads=ENC_HEADS,
        num_key_value_heads=ENC_KV,
        head_dim=ENC_HEAD_DIM,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        sliding_window=WINDOW,
    )
    condition_encoder = AceStepConditionEncoder(
        hidden_size=ENC,
        intermediate_size=64,
        text_hidden_dim=TEXT_HIDDEN,
        timbre_hidden_dim=LATENT,
        num_lyric_encoder_hidden_layers=3,
        num_timbre_encoder_hidden_layers=2,
        **common,
    ).eval()
    perturb(condition_encoder)
    g = torch.Generator().manual_seed(7)
    # A smooth, non-zero "silence" so every consumer of it is checked.
    t = torch.arange(SILENCE_FRAMES, dtype=torch.float32)[None, :, None]
    ch = torch.arange(LATENT, dtype=torch.float32)[None, None, :]
    silence = 0.3 * torch.sin(0.01 * t * (ch + 1)) + 0.05 * torch.randn(1, SILENCE_FRAMES, LATENT, generator=g)
    condition_encoder.silence_latent.copy_(silence)

    audio_tokenizer = AceStepAudioTokenizer(
        hidden_size=ENC,
        intermediate_size=64,
        audio_acoustic_hidden_dim=LATENT,
        pool_window_size=5,
        fsq_dim=ENC,
        fsq_input_levels=[8, 8, 8, 5, 5, 5],
        fsq_input_num_quantizers=1,
        num_attention_pooler_hidden_layers=2,
        **common,
    ).eval()
    perturb(audio_tokenizer)
    detokenizer = AceStepAudioTokenDetokenizer(
        hidden_size=ENC,
        intermediate_size=64,
        audio_acoustic_hidden_dim=LATENT,
        pool_window_size=5,
        num_attention_pooler_hidden_layers=2,
        **common,
    ).eval()
    perturb(detokenizer)

    transformer = AceStepTransformer1DModel(
        hidden_size=DIT,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=DIT_HEADS,
        num_key_value_heads=DIT_KV,
        head_dim=DIT_HEAD_DIM,
        in_channels=3 * LATENT,
        audio_acoustic_hidden_dim=LATENT,
        patch_size=2,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        sliding_window=WINDOW,
        encoder_hidden_size=ENC,
        is_turbo=True,
        model_version="turbo",
    ).eval()
    perturb(transformer)

    vae = AutoencoderOobleck(
        encoder_hidden_size=2 * LATENT,
        downsampling_ratios=VAE_RATIOS,
        channel_multiples=[1, 2],
        decoder_channels=4,
        decoder_input_channels=LATENT,
        audio_channels=2,
        sampling_rate=VAE_SR,
    ).eval()
    perturb(vae)

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    pipe = AceStepPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=hf_tok,
        transformer=transformer,
        condition_encoder=condition_encoder,
        scheduler=scheduler,
        audio_tokenizer=audio_tokenizer,
        audio_token_detokenizer=detokenizer,
    )

    # ------------------------------------------------------------ diffusers layout
    wdir = os.path.join(OUT, "weights")
    ddir = os.path.join(wdir, "diffusers")
    pipe.save_pretrained(ddir, safe_serialization=True)
    # The safetensors are what we read; drop what the Rust side never opens.
    for extra in ["tokenizer/special_tokens_map.json"]:
        p = os.path.join(ddir, extra)
        if os.path.exists(p):
            os.remove(p)

    # ------------------------------------------------------------ original layout
    odir = os.path.join(wdir, "original")
    dit_dir = os.path.join(odir, "acestep-v15-turbo")
    os.makedirs(dit_dir)
    state = {}
    for k, v in transformer.state_dict().items():
        state[rename_to_original("decoder.", k)] = v
    for k, v in condition_encoder.state_dict().items():
        if k == "silence_latent":
            continue
        if k == "null_condition_emb":
            state[k] = v
        else:
            state[rename_to_original("encoder.", k)] = v
    for k, v in audio_tokenizer.state_dict().items():
        state[rename_to_original("tokenizer.", k)] = v
    for k, v in detokenizer.state_dict().items():
        state[rename_to_original("detokenizer.", k)] = v
    state = f32(state)
    # Two shards + index, like the XL checkpoint.
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: state[k] for k in keys}, os.path.join(dit_dir, fname), metadata={"format": "pt"})
        for k in keys:
            weight_map[k] = fname
    total = sum(v.numel() * 4 for v in state.values())
    with open(os.path.join(dit_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    config = {
        "model_type": "acestep",
        "architectures": ["AceStepConditionGenerationModel"],
        "model_version": "turbo",
        "is_turbo": True,
        "hidden_size": DIT,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": DIT_HEADS,
        "num_key_value_heads": DIT_KV,
        "head_dim": DIT_HEAD_DIM,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "use_sliding_window": True,
        "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "in_channels": 3 * LATENT,
        "audio_acoustic_hidden_dim": LATENT,
        "patch_size": 2,
        "text_hidden_dim": TEXT_HIDDEN,
        "timbre_hidden_dim": LATENT,
        "timbre_fix_frame": 750,
        "num_lyric_encoder_hidden_layers": 3,
        "num_timbre_encoder_hidden_layers": 2,
        "num_attention_pooler_hidden_layers": 2,
        "pool_window_size": 5,
        "fsq_dim": ENC,
        "fsq_input_levels": [8, 8, 8, 5, 5, 5],
        "fsq_input_num_quantizers": 1,
        "encoder_hidden_size": ENC,
        "encoder_intermediate_size": 64,
        "encoder_num_attention_heads": ENC_HEADS,
        "encoder_num_key_value_heads": ENC_KV,
        "encoder_head_dim": ENC_HEAD_DIM,
        "dtype": "float32",
    }
    with open(os.path.join(dit_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    # silence_latent.pt: the published file stores [1, C, T].
    torch.save(silence.transpose(1, 2).contiguous(), os.path.join(dit_dir, "silence_latent.pt"))

    vdir = os.path.join(odir, "vae")
    vae.save_pretrained(vdir, safe_serialization=True)
    qdir = os.path.join(odir, "Qwen3-Embedding-0.6B")
    text_encoder.save_pretrained(qdir, safe_serialization=True)
    tok.save(os.path.join(qdir, "tokenizer.json"))
    for d in (ddir, odir):
        for root, _, files in os.walk(d):
            for fn in files:
                if fn == "generation_config.json":
                    os.remove(os.path.join(root, fn))

    # ------------------------------------------------------------ reference outputs
    cases = {}
    tensors = {}

    # Text encoder + lyric/timbre encoders + packing, through the pipeline's own prompt code.
    caption = "deep house, warm pads, punchy kick"
    lyrics = "[verse]\nHello darkness my old friend\n[chorus]\nla la la la"
    duration = 0.52  # 13 latent frames (odd T)
    fmt_text, fmt_lyrics = pipe._format_prompt(
        prompt=caption,
        lyrics=lyrics,
        vocal_language="en",
        audio_duration=duration,
        instruction=None,
        bpm=120,
        keyscale="A minor",
        timesignature="4",
    )
    cases["prompt"] = {
        "caption": caption,
        "lyrics": lyrics,
        "language": "en",
        "bpm": 120,
        "keyscale": "A minor",
        "timesignature": 4,
        "duration": duration,
        "formatted_text": fmt_text,
        "formatted_lyrics": fmt_lyrics,
    }
    th, tm, lh, lm = pipe.encode_prompt(
        prompt=[caption],
        lyrics=[lyrics],
        device="cpu",
        vocal_language=["en"],
        audio_duration=duration,
        instruction=None,
        bpm=120,
        keyscale="A minor",
        timesignature="4",
    )
    text_ids = hf_tok([fmt_text]).input_ids
    lyric_ids = hf_tok([fmt_lyrics]).input_ids
    tensors["text_ids"] = torch.tensor(text_ids, dtype=torch.float32)
    tensors["lyric_ids"] = torch.tensor(lyric_ids, dtype=torch.float32)
    tensors["text_hidden"] = th
    tensors["lyric_embeds"] = lh
    tensors["lyric_encoded"] = condition_encoder.lyric_encoder(inputs_embeds=lh, attention_mask=lm)
    timbre_in = condition_encoder.silence_latent[:, :750, :]
    timbre, _ = condition_encoder.timbre_encoder(timbre_in, torch.zeros(1, dtype=torch.long))
    tensors["timbre_out"] = timbre
    enc, enc_mask = condition_encoder(
        text_hidden_states=th,
        text_attention_mask=tm,
        lyric_hidden_states=lh,
        lyric_attention_mask=lm,
        refer_audio_acoustic_hidden_states_packed=timbre_in,
        refer_audio_order_mask=torch.zeros(1, dtype=torch.long),
    )
    tensors["encoder_hidden_states"] = enc
    tensors["text_projected"] = condition_encoder.text_projector(th)
    # A lyric sequence with padding (batch of two) checks the key padding mask.
    pad_embeds = torch.randn(2, 7, TEXT_HIDDEN, generator=g)
    pad_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    tensors["lyric_pad_in"] = pad_embeds
    tensors["lyric_pad_mask"] = pad_mask.float()
    tensors["lyric_pad_out"] = condition_encoder.lyric_encoder(inputs_embeds=pad_embeds, attention_mask=pad_mask)
    # condition-encoder debug harness inputs (reference forward argument names)
    save_file(
        f32(
            {
                "text_hidden_states": th,
                "text_attention_mask": tm.float(),
                "lyric_hidden_states": lh,
                "lyric_attention_mask": lm.float(),
                "refer_audio_acoustic_hidden_states_packed": timbre_in,
            }
        ),
        os.path.join(OUT, "condition_encoder_inputs.safetensors"),
    )
    save_file(f32({"input_ids": tensors["text_ids"]}), os.path.join(OUT, "text_encoder_inputs.safetensors"))

    # FSQ round trip (T = 23: not a multiple of 5, padded with silence frames).
    fsq_in = torch.randn(1, 23, LATENT, generator=g)
    quantized, indices = audio_tokenizer.tokenize(fsq_in, condition_encoder.silence_latent)
    hint = detokenizer(quantized)
    tensors["fsq_in"] = fsq_in
    tensors["fsq_quantized"] = quantized
    tensors["fsq_indices"] = indices.to(torch.float32)
    tensors["fsq_hint"] = hint
    tensors["fsq_codes_out"] = audio_tokenizer.quantizer.get_output_from_indices(indices)
    save_file(f32({"hidden_states": fsq_in}), os.path.join(OUT, "fsq_inputs.safetensors"))

    # DiT forward: odd T, two different rows, sliding + full layers, t != r in case b.
    T = 13
    dit_in = {
        "hidden_states": torch.randn(2, T, LATENT, generator=g),
        "timestep": torch.tensor([0.9, 0.35]),
        "timestep_r": torch.tensor([0.9, 0.35]),
        "encoder_hidden_states": torch.randn(2, 9, ENC, generator=g),
        "context_latents": torch.randn(2, T, 2 * LATENT, generator=g),
    }
    tensors["dit_out"] = transformer(**dit_in, return_dict=False)[0]
    save_file(f32(dit_in), os.path.join(OUT, "dit_inputs.safetensors"))
    dit_in_r = dict(dit_in)
    dit_in_r["timestep_r"] = torch.tensor([0.6, 0.1])
    tensors["dit_out_r"] = transformer(**dit_in_r, return_dict=False)[0]
    save_file(f32(dit_in_r), os.path.join(OUT, "dit_inputs_r.safetensors"))

    # VAE.
    lat = torch.randn(1, LATENT, 10, generator=g) * 0.5
    tensors["vae_decoded"] = vae.decode(lat).sample
    save_file(f32({"latents": lat}), os.path.join(OUT, "vae_decode_inputs.safetensors"))
    audio = 0.5 * torch.sin(torch.arange(240, dtype=torch.float32) * 0.07)[None, None, :].repeat(1, 2, 1)
    audio[:, 1] *= -0.7
    audio = audio + 0.05 * torch.randn(1, 2, 240, generator=g)
    tensors["vae_encoded_mean"] = vae.encode(audio).latent_dist.mean
    save_file(f32({"sample": audio}), os.path.join(OUT, "vae_encode_inputs.safetensors"))

    # Whole 8-step turbo generation through the reference pipeline with injected noise.
    noise = torch.randn(1, T, LATENT, generator=g)
    gen = pipe(
        prompt=caption,
        lyrics=lyrics,
        audio_duration=duration,
        vocal_language="en",
        num_inference_steps=8,
        guidance_scale=1.0,
        shift=3.0,
        latents=noise.clone(),
        output_type="latent",
        bpm=120,
        keyscale="A minor",
        timesignature="4",
    ).audios
    tensors["gen_noise"] = noise
    tensors["gen_latent"] = gen
    tensors["gen_timesteps"] = pipe._get_timestep_schedule(num_inference_steps=8, shift=3.0)
    cases["gen_shift"] = 3.0

    # ------------------------------------------------------------ LoRA (PEFT)
    from peft import LoraConfig, get_peft_model

    lora_base = AceStepTransformer1DModel.from_pretrained(os.path.join(ddir, "transformer")).eval()
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], lora_dropout=0.0)
    peft_model = get_peft_model(lora_base, lcfg)
    gl = torch.Generator().manual_seed(99)
    for n, p in peft_model.named_parameters():
        if "lora_" in n:
            p.data = 0.3 * torch.randn(p.shape, generator=gl)
    ldir = os.path.join(OUT, "lora", "peft")
    peft_model.save_pretrained(ldir, safe_serialization=True)
    os.remove(os.path.join(ldir, "README.md"))
    # PEFT writes target_modules from a set (order varies run to run): sort it for reproducibility.
    with open(os.path.join(ldir, "adapter_config.json")) as f:
        pcfg = json.load(f)
    pcfg["target_modules"] = sorted(pcfg["target_modules"])
    with open(os.path.join(ldir, "adapter_config.json"), "w") as f:
        json.dump(pcfg, f, indent=2, sort_keys=True)
    # The same adapter as an upstream ACE-Step trainer writes it (original module names).
    adapter = {}
    from safetensors.torch import load_file

    raw = load_file(os.path.join(ldir, "adapter_model.safetensors"))
    for k, v in raw.items():
        inner = k[len("base_model.model.") :]
        adapter["base_model.model." + rename_to_original("", inner)] = v
    udir = os.path.join(OUT, "lora", "upstream")
    os.makedirs(udir)
    save_file(adapter, os.path.join(udir, "adapter_model.safetensors"))
    with open(os.path.join(ldir, "adapter_config.json")) as f:
        acfg = json.load(f)
    acfg["target_modules"] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    with open(os.path.join(udir, "adapter_config.json"), "w") as f:
        json.dump(acfg, f, indent=1)
    # ComfyUI-style single file: diffusion_model. prefix, lora_down/lora_up, per-module alpha.
    comfy = {}
    for k, v in adapter.items():
        inner = k[len("base_model.model.") :]
        mod = inner.rsplit(".lora_", 1)[0]
        which = "lora_down" if ".lora_A." in inner else "lora_up"
        comfy[f"diffusion_model.decoder.{mod}.{which}.weight"] = v
        comfy[f"diffusion_model.decoder.{mod}.alpha"] = torch.tensor(8.0)
    save_file(comfy, os.path.join(OUT, "lora", "comfy_lora.safetensors"))
    # Reference: PEFT's own merge at scale 1 and at scale 0.5.
    merged = {}
    layer_names = [
        f"layers.{i}.{a}.{m}.weight"
        for i in range(4)
        for a in ("self_attn", "cross_attn")
        for m in ("to_q", "to_k", "to_v", "to_out.0")
    ]
    peft_model.set_adapter("default")
    full = peft_model.merge_and_unload()
    sd = full.state_dict()
    for n in layer_names:
        merged[rename_to_original("decoder.", n)] = sd[n]
    lora_out = full(**dit_in, return_dict=False)[0]
    save_file(f32(merged), os.path.join(OUT, "lora", "merged_reference.safetensors"))
    tensors["lora_dit_out"] = lora_out

    save_file(f32(tensors), os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
    size = 0
    for root, _, files in os.walk(OUT):
        size += sum(os.path.getsize(os.path.join(root, fn)) for fn in files)
    print(f"fixtures written to {OUT}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
