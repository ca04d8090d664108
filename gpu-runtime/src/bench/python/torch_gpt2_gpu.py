# Peer benchmark for the GPU: the GPT-2 training step in PyTorch on CUDA, bf16 autocast with fp32 master
# weights (fused AdamW), causal scaled_dot_product_attention (flash attention), grad clipping at 1.0.
# Usage: python3 torch_gpt2_gpu.py L D H T V B steps eager|compile
# Prints one line: mode, params, median step seconds, tokens/s, achieved TFLOP/s and MFU against 989 TFLOP/s
# (H100/H200 dense bf16), with FLOPs counted as 6N + 6LCT per token (the convention of ./sparkatron bench).
import sys, time, torch, torch.nn as nn, torch.nn.functional as F
L, D, H, T, V, B, steps = (int(x) for x in sys.argv[1:8])
mode = sys.argv[8]
torch.manual_seed(0)
torch.backends.cuda.matmul.allow_tf32 = True
dev = 'cuda'
class Block(nn.Module):
    def __init__(s):
        super().__init__(); s.ln1 = nn.LayerNorm(D); s.qkv = nn.Linear(D, 3*D); s.proj = nn.Linear(D, D)
        s.ln2 = nn.LayerNorm(D); s.fc = nn.Linear(D, 4*D); s.fc2 = nn.Linear(4*D, D)
    def forward(s, x):
        b, t, c = x.shape
        q, k, v = s.qkv(s.ln1(x)).split(D, dim=2)
        q, k, v = (z.view(b, t, H, c // H).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + s.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + s.fc2(F.gelu(s.fc(s.ln2(x)), approximate='tanh'))
class GPT(nn.Module):
    def __init__(s):
        super().__init__(); s.wte = nn.Embedding(V, D); s.wpe = nn.Embedding(T, D)
        s.blocks = nn.ModuleList(Block() for _ in range(L)); s.lnf = nn.LayerNorm(D)
    def forward(s, idx, tgt):
        x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in s.blocks: x = b(x)
        return F.cross_entropy((s.lnf(x) @ s.wte.weight.T).view(-1, V).float(), tgt.view(-1))
m = GPT().to(dev)
opt = torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
step_model = torch.compile(m) if mode == 'compile' else m
x = torch.randint(0, V, (B, T), device=dev); y = torch.randint(0, V, (B, T), device=dev)
def step():
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = step_model(x, y)
    opt.zero_grad(set_to_none=True); loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    return loss
warm = 3 if mode == 'eager' else 5  # compile happens in the first steps
for _ in range(warm): step()
torch.cuda.synchronize()
times = []
for _ in range(steps):
    t0 = time.perf_counter(); step(); torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
times.sort(); med = times[len(times) // 2]
N = sum(p.numel() for p in m.parameters())
flops = 6 * N * B * T + 6 * L * D * T * B * T
print(f"torch-{mode} {torch.__version__} params={N} step_median_s={med:.4f} tokens_per_s={B*T/med:.0f} "
      f"tflops={flops/med/1e12:.1f} mfu={flops/med/989e12*100:.1f}%")
