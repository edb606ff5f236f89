#!/usr/bin/env python3
"""Python onnxruntime baseline for `executor bench` (EMBED-MINILM-L6).

Same model, same tokenizer file, same thread count as the Rust side; measures tokenise + run +
mean-pool + L2-normalise end to end. Modes:
  naive  - batches of --batch in input order, each padded to its longest input
  sorted - inputs sorted by token count (longest first), batches of --batch

Prints one JSON object per mode on stdout:
  {"mode", "batch", "sentences", "seconds", "sentences_per_s", "real_tokens", "padded_tokens", "tokens_per_s"}
seconds is the median of --repeats runs; tokens_per_s counts real (non-padding) tokens.
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def load_tokenizer(path, max_len):
    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.enable_truncation(max_len)
    return tok


def embed_batch(sess, encs):
    b = len(encs)
    s = max(len(e.ids) for e in encs)
    ids = np.zeros((b, s), np.int64)
    mask = np.zeros((b, s), np.int64)
    types = np.zeros((b, s), np.int64)
    for i, e in enumerate(encs):
        n = len(e.ids)
        ids[i, :n] = e.ids
        types[i, :n] = e.type_ids
        mask[i, :n] = 1
    (h,) = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    m = mask[:, :, None].astype(np.float32)
    pooled = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled, b * s


def run_mode(sess, tok, texts, mode, batch):
    t0 = time.perf_counter()
    padded = 0
    out = [None] * len(texts)
    if mode == "naive":
        for start in range(0, len(texts), batch):
            chunk = texts[start : start + batch]
            encs = tok.encode_batch(chunk)
            vecs, p = embed_batch(sess, encs)
            padded += p
            for k, v in enumerate(vecs):
                out[start + k] = v
    else:
        encs = tok.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encs[i].ids))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            vecs, p = embed_batch(sess, [encs[i] for i in idx])
            padded += p
            for i, v in zip(idx, vecs):
                out[i] = v
    return time.perf_counter() - t0, padded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus", required=True, help="JSONL with {'input': text} per line")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--modes", default="naive,sorted")
    a = ap.parse_args()

    texts = [json.loads(l)["input"] for l in open(a.corpus) if l.strip()]
    tok = load_tokenizer(a.tokenizer, a.max_len)
    real = sum(len(e.ids) for e in tok.encode_batch(texts))
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, sess_options=so, providers=["CPUExecutionProvider"])
    embed_batch(sess, tok.encode_batch(texts[:4]))  # warm-up
    for mode in a.modes.split(","):
        times = []
        padded = 0
        for _ in range(a.repeats):
            t, padded = run_mode(sess, tok, texts, mode, a.batch)
            times.append(t)
        secs = statistics.median(times)
        print(json.dumps({
            "mode": mode, "batch": a.batch, "sentences": len(texts), "seconds": secs,
            "sentences_per_s": len(texts) / secs, "real_tokens": real, "padded_tokens": padded,
            "tokens_per_s": real / secs, "ort_version": ort.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
