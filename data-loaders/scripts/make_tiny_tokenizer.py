#!/usr/bin/env python3
"""Writes a small byte-level BPE tokenizer.json in the Hugging Face format (model type BPE, GPT-2's
byte-to-unicode alphabet, merges learned here on a tiny corpus, ByteLevel pre-tokenizer without the
split regex, ByteLevel decoder, <|endoftext|> as a special added token) and expected encodings made by
this script's own BPE, for Sparkatron's tokenizer tests. Needs only the Python standard library.

  make_tiny_tokenizer.py OUT_DIR
"""
import json
import os
import sys

CORPUS = ("the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs. "
          "sparkatron packs the tokens of the documents into samples. ") * 3
NUM_MERGES = 60
TESTS = ["the fox", "the lazy dog sleeps", "tokens of documents", "unseen: Zürich ∑ 日本", ""]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


B2U = bytes_to_unicode()


def symbols(text):
    return [B2U[b] for b in text.encode("utf-8")]


def train():
    word = symbols(CORPUS)
    merges = []
    for _ in range(NUM_MERGES):
        counts = {}
        for a, b in zip(word, word[1:]):
            counts[(a, b)] = counts.get((a, b), 0) + 1
        best = max(sorted(counts), key=lambda p: counts[p])
        merges.append(best)
        word = apply(word, best)
    return merges


def apply(word, pair):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def encode(text, merges, vocab):
    rank = {m: r for r, m in enumerate(merges)}
    word = symbols(text)
    while len(word) > 1:
        pairs = [(rank[p], p) for p in zip(word, word[1:]) if p in rank]
        if not pairs:
            break
        word = apply(word, min(pairs)[1])
    return [vocab[s] for s in word]


def main(out):
    merges = train()
    vocab = {}
    for b in range(256):
        vocab.setdefault(B2U[b], len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    eod = len(vocab)
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": eod, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": [a + " " + b for a, b in merges]},
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tiny_bpe_tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    expected = {"eod": eod, "vocab_size": eod + 1,
                "cases": [{"text": t, "ids": encode(t, merges, vocab)} for t in TESTS]}
    with open(os.path.join(out, "tiny_bpe_expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1])
