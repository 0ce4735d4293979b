"""Side-by-side CPU speed of the ACE-Step 1.5 DiT forward: PyTorch eager fp32 (the diffusers
transformer class, the timing oracle) against ours, on the same seeded random weights and the same
inputs, in one run, alternating call by call.

The model is the 20 M configuration of issue 13: hidden 512, 4 layers (sliding and full attention
alternating), 8 query / 4 key-value heads of 64, MLP 1536, T = 250 latent frames (125 patches),
an encoder sequence of 64 tokens. Both sides use 2 threads. The weights are written with
`save_pretrained` (diffusers layout) and read by our `dit_speed` example, which answers
`time B` on stdin with the wall time of one `Denoiser::velocity` call at batch B (the engine's
DiT call: cross-attention keys/values cached per conditioning, as in steady state; PyTorch
recomputes them, about 0.3 % of its FLOPs here).

Run it through run.sh (one command, builds the binary and the pinned environment):
    tools/cpu-vs-pytorch/run.sh [--reps N] [--precisions f32,bf16]
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file

import diffusers
from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

CONFIG = dict(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    in_channels=192,
    audio_acoustic_hidden_dim=64,
    patch_size=2,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    sliding_window=128,
    encoder_hidden_size=512,
    is_turbo=True,
    model_version="turbo",
)
FRAMES = 250
ENC_LEN = 64
BATCHES = (1, 4, 8)
THREADS = 2


def seeded_model(seed):
    """The model with every parameter drawn from a seeded generator (no parameter left at a
    neutral default such as a zero-initialised projection, so both sides compute real work)."""
    torch.manual_seed(seed)
    model = AceStepTransformer1DModel(**CONFIG).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight") and p.ndim == 1:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            elif p.ndim >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * noise)
    return model


def inputs(seed, rows):
    g = torch.Generator().manual_seed(seed + 1)
    c = CONFIG["audio_acoustic_hidden_dim"]
    return {
        "hidden_states": torch.randn(rows, FRAMES, c, generator=g),
        "context_latents": torch.randn(rows, FRAMES, CONFIG["in_channels"] - c, generator=g),
        "encoder_hidden_states": torch.randn(rows, ENC_LEN, CONFIG["encoder_hidden_size"], generator=g),
        "timestep": torch.linspace(1.0, 0.3, rows),
    }


class Ours:
    """Our `dit_speed` example as a subprocess answering one command per line."""

    def __init__(self, binary, model_dir, inputs_path, precision):
        env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS), CANDLE_NUM_THREADS="1")
        self.p = subprocess.Popen(
            [binary, model_dir, inputs_path, precision],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = self.reply()
        if not ready.get("ready"):
            raise RuntimeError(f"dit_speed did not start: {ready}")

    def reply(self):
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"dit_speed exited with {self.p.wait()}")
        return json.loads(line)

    def ask(self, command):
        self.p.stdin.write(command + "\n")
        self.p.stdin.flush()
        return self.reply()

    def time_ms(self, b):
        return self.ask(f"time {b}")["ms"]

    def close(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        self.p.wait(timeout=60)


def torch_time_ms(model, inp, b):
    args = {k: v[:b] for k, v in inp.items()}
    args["timestep_r"] = args["timestep"]
    t = time.perf_counter()
    model(**args, return_dict=False)
    return (time.perf_counter() - t) * 1e3


def summary(v):
    return {"median_ms": statistics.median(v), "min_ms": min(v), "runs_ms": v}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="path of the built dit_speed example")
    ap.add_argument("--out", help="JSON report path")
    ap.add_argument("--reps", type=int, default=15, help="timed calls per side and batch")
    ap.add_argument("--precisions", default="f32", help="our CPU precisions to time: f32,bf16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    precisions = [p for p in args.precisions.split(",") if p]

    model = seeded_model(args.seed)
    inp = inputs(args.seed, max(BATCHES))
    work = tempfile.mkdtemp(prefix="cpu-vs-pytorch-")
    model_dir = os.path.join(work, "transformer")
    model.save_pretrained(model_dir, safe_serialization=True)
    inputs_path = os.path.join(work, "inputs.safetensors")
    save_file({k: v.contiguous() for k, v in inp.items()}, inputs_path)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f} M parameters, T = {FRAMES}, L = {ENC_LEN}, {THREADS} threads", file=sys.stderr)

    ours = {p: Ours(args.bin, model_dir, inputs_path, p) for p in precisions}
    b_max = max(BATCHES)
    with torch.inference_mode():
        # Same computation on both sides: our velocity against PyTorch's at the largest batch.
        full = {k: v[:b_max] for k, v in inp.items()}
        full["timestep_r"] = full["timestep"]
        want = model(**full, return_dict=False)[0]
        parity = {}
        for p, o in ours.items():
            dump = os.path.join(work, f"ours-{p}.safetensors")
            o.ask(f"dump {b_max} {dump}")
            from safetensors.torch import load_file

            got = load_file(dump)["velocity"]
            parity[p] = {
                "max_abs_diff": float((got - want).abs().max()),
                "max_abs_reference": float(want.abs().max()),
            }
            print(f"parity {p}: max |ours − torch| = {parity[p]['max_abs_diff']:.3g} "
                  f"(reference scale {parity[p]['max_abs_reference']:.3g})", file=sys.stderr)
        # Warm-up: two calls per side and batch.
        for b in BATCHES:
            for _ in range(2):
                torch_time_ms(model, inp, b)
                for o in ours.values():
                    o.time_ms(b)
        times = {b: {"torch": [], **{f"ours_{p}": [] for p in precisions}} for b in BATCHES}
        for rep in range(args.reps):
            for b in BATCHES:
                sides = ["torch"] + [f"ours_{p}" for p in precisions]
                if rep % 2 == 1:
                    sides.reverse()
                for side in sides:
                    if side == "torch":
                        ms = torch_time_ms(model, inp, b)
                    else:
                        ms = ours[side[len("ours_"):]].time_ms(b)
                    times[b][side].append(ms)
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    for o in ours.values():
        o.close()

    report = {
        "what": "DiT forward wall time, PyTorch eager fp32 vs ours, same weights and inputs, alternating",
        "config": CONFIG,
        "frames": FRAMES,
        "encoder_len": ENC_LEN,
        "parameters": params,
        "threads": THREADS,
        "reps": args.reps,
        "seed": args.seed,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "parity": parity,
        "batches": {},
    }
    for b in BATCHES:
        row = {side: summary(v) for side, v in times[b].items()}
        for p in precisions:
            o, t = row[f"ours_{p}"], row["torch"]
            row[f"ratio_{p}"] = {
                "median": o["median_ms"] / t["median_ms"],
                "min": o["min_ms"] / t["min_ms"],
            }
        report["batches"][str(b)] = row
    print(f"{'B':>2} {'torch med/min ms':>18} " + " ".join(f"{'ours ' + p + ' med/min':>20} {'ratio med/min':>14}" for p in precisions))
    for b in BATCHES:
        r = report["batches"][str(b)]
        line = f"{b:>2} {r['torch']['median_ms']:8.1f}/{r['torch']['min_ms']:8.1f} "
        for p in precisions:
            o, q = r[f"ours_{p}"], r[f"ratio_{p}"]
            line += f"{o['median_ms']:10.1f}/{o['min_ms']:8.1f} {q['median']:7.3f}/{q['min']:6.3f} "
        print(line)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
