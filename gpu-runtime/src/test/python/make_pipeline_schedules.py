#!/usr/bin/env python3
"""Pipeline schedule orders from Megatron Core's own code, for ScheduleTest.

Megatron's schedule functions run torch.distributed collectives, so they cannot run here; their ordering
logic, though, is two pure functions in megatron/core/pipeline_parallel/schedules.py: get_schedule_table
(which micro-batch and model chunk each virtual step works on) and get_pp_rank_microbatches (the warm-up
count of each rank). This script takes the source of exactly those two functions from the installed
megatron-core package (ast: no import of the module, which needs torch 2.x and a process group), runs them,
and lays out the steps the way Megatron's loops issue them: warm-up forwards, then one forward and one
backward per step, then the cool-down backwards (forward_backward_pipelining_with_interleaving and
..._without_interleaving). Output: gpu-runtime/src/test/resources/megatron/pipeline_schedules.json.

    python3 -m venv /tmp/mcore && /tmp/mcore/bin/pip install --no-deps megatron-core==0.16.1
    /tmp/mcore/bin/python gpu-runtime/src/test/python/make_pipeline_schedules.py
"""
import ast
import importlib.metadata
import importlib.util
import json
import os
import types

VERSION = importlib.metadata.version("megatron-core")
ROOT = list(importlib.util.find_spec("megatron").submodule_search_locations)[0]
SOURCE = os.path.join(ROOT, "core", "pipeline_parallel", "schedules.py")


def megatron_functions():
    tree = ast.parse(open(SOURCE).read())
    wanted = {"get_schedule_table", "get_pp_rank_microbatches"}
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert {d.name for d in defs} == wanted, "megatron-core changed: " + str([d.name for d in defs])
    module = ast.Module(body=defs, type_ignores=[])
    import typing
    ns = {"Optional": typing.Optional, "P2PCommunicator": object, "parallel_state": None}
    exec(compile(module, SOURCE, "exec"), ns)
    return ns["get_schedule_table"], ns["get_pp_rank_microbatches"]


class Group:
    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def rank(self):
        return self._rank


def orders(p, v, m, table_fn, warmup_fn):
    out = []
    for rank in range(p):
        comm = types.SimpleNamespace(pp_group=Group(p, rank), virtual_pipeline_model_parallel_size=v if v > 1 else None)
        total, _, warmup, remaining = warmup_fn(m, v, p, p2p_communicator=comm)
        if v == 1:
            f = [(mb, 0) for mb in range(m)]
            b = [(mb, 0) for mb in range(m)]
        else:
            table = table_fn(m, v, p)  # microbatch_group_size_per_vp_stage defaults to the pipeline size
            f = table
            b = [(mb, v - 1 - c) for mb, c in table]
        ops = [("F",) + f[k] for k in range(warmup)]
        for k in range(remaining):
            ops.append(("F",) + f[warmup + k])
            ops.append(("B",) + b[k])
        ops += [("B",) + b[k] for k in range(remaining, total)]
        out.append(" ".join(f"{kind}{mb}" + (f".{c}" if v > 1 else "") for kind, mb, c in ops))
    return out


def main():
    table_fn, warmup_fn = megatron_functions()
    cases = []
    for p, v, m in [(2, 1, 1), (2, 1, 4), (4, 1, 8), (4, 1, 2), (3, 1, 5), (8, 1, 8), (2, 2, 4), (2, 2, 2), (4, 2, 8),
                    (4, 2, 4), (2, 3, 6), (4, 4, 8), (3, 2, 9)]:
        cases.append({"stages": p, "chunks": v, "micro_batches": m, "orders": orders(p, v, m, table_fn, warmup_fn)})
    out = os.path.join(os.path.dirname(__file__), "..", "resources", "megatron", "pipeline_schedules.json")
    with open(out, "w") as f:
        json.dump({"megatron_core": VERSION, "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} schedules from megatron-core {VERSION} to {os.path.normpath(out)}")


if __name__ == "__main__":
    main()
