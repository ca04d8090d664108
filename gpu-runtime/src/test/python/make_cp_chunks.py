#!/usr/bin/env python3
"""Context-parallel sequence chunks from Megatron Core's own code, for ContextParallelChunksTest.

Megatron splits each sequence over the context-parallel group in get_batch_on_this_cp_rank
(megatron/core/utils.py): 2 x cp chunks, rank r keeping chunks r and 2 cp - 1 - r. The function needs torch
only for four tensor operations (view, zeros, fill_, index_select); this script takes the function's source
from the installed megatron-core package (ast: no import of the module), runs it with those operations on
numpy arrays, and records which global positions of a sequence each CP rank receives, for several (cp, seq),
from a batch whose tokens, labels, loss mask and position ids are the positions themselves (and whose
attention mask, split on its own dimension 2, is checked to follow the same rows).
Output: gpu-runtime/src/test/resources/megatron/cp_chunks.json.

    python3 -m venv /tmp/mcore && /tmp/mcore/bin/pip install --no-deps megatron-core==0.16.1 numpy==2.4.6
    /tmp/mcore/bin/python gpu-runtime/src/test/python/make_cp_chunks.py
"""
import ast
import importlib.metadata
import importlib.util
import json
import os
import types

import numpy as np

VERSION = importlib.metadata.version("megatron-core")
ROOT = list(importlib.util.find_spec("megatron").submodule_search_locations)[0]
SOURCE = os.path.join(ROOT, "core", "utils.py")
CASES = [(2, 8), (2, 16), (4, 16), (4, 32), (8, 64), (3, 12), (2, 256), (4, 512), (8, 1024)]


class Tensor:
    """The torch.Tensor operations get_batch_on_this_cp_rank uses, on a numpy array."""

    def __init__(self, a):
        self.a = a
        self.shape = a.shape
        self.device = None

    def view(self, *shape):
        return Tensor(self.a.reshape(shape))

    def index_select(self, dim, index):
        return Tensor(np.take(self.a, index.a, axis=dim))

    def __getitem__(self, i):
        parent = self

        class Element:
            def fill_(self, v):
                parent.a[i] = v

        return Element()


def megatron_function():
    tree = ast.parse(open(SOURCE).read())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_batch_on_this_cp_rank"]
    assert len(defs) == 1, "megatron-core changed: get_batch_on_this_cp_rank not found"
    defs[0].args.args[1].annotation = None  # Optional[torch.distributed.ProcessGroup]
    fake_torch = types.SimpleNamespace(int64=np.int64,
                                       zeros=lambda n, dtype=None, device=None: Tensor(np.zeros(n, dtype=dtype)))
    ns = {"torch": fake_torch, "Dict": dict, "Any": object, "Optional": None,
          "get_pg_size": lambda g: g[0], "get_pg_rank": lambda g: g[1]}
    exec(compile(ast.Module(body=defs, type_ignores=[]), SOURCE, "exec"), ns)
    return ns["get_batch_on_this_cp_rank"]


def main():
    split = megatron_function()
    cases = []
    for cp, seq in CASES:
        ranks = []
        for rank in range(cp):
            pos = np.arange(seq, dtype=np.int64)[None, :]
            mask = np.arange(seq, dtype=np.int64)[None, None, :, None] * np.ones((1, 1, 1, seq), dtype=np.int64)
            batch = {"tokens": Tensor(pos.copy()), "labels": Tensor(pos.copy() + 1), "loss_mask": Tensor(pos.copy()),
                     "position_ids": Tensor(pos.copy()), "attention_mask": Tensor(mask)}
            out = split(batch, cp_group=(cp, rank))
            got = out["position_ids"].a[0].tolist()
            assert out["tokens"].a[0].tolist() == got and out["loss_mask"].a[0].tolist() == got
            assert out["labels"].a[0].tolist() == [p + 1 for p in got]
            assert out["attention_mask"].a[0, 0, :, 0].tolist() == got
            ranks.append(got)
        cases.append({"cp": cp, "seq": seq, "positions": ranks})
    out = os.path.join(os.path.dirname(__file__), "..", "resources", "megatron", "cp_chunks.json")
    with open(out, "w") as f:
        json.dump({"megatron_core": VERSION, "function": "megatron.core.utils.get_batch_on_this_cp_rank",
                   "cases": cases}, f)
        f.write("\n")
    print("wrote", os.path.normpath(out))


if __name__ == "__main__":
    main()
