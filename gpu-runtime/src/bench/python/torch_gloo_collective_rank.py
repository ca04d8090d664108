# Peer benchmark: one rank of a torch.distributed gloo collective, each rank its own process, so that ranks can run
# on different (emulated) hosts. Usage: python3 torch_gloo_collective_rank.py RANK WORLD MB MASTER_ADDR MASTER_PORT [OP]
# OP: all_reduce (default; MB each rank) or all_gather (MB in all, MB / WORLD from each rank). Gloo has no
# reduce_scatter. Set GLOO_SOCKET_IFNAME to the interface of the rank's host. Rank 0 prints one line as
# torch_gloo_allreduce.py does (busbw: all-reduce 2 (n - 1) / n of algbw, all-gather (n - 1) / n).
import os, sys, time, torch, torch.distributed as dist

rank, world, mb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
op = sys.argv[6] if len(sys.argv) > 6 else 'all_reduce'
os.environ.update(MASTER_ADDR=sys.argv[4], MASTER_PORT=sys.argv[5])
dist.init_process_group('gloo', rank=rank, world_size=world)
if op == 'all_reduce':
    x = torch.ones(mb * 262144)
    run = lambda: dist.all_reduce(x)
    factor = 2 * (world - 1) / world
elif op == 'all_gather':
    x = torch.ones(mb * 262144 // world)
    outs = [torch.empty_like(x) for _ in range(world)]
    run = lambda: dist.all_gather(outs, x)
    factor = (world - 1) / world
else:
    sys.exit(f"unknown op {op}: all_reduce or all_gather")
for _ in range(2):
    run()
ts = []
for _ in range(5):
    dist.barrier(); t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
ts.sort(); t = ts[2]
if rank == 0:
    algbw = mb * 2**20 / t / 1e9
    print(f"gloo {op} world={world} size_MiB={mb} time_s={t:.4f} algbw_GBps={algbw:.4f} busbw_GBps={algbw*factor:.4f}")
dist.destroy_process_group()
