#!/usr/bin/env python3
"""Generates the DeepSeek-style MoE golden fixture under gpu-runtime/src/test/resources/golden/mixtral-deepseek/
(docs/golden.md): Megatron Core's router options on Hugging Face's Mixtral scaffold, in float64.

The attention, norms, embeddings and head are Hugging Face's own Mixtral code (transformers.MixtralForCausalLM,
eager attention). Each layer's MLP is replaced by a reference written here from Megatron Core's router
(moe_utils.topk_routing_with_score_function, compute_routing_scores_for_aux_loss,
switch_load_balancing_loss_func, z_loss_func, get_updated_expert_bias) and layer pattern:

  moe_layer_freq [1, 0, 1]        layers 0 and 2 MoE, layer 1 a dense SwiGLU MLP (dense_intermediate_size)
  sigmoid scores                  s = sigmoid(x Wr^T)
  expert bias (aux-loss-free)     the k experts are the top-k of s + b; b chooses, it does not weigh
  top-k normalisation + scaling   w = s[chosen] / (sum s[chosen] + 1e-20) * moe_router_topk_scaling_factor
  shared expert                   + down(silu(gate x) * up x) of width moe_shared_expert_intermediate_size (no gate)
  aux loss (sigmoid)              scores a = s / (sum_e s + 1e-20); counts from the top-k of a (unbiased);
                                  aux = E / (k N^2) * sum_e count_e * sum_t a[t, e]
  z-loss                          mean_t logsumexp(logits[t])^2
  loss                            CE + moe_aux_loss_coeff * sum_l aux_l + moe_z_loss_coeff * sum_l z_l
  bias update, after each step    b += moe_router_bias_update_rate * sign(mean_e c - c_e), c the step's tokens per
                                  expert (the chosen, biased, top-k)

The initial bias is drawn (not zero) so loading it matters. The script refuses a draw whose biased top-k or the
aux loss's unbiased top-k is within 1e-4 of a tie (any token, layer, step), so a float32 implementation cannot
choose differently. Files as the mixtral fixture (make_moe_golden.py), plus the bias under DeepSeek-V3's name
block_sparse_moe.gate.e_score_correction_bias in model.safetensors and final.safetensors (after 5 updates), and a
zero grad.<bias name> in expected.safetensors (the bias is not trained).

Requirements (pinned): Debian's python3-torch 1.13 and transformers==4.40.2, as make_moe_golden.py:
    /usr/bin/python3 -m venv --system-site-packages /tmp/hfenv && /tmp/hfenv/bin/pip install transformers==4.40.2
    /tmp/hfenv/bin/python gpu-runtime/src/test/python/make_moe_deepseek_golden.py
Deterministic (one thread, seeded generators).
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import write_safetensors, ADAMW, STEPS, B, T  # noqa: E402

import transformers  # noqa: E402
from transformers import MixtralConfig, MixtralForCausalLM  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "resources", "golden", "mixtral-deepseek")
CONFIG = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_hidden_layers": 3, "hidden_size": 32,
          "intermediate_size": 24, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 61,
          "max_position_embeddings": 16, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
          "num_local_experts": 6, "num_experts_per_tok": 2, "moe_router_score_function": "sigmoid",
          "moe_router_topk_scaling_factor": 2.5, "moe_shared_expert_intermediate_size": 16, "moe_layer_freq": [1, 0, 1],
          "dense_intermediate_size": 40, "moe_router_enable_expert_bias": True, "moe_router_bias_update_rate": 0.02,
          "moe_aux_loss_coeff": 0.01, "moe_z_loss_coeff": 0.002, "sliding_window": None, "router_jitter_noise": 0.0,
          "hidden_act": "silu"}
SEED = 2469
MARGIN = 1e-4
E = CONFIG["num_local_experts"]
K = CONFIG["num_experts_per_tok"]


def swiglu(x, gate, up, down):
    return down(torch.nn.functional.silu(gate(x)) * up(x))


class DenseMlp(torch.nn.Module):
    """A dense layer's SwiGLU MLP, under HF's names mlp.{gate,up,down}_proj."""

    def __init__(self, c, f):
        super().__init__()
        self.gate_proj = torch.nn.Linear(c, f, bias=False)
        self.up_proj = torch.nn.Linear(c, f, bias=False)
        self.down_proj = torch.nn.Linear(f, c, bias=False)

    def forward(self, x):
        return swiglu(x, self.gate_proj, self.up_proj, self.down_proj)


class DenseCall(torch.nn.Module):
    """Stands in for block_sparse_moe on a dense layer: calls the layer's mlp (not registered here, so its
    parameters keep the mlp.* names) and returns no router logits."""

    def __init__(self, mlp):
        super().__init__()
        object.__setattr__(self, "target", mlp)

    def forward(self, x):
        return self.target(x), None


class ReferenceMoe(torch.nn.Module):
    """Megatron's sigmoid router with the expert bias, top-k normalisation and scaling, Mixtral's experts, a shared
    expert; records each forward's logits and chosen-expert counts."""

    def __init__(self, block, c, fs):
        super().__init__()
        self.gate = block.gate          # router weight [E, C]: block_sparse_moe.gate.weight
        self.experts = block.experts    # experts.e.w1 / w2 / w3
        self.gate.register_buffer("e_score_correction_bias", torch.zeros(E))
        self.shared_expert = DenseMlp(c, fs)
        self.logits = None
        self.counts = None

    def forward(self, hidden):
        b, t, c = hidden.shape
        x = hidden.reshape(-1, c)
        logits = self.gate(x)
        s = torch.sigmoid(logits)
        chosen = torch.topk(s + self.gate.e_score_correction_bias, K, dim=-1).indices
        w = s.gather(1, chosen)
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20) * CONFIG["moe_router_topk_scaling_factor"]
        y = torch.zeros_like(x)
        for j in range(K):
            for e in range(E):
                rows = chosen[:, j] == e
                if rows.any():
                    ex = self.experts[e]
                    y[rows] += w[rows, j:j + 1] * ex.w2(torch.nn.functional.silu(ex.w1(x[rows])) * ex.w3(x[rows]))
        y = y + self.shared_expert(x)
        self.logits = logits
        self.counts = torch.bincount(chosen.reshape(-1), minlength=E).to(torch.float64)
        self.chosen_margin = biased_margin(s + self.gate.e_score_correction_bias)
        return y.reshape(b, t, c), logits


def biased_margin(values):
    top = torch.topk(values, K + 1, dim=-1).values
    return (top[:, K - 1] - top[:, K]).min().item()


def megatron_aux_sigmoid(logits):
    n = logits.shape[0]
    s = torch.sigmoid(logits)
    a = s / (s.sum(dim=-1, keepdim=True) + 1e-20)
    top = torch.topk(a, K, dim=-1).indices
    counts = torch.zeros(E, dtype=logits.dtype).scatter_add_(0, top.reshape(-1), torch.ones(n * K, dtype=logits.dtype))
    return E / (K * n * n) * torch.sum(counts * a.sum(dim=0)), biased_margin(a)


def objective(model, moes, inputs, targets, where):
    logits = model(input_ids=inputs, use_cache=False).logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    auxes, zs = [], []
    for i, m in enumerate(moes):
        aux, aux_margin = megatron_aux_sigmoid(m.logits)
        if min(m.chosen_margin, aux_margin) < MARGIN:
            raise SystemExit(f"{where}: MoE layer {i} top-{K} within {min(m.chosen_margin, aux_margin):.2e} of a tie; "
                             "choose another seed")
        auxes.append(aux)
        zs.append(torch.mean(torch.logsumexp(m.logits, dim=-1) ** 2))
    aux = torch.stack(auxes)
    z = torch.stack(zs)
    total = ce + CONFIG["moe_aux_loss_coeff"] * aux.sum() + CONFIG["moe_z_loss_coeff"] * z.sum()
    return logits, ce, aux, z, total


def zero_unused_grads(model):
    """An expert no token chose has no autograd gradient; a grouped-GEMM implementation (Megatron's, ours) gives it a
    zero gradient, which AdamW still decays and counts in its moments: the same here."""
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def update_bias(moes):
    with torch.no_grad():
        for m in moes:
            offset = m.counts.mean() - m.counts
            m.gate.e_score_correction_bias += CONFIG["moe_router_bias_update_rate"] * torch.sign(offset)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float64)
    os.makedirs(OUT, exist_ok=True)
    hf_keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
               "num_local_experts", "num_experts_per_tok", "sliding_window", "router_jitter_noise", "hidden_act")
    hf_cfg = MixtralConfig(**{key: CONFIG[key] for key in hf_keys}, attn_implementation="eager")
    model = MixtralForCausalLM(hf_cfg).to(torch.float64)
    c = CONFIG["hidden_size"]
    moes = []
    for i, layer in enumerate(model.model.layers):
        if CONFIG["moe_layer_freq"][i]:
            ref = ReferenceMoe(layer.block_sparse_moe, c, CONFIG["moe_shared_expert_intermediate_size"])
            layer.block_sparse_moe = ref
            moes.append(ref)
        else:
            layer.block_sparse_moe = torch.nn.Module()  # drop the unused experts, then the dense MLP as mlp.*
            layer.mlp = DenseMlp(c, CONFIG["dense_intermediate_size"])
            layer.block_sparse_moe = DenseCall(layer.mlp)
    model.to(torch.float64)
    g = torch.Generator().manual_seed(SEED)
    names = [n for n, _ in model.named_parameters()]
    with torch.no_grad():
        for n, p in model.named_parameters():
            z = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
            v = (1.0 + 0.1 * z) if p.dim() == 1 else 0.15 * z
            p.copy_(v.to(torch.float32).to(torch.float64))
        for m in moes:
            z = torch.randn(E, generator=g, dtype=torch.float32)
            m.gate.e_score_correction_bias.copy_((0.05 * z).to(torch.float32).to(torch.float64))
    bias_names = [f"model.layers.{i}.block_sparse_moe.gate.e_score_correction_bias"
                  for i in range(CONFIG["num_hidden_layers"]) if CONFIG["moe_layer_freq"][i]]

    def state():
        out = dict(model.named_parameters())
        for name, m in zip(bias_names, moes):
            out[name] = m.gate.e_score_correction_bias
        return out

    tokens = torch.randint(0, CONFIG["vocab_size"], (B, T + 1), generator=torch.Generator().manual_seed(SEED + 1))
    inputs, targets = tokens[:, :T], tokens[:, 1:]
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    with open(os.path.join(OUT, "tokens.txt"), "w") as f:
        for row in tokens.tolist():
            f.write(" ".join(str(x) for x in row) + "\n")
    write_safetensors(os.path.join(OUT, "model.safetensors"), state(), {"format": "pt"})

    logits, ce, aux, z, total = objective(model, moes, inputs, targets, "initial weights")
    total.backward()
    zero_unused_grads(model)
    expected = {"logits": logits, "loss": ce.reshape(1), "aux": aux, "z": z,
                "counts": torch.stack([m.counts for m in moes])}
    for n, p in model.named_parameters():
        expected["grad." + n] = p.grad
    for n in bias_names:
        expected["grad." + n] = torch.zeros(E)
    write_safetensors(os.path.join(OUT, "expected.safetensors"), expected, {"format": "pt"})

    params = [p for _, p in model.named_parameters()]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"], foreach=False)
    losses, auxes, zs, norms, biases = [], [], [], [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        _, ce, aux, z, total = objective(model, moes, inputs, targets, f"step {step + 1}")
        total.backward()
        zero_unused_grads(model)
        norm = torch.nn.utils.clip_grad_norm_(params, ADAMW["grad_clip"])
        losses.append(ce.item())
        auxes.append(aux.mean().item())
        zs.append(z.mean().item())
        norms.append(norm.item())
        opt.step()
        update_bias(moes)
        biases.append([m.gate.e_score_correction_bias.tolist() for m in moes])
    with torch.no_grad():
        _, ce, _, _, _ = objective(model, moes, inputs, targets, "final weights")
        final_loss = ce.item()
    write_safetensors(os.path.join(OUT, "final.safetensors"), state(), {"format": "pt"})
    record = dict(ADAMW)
    record.update({"steps": STEPS, "losses": losses, "aux_losses": auxes, "z_losses": zs, "grad_norms": norms,
                   "clipped": [x > ADAMW["grad_clip"] for x in norms], "final_loss": final_loss, "biases": biases,
                   "no_decay_params": [n for n, p in model.named_parameters() if p.dim() < 2] + bias_names,
                   "objective": "CE + moe_aux_loss_coeff * sum over MoE layers of Megatron's aux loss + moe_z_loss_coeff * "
                                "sum of the z-loss; aux_losses and z_losses are means over MoE layers; the expert bias "
                                "moves after each step's optimizer update",
                   "torch": torch.__version__, "transformers": transformers.__version__})
    with open(os.path.join(OUT, "adamw.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"mixtral-deepseek: CE {losses} aux {auxes} z {zs} norms {norms} final {final_loss:.4f} (ln V = "
          f"{math.log(CONFIG['vocab_size']):.4f}); biases {biases[-1]}; {len(names)} parameters")


if __name__ == "__main__":
    main()
