# Peer of ./sparkatron bench-moe: torch.distributed Gloo all_to_all_single on loopback, processes as ranks.
# Usage: python3 torch_gloo_alltoall.py WORLD SIZE_BYTES [SIZE_BYTES ...]
# Size = bytes of each rank's fp32 input (split evenly over the ranks), as nccl-tests' alltoall; time = median
# of rank 0's time for one operation started right after a barrier (5 timed after 2 warm-up); busbw = size /
# time x (n-1)/n. Prints one line per size:
#   gloo all_to_all world=N size_bytes=S time_s=T busbw_GBps=B
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run(rank, world, sizes):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for size in sizes:
        n = size // 4 // world * world
        x = torch.ones(n)
        y = torch.empty(n)
        for _ in range(2):
            dist.all_to_all_single(y, x)
        ts = []
        for _ in range(5):
            dist.barrier()
            t = time.perf_counter()
            dist.all_to_all_single(y, x)
            ts.append(time.perf_counter() - t)
        ts.sort()
        t = ts[2]
        if rank == 0:
            busbw = n * 4 / t / 1e9 * (world - 1) / world
            print(f"gloo all_to_all world={world} size_bytes={n * 4} time_s={t:.6f} busbw_GBps={busbw:.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    w = int(sys.argv[1])
    mp.spawn(run, args=(w, [int(s) for s in sys.argv[2:]]), nprocs=w)
