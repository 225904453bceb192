"""Train the demo's tiny Pythia (GPT-NeoX, 4 layers, d 128) on State of the Union addresses.

Usage: train_model.py TEXT_DIR [--max-tokens N] [--max-minutes M]
Needs ../model/tokenizer.json (bpe_train.py). Writes ../model/{config.json,model.safetensors},
../tokens.npy and ../model_metrics.json.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import common
from common import BOS, CFG, CTX, DEMO, TOKENIZER_SIZE

ap = argparse.ArgumentParser()
ap.add_argument("text_dir")
# default: every training context once (just under one epoch: the packing drops the last partial row)
ap.add_argument("--max-tokens", type=int, default=None)
ap.add_argument("--max-minutes", type=float, default=15.0)  # safety stop if the cores are shared
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()

torch.manual_seed(args.seed)
np.random.seed(args.seed)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

names, docs = common.load_docs(args.text_dir)
train_docs, held_docs = common.split_docs(docs)
train = common.pack(train_docs)
held = common.pack(held_docs)
print(f"docs {len(docs)} (train {len(train_docs)}, held-out {len(held_docs)} from {names[-len(held_docs)]}); "
      f"contexts train {len(train)} held-out {len(held)}", flush=True)

model = common.GPTNeoX(**CFG)
print("params", sum(p.numel() for p in model.parameters()), flush=True)
# decay only matrices (GPT-2/nanoGPT practice); LayerNorm gains and biases stay free
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                         {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))

max_tokens = args.max_tokens or len(train) * CTX
steps = min(max_tokens // (args.batch * CTX), len(train) // args.batch)  # < 1 epoch
warm = max(1, steps // 20)
order = np.random.permutation(len(train))  # each context is seen at most once


def lr_at(s):
    if s < warm:
        return args.lr * (s + 1) / warm
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))


t0 = time.time()
ema, seen, step = None, 0, 0
model.train()
for step in range(steps):
    rows = order[step * args.batch:(step + 1) * args.batch]
    idx = torch.from_numpy(train[rows]).long()
    logits = model(idx[:, :-1])  # all 4096 rows, padding included, in the softmax
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
    for g in opt.param_groups:
        g["lr"] = lr_at(step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    seen += idx.numel()
    ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
    el = time.time() - t0
    if step % 50 == 0 or step == steps - 1:
        print(f"step {step}/{steps} loss {loss.item():.3f} ema {ema:.3f} lr {lr_at(step):.2e} "
              f"tokens {seen} {seen / el:.0f} tok/s", flush=True)
    if el > args.max_minutes * 60:
        print(f"wall-time limit reached after {seen} tokens", flush=True)
        break
wall = time.time() - t0
torch.save(model.state_dict(), "/tmp/saegap-demo-pythia-model.pt")  # safety copy outside the repo

# ---- export in the HF GPTNeoXForCausalLM layout, F16 (exactly the names of model.state_dict())
os.makedirs(os.path.join(DEMO, "model"), exist_ok=True)
sd = model.state_dict()
assert len(sd) == 4 + 12 * CFG["num_hidden_layers"], sorted(sd)
common.save_safetensors(os.path.join(DEMO, "model", "model.safetensors"), sd, "F16", {"format": "pt"})
config = {"_name_or_path": "saegap-demo-pythia", "architectures": ["GPTNeoXForCausalLM"],
          "model_type": "gpt_neox", "hidden_size": CFG["hidden_size"],
          "num_attention_heads": CFG["num_attention_heads"], "num_hidden_layers": CFG["num_hidden_layers"],
          "intermediate_size": CFG["intermediate_size"], "rotary_pct": CFG["rotary_pct"],
          "rotary_emb_base": CFG["rotary_emb_base"], "max_position_embeddings": CTX,
          "layer_norm_eps": CFG["layer_norm_eps"], "hidden_act": "gelu", "use_parallel_residual": True,
          "tie_word_embeddings": False, "vocab_size": CFG["vocab_size"], "bos_token_id": BOS,
          "eos_token_id": BOS, "initializer_range": 0.02, "use_cache": False, "torch_dtype": "float16"}
with open(os.path.join(DEMO, "model", "config.json"), "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")

# ---- held-out token file: 256 rows spread over all held-out speeches
pick = np.linspace(0, len(held) - 1, 256).round().astype(int)
np.save(os.path.join(DEMO, "tokens.npy"), held[pick].astype(np.int32))

# ---- evaluation with the exported F16 weights (what saegap will run)
m16 = common.load_exported_model()


def ce_of(rows):
    """Mean next-token CE over positions 1..127, and the mean probability on the padding rows."""
    tot, pad = 0.0, 0.0
    with torch.no_grad():
        for s in range(0, len(rows), 32):
            b = torch.from_numpy(rows[s:s + 32]).long()
            lp = torch.log_softmax(m16(b[:, :-1]).double(), -1)
            tot += float(-lp.gather(-1, b[:, 1:, None]).sum())
            pad += float(lp[..., TOKENIZER_SIZE:].exp().sum())
    n = len(rows) * (CTX - 1)
    return tot / n, pad / n


# unigram baseline: train-set token frequencies (BOS separators included), add-one smoothed over
# the 4000 ids the tokenizer can produce, scored on exactly the targets the model predicts
counts = np.bincount(np.concatenate([np.concatenate([[BOS], d]) for d in train_docs]),
                     minlength=TOKENIZER_SIZE).astype(np.float64) + 1
logp = np.log(counts / counts.sum())
uni_held = float(-logp[held[:, 1:]].mean())
uni_tok = float(-logp[held[pick][:, 1:]].mean())
ce_held, pad_held = ce_of(held)
ce_tok, _ = ce_of(held[pick])
ce_train, _ = ce_of(train[order[:256]])  # 256 contexts that were trained on
metrics = {"seed": args.seed, "tokens_trained": int(seen), "steps": step + 1, "batch_contexts": args.batch,
           "train_contexts": int(len(train)), "epochs": round(seen / (len(train) * CTX), 4),
           "lr_peak": args.lr, "wall_seconds": round(wall, 1), "final_train_loss_ema": round(ema, 4),
           "train_ce_256_contexts_f16": round(ce_train, 4),
           "heldout_contexts": int(len(held)), "heldout_ce_f16": round(ce_held, 4),
           "heldout_unigram_ce": round(uni_held, 4),
           "heldout_padding_rows_mean_prob": float(f"{pad_held:.3g}"),
           "tokens_npy_ce_f16": round(ce_tok, 4), "tokens_npy_unigram_ce": round(uni_tok, 4),
           "heldout_first_doc": names[-len(held_docs)], "train_docs": len(train_docs),
           "heldout_docs": len(held_docs), "train_doc_tokens": int(sum(map(len, train_docs))),
           "heldout_doc_tokens": int(sum(map(len, held_docs))), "tokenizer_size": TOKENIZER_SIZE,
           "vocab_size": CFG["vocab_size"], "params": int(sum(p.numel() for p in model.parameters()))}
with open(os.path.join(DEMO, "model_metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
    f.write("\n")
print(json.dumps(metrics, indent=2))
