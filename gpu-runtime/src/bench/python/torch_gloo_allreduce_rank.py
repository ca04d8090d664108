# Peer benchmark: one rank of torch.distributed gloo all-reduce, each rank its own process, so that ranks can run
# on different (emulated) hosts. Usage: python3 torch_gloo_allreduce_rank.py RANK WORLD MB MASTER_ADDR MASTER_PORT
# Set GLOO_SOCKET_IFNAME to the interface of the rank's host. Rank 0 prints the same line as torch_gloo_allreduce.py.
import os, sys, time, torch, torch.distributed as dist

rank, world, mb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
os.environ.update(MASTER_ADDR=sys.argv[4], MASTER_PORT=sys.argv[5])
dist.init_process_group('gloo', rank=rank, world_size=world)
x = torch.ones(mb * 262144)
for _ in range(2):
    dist.all_reduce(x)
ts = []
for _ in range(5):
    dist.barrier(); t = time.perf_counter(); dist.all_reduce(x); ts.append(time.perf_counter() - t)
ts.sort(); t = ts[2]
if rank == 0:
    algbw = mb * 2**20 / t / 1e9
    print(f"gloo world={world} size_MiB={mb} time_s={t:.4f} algbw_GBps={algbw:.2f} busbw_GBps={algbw*2*(world-1)/world:.2f}")
dist.destroy_process_group()
