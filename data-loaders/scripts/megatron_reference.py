#!/usr/bin/env python3
"""Independent reference for Sparkatron's Megatron data path (not Megatron's code; written from its
published format and semantics).

  megatron_reference.py fixtures OUT_DIR   write indexed datasets with struct/numpy and a golden JSON of
                                           Megatron's GPT indices, samples and blending counts (numpy)
  megatron_reference.py read PREFIX        read PREFIX.idx/.bin with struct only; print JSON

Format (megatron/core/datasets/indexed_dataset.py): .idx = b"MMIDIDX\\x00\\x00", <Q version 1, <B dtype
code, <Q sequence count, <Q document-index count, int32 lengths, int64 byte pointers, int64 document
indices; .bin = tokens little-endian in the dtype (uint16 code 8, int32 code 4).
"""
import json
import math
import os
import struct
import sys

MAGIC = b"MMIDIDX\x00\x00"
CODES = {1: ("B", 1), 2: ("b", 1), 3: ("h", 2), 4: ("i", 4), 5: ("q", 8), 8: ("H", 2)}


def write_indexed(prefix, docs, code):
    fmt, size = CODES[code]
    with open(prefix + ".bin", "wb") as f:
        for d in docs:
            f.write(struct.pack("<%d%s" % (len(d), fmt), *d))
    with open(prefix + ".idx", "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(docs)))
        f.write(struct.pack("<Q", len(docs) + 1))
        f.write(struct.pack("<%di" % len(docs), *[len(d) for d in docs]))
        ptr, ptrs = 0, []
        for d in docs:
            ptrs.append(ptr)
            ptr += len(d) * size
        f.write(struct.pack("<%dq" % len(docs), *ptrs))
        f.write(struct.pack("<%dq" % (len(docs) + 1), *range(len(docs) + 1)))


def read_indexed(prefix):
    idx = open(prefix + ".idx", "rb").read()
    assert idx[:9] == MAGIC, "bad magic"
    version, = struct.unpack_from("<Q", idx, 9)
    assert version == 1
    code = idx[17]
    n, d = struct.unpack_from("<QQ", idx, 18)
    off = 34
    lengths = list(struct.unpack_from("<%di" % n, idx, off)); off += 4 * n
    pointers = list(struct.unpack_from("<%dq" % n, idx, off)); off += 8 * n
    doc_idx = list(struct.unpack_from("<%dq" % d, idx, off)); off += 8 * d
    assert off == len(idx), "index size %d, expected %d" % (len(idx), off)
    fmt, size = CODES[code]
    binary = open(prefix + ".bin", "rb").read()
    assert len(binary) == (pointers[-1] + lengths[-1] * size if n else 0), "bin size mismatch"
    seqs = [list(struct.unpack_from("<%d%s" % (l, fmt), binary, p)) for l, p in zip(lengths, pointers)]
    return {"dtype_code": code, "lengths": lengths, "pointers": pointers, "document_indices": doc_idx,
            "sequences": seqs}


# ---- Megatron GPT index semantics, re-implemented with numpy ----

def doc_index(np, documents, epochs, rng, separate_final):
    if not separate_final or epochs == 1:
        out = np.array(list(documents) * epochs, dtype=np.int32)
        rng.shuffle(out)
        return out
    first = doc_index(np, documents, epochs - 1, rng, False)
    last = doc_index(np, documents, 1, rng, False)
    return np.concatenate((first, last))


def sample_index(sizes, docs, seq, epochs, tpe, drop_last, extra):
    if drop_last:
        n = (epochs * tpe - extra) // seq
    else:
        import numpy as np
        n = int(math.ceil(float(np.float32(epochs * tpe - extra) / np.float32(seq))))
    out = [(0, 0)]
    pos, off = 0, 0
    while len(out) <= n:
        remaining = seq + extra
        while remaining != 0:
            length = sizes[docs[pos]] - off
            remaining -= length
            if remaining <= 0:
                off += remaining + length - extra
                remaining = 0
            else:
                if pos == len(docs) - 1:
                    off = sizes[docs[pos]] - extra
                    break
                pos += 1
                off = 0
        out.append((pos, off))
    return out


def gpt_indices(np, sizes, documents, seq, seed, num_samples, drop_last=True, extra=1):
    tpe = int(sum(sizes[d] for d in documents))
    epochs = 1
    if num_samples is not None:
        tokens = tpe
        while tokens < num_samples * seq + extra:
            epochs += 1
            tokens += tpe
    separate = False
    sans = None
    if epochs > 1:
        sans = ((epochs - 1) * tpe - extra) // seq
        per_epoch = (tpe - extra) // seq
        separate = (num_samples - sans) < int(0.80 * per_epoch)
    rng = np.random.RandomState(seed)
    docs = doc_index(np, documents, epochs, rng, separate)
    samples = sample_index(sizes, docs, seq, epochs, tpe, drop_last, extra)
    total = len(samples) - 1
    first_n = sans if separate else total
    first = np.arange(0, first_n, dtype=np.uint32)
    rng.shuffle(first)
    if first_n != total:
        last = np.arange(first_n, total, dtype=np.uint32)
        rng.shuffle(last)
        first = np.concatenate((first, last))
    return {"epochs": epochs, "separate_final_epoch": separate, "document_index": docs.tolist(),
            "sample_index": [list(s) for s in samples], "shuffle_index": first.tolist()}


def sample_tokens(seqs, ind, i, seq, extra=1, pad=-1):
    s = ind["shuffle_index"][i]
    (b, bo), (e, eo) = ind["sample_index"][s], ind["sample_index"][s + 1]
    docs = ind["document_index"]
    if b == e:
        out = seqs[docs[b]][bo:eo + extra]
    else:
        out = []
        for j in range(b, e + 1):
            d = seqs[docs[j]]
            out += d[(bo if j == b else 0):(len(d) if j < e else eo + extra)]
    return out + [pad] * (seq + extra - len(out))


def blending(weights, size):
    cur = [0] * len(weights)
    index = []
    for s in range(size):
        sd = max(float(s), 1.0)
        errs = [w * sd - c for w, c in zip(weights, cur)]
        m = 0
        for d in range(1, len(weights)):
            if errs[d] > errs[m]:
                m = d
        index.append(m)
        cur[m] += 1
    return index, cur


def fixtures(out):
    import numpy as np
    os.makedirs(out, exist_ok=True)
    r = np.random.RandomState(1234)
    a = [r.randint(0, 50257, size=int(r.randint(1, 60))).tolist() for _ in range(40)]
    b = [r.randint(0, 100000, size=int(r.randint(1, 25))).tolist() for _ in range(30)]
    write_indexed(os.path.join(out, "corpus_a"), a, 8)
    write_indexed(os.path.join(out, "corpus_b"), b, 4)
    golden = {"corpus_a": {"sequences": a}, "corpus_b": {"sequences": b}, "cases": []}
    sizes_a = [len(d) for d in a]
    for seq, seed, n, drop in [(16, 1234, None, True), (16, 7, 300, True), (8, 42, 250, True),
                               (32, 5, None, False), (8, 99, 2000, True), (16, 3, 140, True)]:
        ind = gpt_indices(np, sizes_a, list(range(len(a))), seq, seed, n, drop)
        ind.update({"corpus": "corpus_a", "seq_length": seq, "seed": seed, "num_samples": n, "drop_last": drop,
                    "documents": list(range(len(a))),
                    "first_samples": [sample_tokens(a, ind, i, seq) for i in range(min(12, len(ind["shuffle_index"])))]})
        golden["cases"].append(ind)
    # a split: "969,30,1" style bookends over corpus_a's 40 documents
    split = [float(x) for x in "80,15,5".split(",")]
    w = (np.array(split) / np.sum(np.array(split))).tolist()
    ends = [0.0]
    for x in w:
        ends.append(ends[-1] + x)
    golden["split"] = {"split": "80,15,5",
                       "ranges": [[int(round(ends[i] * 40.0)), int(round(ends[i + 1] * 40.0))] for i in range(3)]}
    # blending: the builder normalizes the weights (per-dataset sizes with Megatron's arithmetic), and
    # BlendedDataset normalizes them again before build_blending_indices: the last bits of the twice
    # normalized weights decide ties (0.7, 0.2, 0.1 orders differently with once-normalized weights)
    blends = []
    normalize = lambda w: (np.array(w, dtype=np.float64) / np.sum(np.array(w, dtype=np.float64))).tolist()
    for raw, size in [([0.3, 0.7], 1000), ([1, 2, 3], 777), ([5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.5], 5000),
                      ([0.7, 0.2, 0.1], 3000)]:
        wn = normalize(raw)
        target = [int(math.ceil(math.ceil(size * x) * (1 + 0.0))) for x in wn]
        buffer = [int(math.ceil(math.ceil(size * x) * (1 + 0.005))) for x in wn]
        index, counts = blending(normalize(wn), sum(target))
        blends.append({"weights": raw, "size": size, "normalized": wn, "target": target, "buffer": buffer,
                       "counts": counts, "first_index": index[:200]})
    golden["blending"] = blends
    shuffles = []
    for seed, n in [(0, 10), (4294967295, 1000), (31337, 5000)]:
        perm = np.arange(n, dtype=np.int32)
        np.random.RandomState(seed).shuffle(perm)
        shuffles.append({"seed": seed, "n": n, "perm": perm.tolist()})
    golden["shuffles"] = shuffles
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f)


if __name__ == "__main__":
    if sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
    elif sys.argv[1] == "read":
        print(json.dumps(read_indexed(sys.argv[2])))
    else:
        sys.exit("usage: megatron_reference.py fixtures OUT_DIR | read PREFIX")
