#!/usr/bin/env python3
"""Golden fixtures made by Megatron Core itself (the pinned `megatron-core` package from PyPI, with its
C++ `helpers` compiled from the package's helpers.cpp), for Sparkatron's MegatronCoreGoldenTest. Run it
through make_megatron_fixtures.sh, which installs the pinned packages and builds the helpers; the Java
tests only read what this writes (no Python in CI).

  make_megatron_fixtures.py OUT_DIR R50K_TIKTOKEN_FILE TINY_TOKENIZER_JSON

Writes into OUT_DIR:
  dtype_<name>.{bin,idx}     one indexed dataset per integer dtype, written by Megatron's
                             IndexedDatasetBuilder (documents of several sequences and empty documents)
  corpus_{a,b,c}.{bin,idx}   three small uint16 token corpora (Megatron's builder)
  prepare_{gpt2,tiny}.{bin,idx}, prepare_input.{jsonl,txt}
                             Megatron's tools/preprocess_data.py encoding (tokenize, end-of-document
                             only after a non-empty document, one sequence per document) of the same
                             documents, with Megatron's HuggingFaceTokenizer for GPT-2 and for the tiny
                             tokenizer.json of src/test/resources/tokenizer
  golden.json                everything the Java test compares: see the keys below

What runs is Megatron's code: IndexedDatasetBuilder / IndexedDataset, GPTDatasetConfig,
BlendedMegatronDatasetBuilder (splits, per-dataset sizes with the surplus, GPTDataset indices,
BlendedDataset), helpers_cpp (build_sample_idx, build_blending_indices,
build_exhaustive_blending_indices), megatron.core.tokenizers (HuggingFaceTokenizer). Only the ~15 lines
of preprocess_data.py's Encoder.encode are restated here, because tools/ is not part of the package.
"""
import base64
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import types

MEGATRON_CORE_VERSION = "0.16.1"


def import_megatron_core():
    """megatron/core/__init__.py imports the training stack (DDP, tensor parallel, checkpointing), which
    needs a newer torch than Debian's CPU build (1.13); the dataset and tokenizer modules do not. So the
    two packages are registered without running their __init__ and the real modules are imported."""
    version = importlib.metadata.version("megatron-core")
    if version != MEGATRON_CORE_VERSION:
        sys.exit("megatron-core %s is installed, the fixtures are pinned to %s" % (version, MEGATRON_CORE_VERSION))
    root = list(importlib.util.find_spec("megatron").submodule_search_locations)[0]
    for name, path in (("megatron", root), ("megatron.core", os.path.join(root, "core"))):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    import megatron.core.parallel_state  # noqa: F401  (utils and parallel_state import each other)
    from megatron.core.datasets import helpers
    print("megatron-core", version, "helpers:", helpers.build_blending_indices.__module__,
          sys.modules["megatron.core.datasets.helpers_cpp"].__file__, file=sys.stderr)


import_megatron_core()
import numpy  # noqa: E402
import torch  # noqa: E402
from megatron.core.datasets import helpers  # noqa: E402
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig  # noqa: E402
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder  # noqa: E402
from megatron.core.datasets.utils import normalize  # noqa: E402
from megatron.core.tokenizers import MegatronTokenizer  # noqa: E402

DTYPES = [numpy.uint8, numpy.int8, numpy.int16, numpy.int32, numpy.int64, numpy.uint16]


def write_dtype_datasets(out):
    """Each integer dtype, extremes included; documents of one and of several sequences, and empty
    documents (what preprocess_data.py writes for an empty text: a document entry, no sequence)."""
    cases = []
    for dtype in DTYPES:
        info = numpy.iinfo(dtype)
        r = numpy.random.RandomState(int(info.bits) + (1 if info.min < 0 else 0))
        # Sparkatron's token ids are Java ints: int64 is exercised within that range.
        lo, hi = max(int(info.min), -2 ** 31), min(int(info.max), 2 ** 31 - 1)
        extremes = [lo, hi, 0, 1]
        documents = [
            [extremes],
            [],
            [r.randint(lo, hi + 1, size=5, dtype=numpy.int64).tolist(), r.randint(0, 100, size=3).tolist()],
            [r.randint(lo, hi + 1, size=int(r.randint(1, 9)), dtype=numpy.int64).tolist() for _ in range(3)],
            [],
            [],
            [r.randint(0, 100, size=7).tolist()],
        ]
        prefix = os.path.join(out, "dtype_" + dtype.__name__)
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
        for doc in documents:
            ids = [t for seq in doc for t in seq]
            builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(s) for s in doc])
        builder.finalize(prefix + ".idx")
        ds = IndexedDataset(prefix)
        sequences = [ds[i].astype(numpy.int64).tolist() for i in range(len(ds))]
        assert sequences == [s for doc in documents for s in doc]
        cases.append({"prefix": "dtype_" + dtype.__name__, "code": DType.code_from_dtype(dtype),
                      "documents": documents, "document_indices": ds.document_indices.tolist(),
                      "sequence_lengths": ds.sequence_lengths.tolist()})
    return cases


def write_corpus(out, name, seed, docs, max_len, vocab):
    r = numpy.random.RandomState(seed)
    prefix = os.path.join(out, name)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(vocab))
    for _ in range(docs):
        add_document_one_sequence(builder, r.randint(0, vocab, size=int(r.randint(1, max_len))).tolist())
    builder.finalize(prefix + ".idx")


def add_document_one_sequence(builder, ids):
    builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)] if ids else [])


def config(cache, seed, seq, blend, split, **kw):
    # GPTDatasetConfig needs a tokenizer only for vocab_size / eod / pad: Megatron's NullTokenizer.
    tokenizer = MegatronTokenizer.from_pretrained(metadata_path={"library": "null"}, vocab_size=50257)
    return GPTDatasetConfig(random_seed=seed, sequence_length=seq, blend=blend, split=split, path_to_cache=cache,
                            tokenizer=tokenizer, reset_position_ids=False, reset_attention_mask=False,
                            eod_mask_loss=False, **kw)


def raw_sample(gpt, i):
    text, _ = gpt._query_document_sample_shuffle_indices(i)
    return text.astype(numpy.int64).tolist()


def single_cases(out, cache):
    """Single datasets through BlendedMegatronDatasetBuilder: split, epochs, separate final epoch,
    kept partial validation sample. Full document / sample / shuffle indices."""
    cases = []
    prefix = os.path.join(out, "corpus_a")
    for seq, seed, split, sizes, drop in [(16, 1234, "100,0,0", [None, None, None], True),
                                           (16, 7, "100,0,0", [300, None, None], True),
                                           (8, 42, "80,15,5", [250, 40, 9], True),
                                           (8, 99, "100,0,0", [600, None, None], True),
                                           (16, 3, "100,0,0", [140, None, None], True),
                                           (32, 5, "60,40,0", [None, None, None], False),
                                           (12, 11, "70,20,10", [100, 33, 5], False)]:
        cfg = config(cache, seed, seq, ([prefix], None), split, drop_last_partial_validation_sequence=drop)
        built = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, cfg).build()
        for s, gpt in enumerate(built):
            if gpt is None:
                continue
            cases.append({"corpus": "corpus_a", "seq_length": seq, "seed": seed, "split": split, "sizes": sizes,
                          "drop_last_partial_validation_sequence": drop, "split_index": s,
                          "documents": gpt.indices.tolist(), "num_samples": gpt.num_samples,
                          "document_index": gpt.document_index.tolist(),
                          "sample_index": gpt.sample_index.astype(numpy.int64).ravel().tolist(),
                          "shuffle_index": gpt.shuffle_index.astype(numpy.int64).tolist(),
                          "samples": [raw_sample(gpt, i) for i in range(min(6, len(gpt)))]})
    return cases


def blend_cases(out, cache):
    """Blends of corpus_a/b/c through the builder: weights normalized by the builder and again by
    BlendedDataset, per-dataset sizes with the 0.005 surplus, helpers.build_blending_indices; blends
    without weights (by dataset length, sized and exhaustive)."""
    prefixes = [os.path.join(out, n) for n in ("corpus_a", "corpus_b", "corpus_c")]
    cases = []
    for weights, split, sizes, seed in [([0.7, 0.2, 0.1], "90,6,4", [3000, 60, 30], 1234),
                                        ([0.5, 0.3, 0.2], "90,5,5", [1000, 50, 20], 5),
                                        ([0.3, 0.7], "100,0,0", [1000, 0, 0], 9),
                                        ([1.0, 2.0, 3.0], "100,0,0", [777, 0, 0], 21),
                                        ([0.1, 0.2, 0.7], "100,0,0", [501, 0, 0], 1),
                                        ([0.6, 0.3, 0.1], "100,0,0", [2500, 0, 0], 77),
                                        (None, "80,10,10", [400, 30, 30], 3),
                                        (None, "80,10,10", [None, None, None], 4)]:
        k = 3 if weights is None else len(weights)  # under 10: dataset_index is written one digit a sample
        cfg = config(cache, seed, 16, (prefixes[:k], weights), split)
        built = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, cfg).build()
        splits = []
        for s, blend in enumerate(built):
            if blend is None:
                splits.append(None)
                continue
            index = blend.dataset_index.astype(numpy.int64)
            splits.append({"size": len(blend), "weights": [float(w) for w in blend.weights],
                           "dataset_lengths": [len(d) for d in blend.datasets],
                           "dataset_num_samples": [d.num_samples for d in blend.datasets],
                           "dataset_index": "".join(str(int(d)) for d in index),  # one digit per sample
                           "dataset_sample_index_sum": int(blend.dataset_sample_index.sum()),
                           "counts": numpy.bincount(index, minlength=k).tolist(),
                           "samples": [raw_sample(blend.datasets[int(index[i])], int(blend.dataset_sample_index[i]))
                                       for i in range(0, len(blend), max(1, len(blend) // 7))]})
        case = {"weights": weights, "split": split, "sizes": sizes, "seed": seed, "seq_length": 16, "datasets": k,
                "splits": splits}
        if weights is not None:
            once = normalize(weights)
            case["normalized_once"] = once
            case["normalized_twice"] = normalize(once)
            size = sum(int(numpy.ceil(sizes[0] * w)) for w in once)
            single = numpy.zeros(size, dtype=numpy.int16)
            helpers.build_blending_indices(single, numpy.zeros(size, dtype=numpy.int64), once, k, size, False)
            case["train_samples_differing_if_normalized_once"] = int((single != built[0].dataset_index).sum())
        cases.append(case)
    return cases


def refused_cases(out, cache):
    """What Megatron refuses: a blend member with no samples in a split, a zero weight."""
    prefixes = [os.path.join(out, n) for n in ("corpus_a", "corpus_b", "tiny_member")]
    builder = IndexedDatasetBuilder(prefixes[2] + ".bin", dtype=numpy.uint16)
    for n in (5, 3, 4):  # 12 tokens in 3 documents: no sample of 16 + 1 tokens in its test split
        add_document_one_sequence(builder, list(range(1, n + 1)))
    builder.finalize(prefixes[2] + ".idx")
    cases = []
    for members, weights, split, sizes, what in [
            (3, None, "34,33,33", [100, 20, 20], "member without samples in a split, blend by length"),
            (3, None, "34,33,33", [None, None, None], "member without samples in a split, exhaustive blend"),
            (2, [1.0, 0.0], "100,0,0", [100, 0, 0], "zero weight")]:
        cfg = config(cache, 1, 16, (prefixes[:members], weights), split)
        try:
            BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, cfg).build()
            error = None
        except Exception as e:  # Megatron refuses with an AssertionError (weights must be positive)
            error = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        cases.append({"what": what, "datasets": [os.path.basename(p) for p in prefixes[:members]], "weights": weights,
                      "split": split, "sizes": sizes, "megatron_error": error})
        assert error is not None, what
    return cases


def gpt2_hf_dir(tiktoken_file, work):
    """GPT-2's vocab.json / merges.txt from the r50k_base ranks (the GPT-2 vocabulary as tiktoken and
    jtokkit ship it): ids are ranks, and each token's merge is the last step of BPE over its own bytes
    with only lower-ranked merges (so one merge per token, as in GPT-2's merges.txt)."""
    ranks = {}
    with open(tiktoken_file, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    byte_encoder = bytes_to_unicode()
    enc = lambda b: "".join(byte_encoder[x] for x in b)  # noqa: E731
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1),
                       key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 30))
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        merges.append(enc(parts[0]) + " " + enc(parts[1]))
    vocab = {enc(t): r for t, r in ranks.items()}
    vocab["<|endoftext|>"] = 50256
    d = os.path.join(work, "gpt2")
    os.makedirs(d)
    json.dump(vocab, open(os.path.join(d, "vocab.json"), "w"))
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    # What AutoTokenizer resolves "gpt2" to (GPT-2's tokenizer_config on the hub): GPT2Tokenizer.
    json.dump({"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "bos_token": "<|endoftext|>",
               "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False},
              open(os.path.join(d, "tokenizer_config.json"), "w"))
    return d


def tiny_hf_dir(tokenizer_json, work):
    d = os.path.join(work, "tiny")
    os.makedirs(d)
    shutil.copy(tokenizer_json, os.path.join(d, "tokenizer.json"))
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"},
              open(os.path.join(d, "tokenizer_config.json"), "w"))
    return d


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


PREPARE_DOCUMENTS = [
    "Hello world",
    "",
    "the quick brown fox <|endoftext|> jumps",
    " ",
    "",
    "unseen: Zürich ∑ 日本 🎉",
    "<|endoftext|>",
    "a<|endoftext|>b <|endoftext|><|endoftext|>  c",
    "<|endoftext",
    "tabs\tand   spaces  ",
    "",
    "the lazy dog sleeps",
]


def prepare_cases(out, gpt2_dir, tiny_dir):
    """preprocess_data.py with --append-eod, one JSON key, no sentence splitting: for each document,
    ids = tokenizer.tokenize(text); the end-of-document id is appended only when ids is non-empty;
    builder.add_document(ids, [len(ids)] or [] when empty). Tokenizers are built as preprocess_data
    builds them: megatron.core.tokenizers, HuggingFaceTokenizer (what GPT2BPETokenizer also becomes in
    this version), include_special_tokens off, use_fast off."""
    with open(os.path.join(out, "prepare_input.jsonl"), "w", encoding="utf-8") as f:
        for d in PREPARE_DOCUMENTS:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    with open(os.path.join(out, "prepare_input.txt"), "w", encoding="utf-8") as f:
        for d in PREPARE_DOCUMENTS:
            f.write(d + "\n")
    cases = []
    for name, path in (("gpt2", gpt2_dir), ("tiny", tiny_dir)):
        tokenizer = MegatronTokenizer.from_pretrained(tokenizer_path=path, metadata_path={"library": "huggingface"},
                                                      additional_special_tokens=[], use_fast=False,
                                                      include_special_tokens=False)
        prefix = os.path.join(out, "prepare_" + name)
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(tokenizer.vocab_size))
        encoded = []
        with open(os.path.join(out, "prepare_input.jsonl"), encoding="utf-8") as f:
            for line in f:
                ids = list(tokenizer.tokenize(json.loads(line)["text"]))
                if len(ids) > 0:
                    ids.append(tokenizer.eod)
                add_document_one_sequence(builder, ids)
                encoded.append(ids)
        builder.finalize(prefix + ".idx")
        cases.append({"tokenizer": name, "prefix": "prepare_" + name, "vocab_size": tokenizer.vocab_size,
                      "eod": tokenizer.eod, "documents": encoded,
                      "tokenizer_class": type(tokenizer._tokenizer.tokenizer).__name__})
    return cases


def main():
    out, tiktoken_file, tiny_json = sys.argv[1:4]
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="megatron-fixtures-")
    cache = os.path.join(work, "cache")
    # One rank, as a single-GPU Megatron run has: BlendedDataset asks the process group for its rank.
    torch.distributed.init_process_group("gloo", init_method="file://" + os.path.join(work, "pg"), rank=0, world_size=1)
    try:
        golden = {"megatron_core": MEGATRON_CORE_VERSION, "numpy": numpy.__version__, "torch": torch.__version__,
                  "dtypes": write_dtype_datasets(out)}
        write_corpus(out, "corpus_a", 1234, 40, 60, 50257)
        write_corpus(out, "corpus_b", 99, 30, 25, 50257)
        write_corpus(out, "corpus_c", 7, 25, 90, 50257)
        golden["single"] = single_cases(out, cache)
        golden["blends"] = blend_cases(out, cache)
        golden["refused"] = refused_cases(out, cache)
        golden["prepare"] = prepare_cases(out, gpt2_hf_dir(tiktoken_file, work), tiny_hf_dir(tiny_json, work))
        with open(os.path.join(out, "golden.json"), "w") as f:
            json.dump(golden, f, separators=(",", ":"), ensure_ascii=False)
    finally:
        torch.distributed.destroy_process_group()
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
