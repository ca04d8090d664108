#!/usr/bin/python3
"""Generates the golden fixtures under gpu-runtime/src/test/resources/golden/{gpt2,llama}/.

Two tiny models written here in plain PyTorch, following Hugging Face transformers' GPT2LMHeadModel and
LlamaForCausalLM semantics, computed in float64 from float32-representable initial weights. For each
model the fixture folder receives:
  config.json          the HF config
  model.safetensors    initial weights (F32, HF names; gpt2 with the "transformer." prefix and the old
                       [1,1,P,P] causal-mask buffers "transformer.h.{i}.attn.bias")
  tokens.txt           B lines of T+1 token ids (inputs: first T, targets: last T)
  expected.safetensors "logits" [B,T,V], "loss" [1], "grad.<name>" for every parameter (gpt2 names without
                       the prefix; the tied wte gradient includes both uses)
  adamw.json           optimizer settings and the 5-step trajectory (torch.optim.AdamW and
                       torch.nn.utils.clip_grad_norm_ in float64, same batch every step)
  final.safetensors    weights after the 5 steps (F32, HF names; gpt2 without the prefix)

No `safetensors` package is needed: files are laid out by hand as the reference serializer does. The
script is deterministic (one thread, seeded generators): rerunning it reproduces the same bytes.

Run from the repository root:  /usr/bin/python3 gpu-runtime/src/test/python/make_golden.py
"""
import json
import math
import os
import struct

import torch

OUT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "resources", "golden")
F64 = torch.float64
B, T = 2, 8
STEPS = 5
ADAMW = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 3.0}

GPT2_CONFIG = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 16,
               "vocab_size": 67, "layer_norm_epsilon": 1e-5}
LLAMA_CONFIG = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 56,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 61,
                "max_position_embeddings": 16, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False}


# ---------------------------------------------------------------------------------------------- safetensors

def write_safetensors(path, tensors, metadata=None):
    """Reference layout: compact JSON header, "__metadata__" first, tensors sorted by name (all F32, so the
    reference's dtype-then-name order is name order), header padded with spaces to a multiple of 8."""
    names = sorted(tensors)
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs, offset = [], 0
    for n in names:
        t = tensors[n].detach().to(torch.float32).contiguous()
        data = t.numpy().astype("<f4").tobytes()
        header[n] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for d in blobs:
            f.write(d)


# ---------------------------------------------------------------------------------------------- init

def init_params(shapes, seed):
    """shapes: ordered list of (name, shape, kind) with kind in {"matrix", "bias", "norm"}. Values are drawn
    in float32 (so they are exactly the stored weights) and widened to float64 for the computation."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape, kind in shapes:
        z = torch.randn(shape, generator=g, dtype=torch.float32)
        if kind == "matrix":
            v = 0.15 * z
        elif kind == "bias":
            v = 0.05 * z
        else:
            v = 1.0 + 0.1 * z
        params[name] = v.to(torch.float32).to(F64).requires_grad_(True)
    return params


# ---------------------------------------------------------------------------------------------- GPT-2

def gpt2_shapes(c):
    C, V, P = c["n_embd"], c["vocab_size"], c["n_positions"]
    s = [("wte.weight", (V, C), "matrix"), ("wpe.weight", (P, C), "matrix")]
    for i in range(c["n_layer"]):
        h = f"h.{i}."
        s += [(h + "ln_1.weight", (C,), "norm"), (h + "ln_1.bias", (C,), "bias"),
              (h + "attn.c_attn.weight", (C, 3 * C), "matrix"), (h + "attn.c_attn.bias", (3 * C,), "bias"),
              (h + "attn.c_proj.weight", (C, C), "matrix"), (h + "attn.c_proj.bias", (C,), "bias"),
              (h + "ln_2.weight", (C,), "norm"), (h + "ln_2.bias", (C,), "bias"),
              (h + "mlp.c_fc.weight", (C, 4 * C), "matrix"), (h + "mlp.c_fc.bias", (4 * C,), "bias"),
              (h + "mlp.c_proj.weight", (4 * C, C), "matrix"), (h + "mlp.c_proj.bias", (C,), "bias")]
    s += [("ln_f.weight", (C,), "norm"), ("ln_f.bias", (C,), "bias")]
    return s


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as nn.LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):
    # HF "gelu_new" (NewGELUActivation)
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def causal_attention(q, k, v):
    """q, k, v: [B, H, T, hd]. Scaled dot product with a causal mask, softmax over keys."""
    t = q.shape[-2]
    att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    att = att.masked_fill(~mask, float("-inf"))
    return torch.softmax(att, dim=-1) @ v


def gpt2_forward(p, c, idx):
    C, nh, eps = c["n_embd"], c["n_head"], c["layer_norm_epsilon"]
    hd = C // nh
    b, t = idx.shape
    x = p["wte.weight"][idx] + p["wpe.weight"][torch.arange(t)]
    for i in range(c["n_layer"]):
        h = f"h.{i}."
        y = layer_norm(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps)
        qkv = y @ p[h + "attn.c_attn.weight"] + p[h + "attn.c_attn.bias"]  # Conv1D: x @ W[in, out] + b
        q, k, v = (z.view(b, t, nh, hd).transpose(1, 2) for z in qkv.split(C, dim=-1))
        y = causal_attention(q, k, v).transpose(1, 2).reshape(b, t, C)
        x = x + (y @ p[h + "attn.c_proj.weight"] + p[h + "attn.c_proj.bias"])
        y = layer_norm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps)
        y = gelu_tanh(y @ p[h + "mlp.c_fc.weight"] + p[h + "mlp.c_fc.bias"])
        x = x + (y @ p[h + "mlp.c_proj.weight"] + p[h + "mlp.c_proj.bias"])
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], eps)
    return x @ p["wte.weight"].T  # tied output embedding


# ---------------------------------------------------------------------------------------------- Llama

def llama_shapes(c):
    C, V, I = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    hd = C // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    s = [("model.embed_tokens.weight", (V, C), "matrix")]
    for i in range(c["num_hidden_layers"]):
        l = f"model.layers.{i}."
        s += [(l + "input_layernorm.weight", (C,), "norm"),
              (l + "self_attn.q_proj.weight", (C, C), "matrix"),
              (l + "self_attn.k_proj.weight", (kv, C), "matrix"),
              (l + "self_attn.v_proj.weight", (kv, C), "matrix"),
              (l + "self_attn.o_proj.weight", (C, C), "matrix"),
              (l + "post_attention_layernorm.weight", (C,), "norm"),
              (l + "mlp.gate_proj.weight", (I, C), "matrix"),
              (l + "mlp.up_proj.weight", (I, C), "matrix"),
              (l + "mlp.down_proj.weight", (C, I), "matrix")]
    s += [("model.norm.weight", (C,), "norm"), ("lm_head.weight", (V, C), "matrix")]
    return s


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(t, hd, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=F64) / hd))
    freqs = torch.outer(torch.arange(t, dtype=F64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # non-interleaved: dims i and i + hd/2 share a frequency
    return emb.cos(), emb.sin()


def llama_forward(p, c, idx):
    C, nh, nkv, eps = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    hd = C // nh
    b, t = idx.shape
    cos, sin = rope_cos_sin(t, hd, c["rope_theta"])
    x = p["model.embed_tokens.weight"][idx]
    for i in range(c["num_hidden_layers"]):
        l = f"model.layers.{i}."
        y = rms_norm(x, p[l + "input_layernorm.weight"], eps)
        q = (y @ p[l + "self_attn.q_proj.weight"].T).view(b, t, nh, hd).transpose(1, 2)  # nn.Linear: x @ W.T
        k = (y @ p[l + "self_attn.k_proj.weight"].T).view(b, t, nkv, hd).transpose(1, 2)
        v = (y @ p[l + "self_attn.v_proj.weight"].T).view(b, t, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv  # repeat_kv: query head h reads key/value head h // rep
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        y = causal_attention(q, k, v).transpose(1, 2).reshape(b, t, C)
        x = x + y @ p[l + "self_attn.o_proj.weight"].T
        y = rms_norm(x, p[l + "post_attention_layernorm.weight"], eps)
        g = y @ p[l + "mlp.gate_proj.weight"].T
        u = y @ p[l + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ p[l + "mlp.down_proj.weight"].T
    x = rms_norm(x, p["model.norm.weight"], eps)
    return x @ p["lm_head.weight"].T


# ---------------------------------------------------------------------------------------------- driver

def loss_of(logits, targets):
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, v), targets.reshape(-1))  # mean, nats


def make(family, config, shapes, forward, seed, stored_prefix, mask_buffers):
    out = os.path.join(OUT_ROOT, family)
    os.makedirs(out, exist_ok=True)
    params = init_params(shapes(config), seed)
    names = list(params)
    v = config["vocab_size"]
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, v, (B, T + 1), generator=g)
    inputs, targets = tokens[:, :T], tokens[:, 1:]

    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "tokens.txt"), "w") as f:
        for row in tokens.tolist():
            f.write(" ".join(str(x) for x in row) + "\n")
    model = {stored_prefix + n: params[n] for n in names}
    model.update(mask_buffers(config))
    write_safetensors(os.path.join(out, "model.safetensors"), model, {"format": "pt"})

    logits = forward(params, config, inputs)
    loss = loss_of(logits, targets)
    loss.backward()
    expected = {"logits": logits, "loss": loss.reshape(1)}
    for n in names:
        expected["grad." + n] = params[n].grad
    write_safetensors(os.path.join(out, "expected.safetensors"), expected, {"format": "pt"})

    decay = [params[n] for n in names if params[n].dim() >= 2]
    no_decay = [params[n] for n in names if params[n].dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"],
                            foreach=False)
    losses, norms = [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        l = loss_of(forward(params, config, inputs), targets)
        l.backward()
        norm = torch.nn.utils.clip_grad_norm_([params[n] for n in names], ADAMW["grad_clip"])
        losses.append(l.item())
        norms.append(norm.item())
        opt.step()
    with torch.no_grad():
        final_loss = loss_of(forward(params, config, inputs), targets).item()
    write_safetensors(os.path.join(out, "final.safetensors"), {n: params[n] for n in names}, {"format": "pt"})

    adamw = dict(ADAMW)
    adamw.update({
        "no_decay": "1-D parameters (biases and norm weights) are not decayed; matrices and embeddings are",
        "no_decay_params": [n for n in names if params[n].dim() < 2],
        "update": "torch.optim.AdamW (decoupled decay p -= lr*wd*p, then bias-corrected Adam step), float64",
        "clip": "torch.nn.utils.clip_grad_norm_: g *= min(1, grad_clip / (norm + 1e-6)), norm = global L2",
        "steps": STEPS,
        "losses": losses,
        "grad_norms": norms,
        "clipped": [n > ADAMW["grad_clip"] for n in norms],
        "final_loss": final_loss,
    })
    with open(os.path.join(out, "adamw.json"), "w") as f:
        json.dump(adamw, f, indent=1)
        f.write("\n")
    print(f"{family}: loss {losses[0]:.6f} (ln V = {math.log(v):.6f}) losses {[round(x, 4) for x in losses]} "
          f"final {final_loss:.4f} grad_norms {[round(x, 4) for x in norms]}")


def gpt2_masks(c):
    p = c["n_positions"]
    mask = torch.tril(torch.ones(p, p)).view(1, 1, p, p)
    return {f"transformer.h.{i}.attn.bias": mask for i in range(c["n_layer"])}


def main():
    torch.set_num_threads(1)  # one thread: reductions in a fixed order, so reruns give the same bytes
    torch.use_deterministic_algorithms(True)
    make("gpt2", GPT2_CONFIG, gpt2_shapes, gpt2_forward, 1234, "transformer.", gpt2_masks)
    make("llama", LLAMA_CONFIG, llama_shapes, llama_forward, 5678, "", lambda c: {})
    print("torch", torch.__version__)


if __name__ == "__main__":
    main()
