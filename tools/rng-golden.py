#!/usr/bin/env python3
"""Independent oracle for demon-engine's noise (crates/demon-engine/src/rng.rs, `golden_values`).

Philox4x32-10 written from the published algorithm (Salmon et al., SC'11; Random123 philox.h
semantics: key bumped by the Weyl constants before rounds 2..10), checked here against the
Random123 known-answer vectors, then Box-Muller evaluated in 60-digit arithmetic (mpmath) and
rounded once to f32. The engine computes Box-Muller in f64 with libm and rounds to f32, so the
two agree unless an exact value lies within an f64 ulp of an f32 rounding boundary.

Run: python3 tools/rng-golden.py   (needs mpmath from PyPI)
"""
import struct

import mpmath

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c, k = list(ctr), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + W0) & MASK, (k[1] + W1) & MASK]
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & MASK, (p0 >> 32) ^ c[3] ^ k[1], p0 & MASK]
    return c


# Random123 tests/kat_vectors (github.com/DEShawResearch/random123, commit 9545ff64, lines 27-29).
KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([MASK] * 4, [MASK] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]
for ctr, key, want in KAT:
    assert philox4x32_10(ctr, key) == want, (ctr, key)

mpmath.mp.dps = 60


def f32_bits(x):
    with mpmath.workprec(24):  # round the exact value once to a 24-bit significand
        y = +x
    return struct.unpack("<I", struct.pack("<f", float(y)))[0]


def box_muller(a, b):
    u1 = (mpmath.mpf(a) + 1) / 2**32
    u2 = mpmath.mpf(b) / 2**32
    r = mpmath.sqrt(-2 * mpmath.log(u1))
    th = 2 * mpmath.pi * u2
    return r * mpmath.cos(th), r * mpmath.sin(th)


# NoiseStream words: Initial = (1, 0), Sde(k) = (2, k).
def normals(seed, stream, n):
    key = [seed & MASK, seed >> 32]
    out = []
    for block in range((n + 3) // 4):
        w = philox4x32_10([block & MASK, block >> 32, stream[0], stream[1]], key)
        out += [*box_muller(w[0], w[1]), *box_muller(w[2], w[3])]
    return out[:n]


for seed, stream, name in [(7, (1, 0), "Initial"), (0x0123456789ABCDEF, (2, 3), "Sde(3)")]:
    key = [seed & MASK, seed >> 32]
    print(f"seed {seed:#x} {name}: words of block 0",
          [f"{w:#010x}" for w in philox4x32_10([0, 0, *stream], key)])
    for i, z in enumerate(normals(seed, stream, 8)):
        print(f"  z[{i}] = {mpmath.nstr(z, 12):>16}  f32 bits {f32_bits(z):#010x}")
