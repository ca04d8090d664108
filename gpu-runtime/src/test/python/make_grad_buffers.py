#!/usr/bin/env python3
"""Gradient buffer layouts from Megatron Core's own code, for GradBufferTest.

Megatron's _ParamAndGradBuffer.__init__ (megatron/core/distributed/param_and_grad_buffer.py) first computes,
without touching torch, where every parameter goes in the buffer and where each bucket starts and ends
(reverse parameter order, bucket_size, the distributed optimizer's padding of parameter starts to 64 and of
bucket ends to lcm(dp, 128), a shared embedding in a bucket of its own); then it allocates tensors. This
script takes the source of exactly that first part from the installed megatron-core package (ast: from the
`_pad` helper to `assert self.numel_unpadded <= self.numel`), runs it on parameters that only have a size
and a shared_embedding flag, and writes the index map and bucket bounds of a set of cases to
gpu-runtime/src/test/resources/megatron/grad_buffers.json.

    python3 -m venv /tmp/mcore && /tmp/mcore/bin/pip install --no-deps megatron-core==0.16.1
    /tmp/mcore/bin/python gpu-runtime/src/test/python/make_grad_buffers.py
"""
import ast
import importlib.metadata
import importlib.util
import json
import math
import os
import types

VERSION = importlib.metadata.version("megatron-core")
ROOT = list(importlib.util.find_spec("megatron").submodule_search_locations)[0]
SOURCE = os.path.join(ROOT, "core", "distributed", "param_and_grad_buffer.py")


def layout_function():
    tree = ast.parse(open(SOURCE).read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_ParamAndGradBuffer")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    body = init.body
    start = next(i for i, s in enumerate(body) if isinstance(s, ast.FunctionDef) and s.name == "_pad")
    end = next(i for i, s in enumerate(body)
               if isinstance(s, ast.Assert) and "numel_unpadded" in ast.unparse(s))
    fn = ast.FunctionDef(
        name="layout",
        args=ast.arguments(posonlyargs=[], args=[ast.arg("self"), ast.arg("params"), ast.arg("bucket_size")],
                           kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=body[start:end + 1], decorator_list=[], returns=None, type_params=[])
    module = ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))
    ns = {"math": math}
    exec(compile(module, SOURCE, "exec"), ns)
    return ns["layout"]


class Param:
    def __init__(self, n, shared):
        self.data = types.SimpleNamespace(nelement=lambda: n)
        if shared:
            self.shared_embedding = True


def run(layout, sizes, shared, dp, distopt, bucket_size):
    self = types.SimpleNamespace(
        ddp_config=types.SimpleNamespace(use_distributed_optimizer=distopt, pad_buckets_for_high_nccl_busbw=False),
        data_parallel_world_size=dp, param_index_map={}, bucket_indices=[])
    params = [Param(n, i in shared) for i, n in enumerate(sizes)]
    layout(self, params, bucket_size)
    return {
        "sizes": sizes, "shared": sorted(shared), "dp": dp, "distributed_optimizer": distopt,
        "bucket_size": bucket_size,
        "param_start": [self.param_index_map[p][0] for p in params],
        "param_bucket": [self.param_index_map[p][2] for p in params],
        "buckets": [list(b) for b in self.bucket_indices],
        "numel": self.numel,
    }


def main():
    layout = layout_function()
    gpt2ish = [4608, 384, 96, 96, 2304, 96, 768, 96, 96, 96, 1536, 384, 1536, 96, 96, 96, 2304, 96, 768, 96, 96, 96,
               1536, 384, 1536, 96, 96, 96]
    odd = [7, 1, 130, 65, 64, 3, 1000, 129]
    cases = []
    for sizes, shared in [(gpt2ish, []), (gpt2ish, [0]), (odd, []), (odd, [len(odd) - 1]), (odd, [0, 3])]:
        for dp in [1, 2, 3, 4, 8]:
            for distopt in [False, True]:
                for bucket_size in [None, 1, 500, 2000, 6000]:
                    cases.append(run(layout, sizes, set(shared), dp, distopt, bucket_size))
    out = os.path.join(os.path.dirname(__file__), "..", "resources", "megatron", "grad_buffers.json")
    with open(out, "w") as f:
        json.dump({"megatron_core": VERSION, "source": "megatron/core/distributed/param_and_grad_buffer.py",
                   "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print("wrote", len(cases), "cases from megatron-core", VERSION, "to", out)


if __name__ == "__main__":
    main()
