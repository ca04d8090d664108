#!/usr/bin/env python3
"""Generates the Mixtral golden fixture under gpu-runtime/src/test/resources/golden/mixtral/ (docs/golden.md).

The model is Hugging Face's own Mixtral code (transformers.MixtralForCausalLM, eager attention) in float64,
from float32-representable weights drawn here. The training objective adds, per MoE layer, Megatron Core's
auxiliary load-balancing loss and router z-loss to the mean cross-entropy, written here from Megatron's
formulas (moe_utils.switch_load_balancing_loss_func and z_loss_func) on HF's router logits:

    aux_l = E / (k N^2) * sum_e count_e * sum_t softmax(logits_l)[t, e]    (count_e: top-k assignments to e)
    z_l   = mean_t logsumexp(logits_l[t])^2
    loss  = CE + moe_aux_loss_coeff * sum_l aux_l + moe_z_loss_coeff * sum_l z_l

HF's own `aux_loss` (a cross-layer variant) is recorded for reference; for each single layer it equals
k * aux_l, which this script asserts. The folder receives config.json, model.safetensors (initial weights,
HF names), tokens.txt, expected.safetensors (logits [B,T,V], loss = CE [1], aux [L], z [L], grad.<name>),
adamw.json (AdamW settings and the 5-step trajectory: CE losses, mean aux and z per step, gradient norms) and
final.safetensors (weights after the 5 steps).

The script refuses a draw whose top-k routing is within 1e-3 of a tie (on any token, layer and step), so a
float32 implementation cannot choose different experts.

Requirements (pinned): Debian's python3-torch 1.13 and transformers==4.40.2 from PyPI, e.g.
    /usr/bin/python3 -m venv --system-site-packages /tmp/hfenv && /tmp/hfenv/bin/pip install transformers==4.40.2
    /tmp/hfenv/bin/python gpu-runtime/src/test/python/make_moe_golden.py
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

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "resources", "golden", "mixtral")
CONFIG = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_hidden_layers": 2, "hidden_size": 32,
          "intermediate_size": 24, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 61,
          "max_position_embeddings": 16, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
          "num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02, "moe_aux_loss_coeff": 0.02,
          "moe_z_loss_coeff": 0.005, "sliding_window": None, "router_jitter_noise": 0.0, "hidden_act": "silu"}
SEED = 4321
MARGIN = 1e-3


def megatron_aux(logits, k):
    n, e = logits.shape
    probs = torch.softmax(logits, dim=-1)
    top = torch.topk(probs, k, dim=-1).indices
    counts = torch.zeros(e, dtype=logits.dtype).scatter_add_(0, top.reshape(-1), torch.ones(n * k, dtype=logits.dtype))
    return e / (k * n * n) * torch.sum(counts * probs.sum(dim=0))


def z_loss(logits):
    return torch.mean(torch.logsumexp(logits, dim=-1) ** 2)


def check_margin(router_logits, k, where):
    for l, lg in enumerate(router_logits):
        top = torch.topk(lg, k + 1, dim=-1).values
        gap = (top[:, k - 1] - top[:, k]).min().item()
        if gap < MARGIN:
            raise SystemExit(f"{where}: layer {l} top-{k} routing within {gap:.2e} of a tie; choose another seed")


def objective(model, inputs, targets, k):
    out = model(input_ids=inputs, output_router_logits=True, use_cache=False)
    logits = out.logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    aux = torch.stack([megatron_aux(lg, k) for lg in out.router_logits])
    z = torch.stack([z_loss(lg) for lg in out.router_logits])
    total = ce + CONFIG["moe_aux_loss_coeff"] * aux.sum() + CONFIG["moe_z_loss_coeff"] * z.sum()
    return out, logits, ce, aux, z, total


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float64)  # HF builds its causal mask and RoPE tables in the default dtype
    os.makedirs(OUT, exist_ok=True)
    hf_cfg = MixtralConfig(**{key: v for key, v in CONFIG.items() if key not in ("model_type", "architectures")},
                           attn_implementation="eager", output_router_logits=True)
    model = MixtralForCausalLM(hf_cfg).to(torch.float64)
    g = torch.Generator().manual_seed(SEED)
    names = [n for n, _ in model.named_parameters()]
    with torch.no_grad():
        for n, p in model.named_parameters():
            z = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
            v = (1.0 + 0.1 * z) if p.dim() == 1 else 0.15 * z
            p.copy_(v.to(torch.float32).to(torch.float64))
    k = CONFIG["num_experts_per_tok"]
    tokens = torch.randint(0, CONFIG["vocab_size"], (B, T + 1), generator=torch.Generator().manual_seed(SEED + 1))
    inputs, targets = tokens[:, :T], tokens[:, 1:]

    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    with open(os.path.join(OUT, "tokens.txt"), "w") as f:
        for row in tokens.tolist():
            f.write(" ".join(str(x) for x in row) + "\n")
    write_safetensors(os.path.join(OUT, "model.safetensors"), dict(model.named_parameters()), {"format": "pt"})

    out, logits, ce, aux, z, total = objective(model, inputs, targets, k)
    check_margin(out.router_logits, k, "initial weights")
    for l, lg in enumerate(out.router_logits):  # HF's per-layer formula is k times Megatron's
        hf_one = transformers.models.mixtral.modeling_mixtral.load_balancing_loss_func((lg,), CONFIG["num_local_experts"], k)
        assert abs(hf_one.item() - k * aux[l].item()) < 1e-6 * max(1.0, hf_one.item()), (hf_one.item(), aux[l].item())
    total.backward()
    expected = {"logits": logits, "loss": ce.reshape(1), "aux": aux, "z": z, "hf_aux_loss": out.aux_loss.reshape(1)}
    for n, p in model.named_parameters():
        expected["grad." + n] = p.grad
    write_safetensors(os.path.join(OUT, "expected.safetensors"), expected, {"format": "pt"})

    params = [p for _, p in model.named_parameters()]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"], foreach=False)
    losses, auxes, zs, norms = [], [], [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        out, _, ce, aux, z, total = objective(model, inputs, targets, k)
        check_margin(out.router_logits, k, f"step {step + 1}")
        total.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, ADAMW["grad_clip"])
        losses.append(ce.item())
        auxes.append(aux.mean().item())
        zs.append(z.mean().item())
        norms.append(norm.item())
        opt.step()
    with torch.no_grad():
        out, _, ce, _, _, _ = objective(model, inputs, targets, k)
        check_margin(out.router_logits, k, "final weights")
        final_loss = ce.item()
    write_safetensors(os.path.join(OUT, "final.safetensors"), dict(model.named_parameters()), {"format": "pt"})
    record = dict(ADAMW)
    record.update({"steps": STEPS, "losses": losses, "aux_losses": auxes, "z_losses": zs, "grad_norms": norms,
                   "clipped": [x > ADAMW["grad_clip"] for x in norms], "final_loss": final_loss,
                   "no_decay_params": [n for n, p in model.named_parameters() if p.dim() < 2],
                   "objective": "CE + moe_aux_loss_coeff * sum over layers of Megatron's aux loss + moe_z_loss_coeff * "
                                "sum over layers of the z-loss; aux_losses and z_losses are means over layers",
                   "torch": torch.__version__, "transformers": transformers.__version__})
    with open(os.path.join(OUT, "adamw.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"mixtral: CE {losses} aux {auxes} z {zs} norms {norms} final {final_loss:.4f} (ln V = "
          f"{math.log(CONFIG['vocab_size']):.4f}); {len(names)} parameters; torch {torch.__version__}, "
          f"transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
