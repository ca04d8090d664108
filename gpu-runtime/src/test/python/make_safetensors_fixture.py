#!/usr/bin/python3
"""Writes the reference-layout safetensors fixture read by SafeTensorsReferenceTest.

Deliberately does NOT use the `safetensors` package: the bytes are laid out by hand following the published
format, mimicking what the reference (Rust) serializer emits:
  * 8-byte little-endian header length N, then N bytes of compact JSON (serde_json style: no spaces),
    padded with trailing spaces to a multiple of 8, then the raw little-endian data;
  * "__metadata__" first, then tensors in data order; data order = dtype descending in the reference's
    Dtype enum order (I64 > F32 > I32 > BF16 > F16 > F8_E4M3), ties broken by name.
Every value is exactly representable in its dtype, so the Java test compares bit patterns.

Run from the repository root:  /usr/bin/python3 gpu-runtime/src/test/python/make_safetensors_fixture.py
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "resources", "safetensors", "reference.safetensors")

# (name, dtype, shape, raw little-endian bytes)
TENSORS = [
    ("emb.i64", "I64", [3], struct.pack("<3q", -1, 2**40 + 3, 7)),
    ("a.f32", "F32", [2, 3], struct.pack("<6f", 0.5, -1.25, 3.0, 1024.0, -0.0078125, 65504.0)),
    ("empty", "F32", [0, 4], b""),
    ("scalar", "F32", [], struct.pack("<f", 2.5)),
    ("ids", "I32", [5], struct.pack("<5i", 0, 1, -2, 2**31 - 1, -2**31)),
    # bfloat16 bit patterns: 1.0, -2.0, 0.5, 3.140625
    ("w.bf16", "BF16", [2, 2], struct.pack("<4H", 0x3F80, 0xC000, 0x3F00, 0x4049)),
    # IEEE half bit patterns: 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal)
    ("h.f16", "F16", [4], struct.pack("<4H", 0x3C00, 0xC000, 0x7BFF, 0x0001)),
    # float8 e4m3 bit patterns: 1.0, -1.0
    ("f8.e4m3", "F8_E4M3", [2], bytes([0x38, 0xB8])),
]


def main():
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, data in TENSORS:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(OUT, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, data in TENSORS:
            f.write(data)
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
