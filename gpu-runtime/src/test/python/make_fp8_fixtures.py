#!/usr/bin/env python3
"""Writes the FP8 reference tables that Fp8FormatTest compares against (no Python at test time).

The independent implementation is ml_dtypes (pinned: ml_dtypes==0.6.0 with numpy==2.4.6), the float8
dtypes JAX and TensorFlow use; PyTorch's float8_e4m3fn / float8_e5m2 follow the same definition.

    python3 -m venv /tmp/fp8venv && /tmp/fp8venv/bin/pip install ml_dtypes==0.6.0 numpy==2.4.6
    /tmp/fp8venv/bin/python gpu-runtime/src/test/python/make_fp8_fixtures.py gpu-runtime/src/test/resources/fp8

Outputs, per format (e4m3 = float8_e4m3fn, e5m2 = float8_e5m2):
  <fmt>_codes.tsv   all 256 codes: code (hex), the float32 bits of its value (hex), the value (repr)
  <fmt>_casts.tsv   float32 inputs (bits, hex) and the code ml_dtypes gives for clip(x, -max, max), i.e.
                    with Transformer Engine's saturation (ml_dtypes itself overflows to NaN / inf);
                    NaN inputs are listed with the expected code "nan" (any NaN code)

Inputs: every code's value, every midpoint between neighbouring values (ties: round to even) and the float32
values just above and below each midpoint, both signs; the subnormal and overflow edges; infinities and NaN;
and 6000 seeded random float32 values over the whole exponent range.
"""
import os
import sys

import ml_dtypes
import numpy as np

FORMATS = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}


def f32_bits(x):
    return int(np.array(x, dtype=np.float32).view(np.uint32))


def code_of(x, dt, fmax):
    """ml_dtypes' round-to-nearest-even code of float32 x after saturation to +-fmax."""
    v = np.array([x], dtype=np.float32)
    v = np.clip(v, np.float32(-fmax), np.float32(fmax))
    return int(v.astype(dt).view(np.uint8)[0])


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20261201)
    for name, dt in FORMATS.items():
        codes = np.arange(256, dtype=np.uint8).view(dt).astype(np.float32)
        fmax = float(ml_dtypes.finfo(dt).max)
        with open(os.path.join(out_dir, name + "_codes.tsv"), "w") as f:
            f.write("# code\tfloat32 bits\tvalue   (ml_dtypes %s, %s)\n" % (ml_dtypes.__version__, dt.__name__))
            for c in range(256):
                f.write("%02x\t%08x\t%r\n" % (c, f32_bits(codes[c]), float(codes[c])))

        finite = sorted({float(v) for v in codes if np.isfinite(v) and v >= 0})
        inputs = []
        for v in finite:
            inputs.append(np.float32(v))
        for lo, hi in zip(finite, finite[1:]):
            mid = np.float32((lo + hi) / 2)  # exact: one bit more than the format
            assert float(mid) == (lo + hi) / 2
            inputs += [mid, np.nextafter(mid, np.float32(-1)), np.nextafter(mid, np.float32(np.inf))]
        step_at_max = finite[-1] - finite[-2]
        edge = [finite[-1] + step_at_max / 2, finite[-1] + step_at_max, 2 * finite[-1], 1e30,
                float(np.finfo(np.float32).max), finite[1] / 2, finite[1] / 4, 1e-30,
                float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).smallest_subnormal)]
        for e in edge:
            e32 = np.float32(e)
            with np.errstate(over="ignore"):  # nextafter(float32 max, inf) is inf, on purpose
                inputs += [e32, np.nextafter(e32, np.float32(-1)), np.nextafter(e32, np.float32(np.inf))]
        inputs += [np.float32(np.inf)]
        rnd = (rng.standard_normal(6000) * np.exp2(rng.integers(-30, 30, 6000))).astype(np.float32)
        inputs += list(rnd)
        inputs += [-x for x in list(inputs)]
        inputs += [np.float32(np.nan), np.float32(-np.nan)]

        with open(os.path.join(out_dir, name + "_casts.tsv"), "w") as f:
            f.write("# float32 bits\tcode   (ml_dtypes %s %s of clip(x, -%r, %r))\n"
                    % (ml_dtypes.__version__, dt.__name__, fmax, fmax))
            seen = set()
            for x in inputs:
                b = f32_bits(x)
                if b in seen:
                    continue
                seen.add(b)
                if np.isnan(x):
                    f.write("%08x\tnan\n" % b)
                else:
                    f.write("%08x\t%02x\n" % (b, code_of(x, dt, fmax)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu-runtime/src/test/resources/fp8")
