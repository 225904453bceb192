"""Shared pieces of the demo trainers: the GPT-2 module, data packing, safetensors I/O.

The module's parameter names and shapes are exactly Hugging Face GPT-2's
(Conv1D weights stored [in, out]), so export is a rename-free dump and what
saegap reads is what the SAE trainer runs.
"""
import glob
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BOS = 50256
CTX = 128
HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.normpath(os.path.join(HERE, ".."))
CFG = dict(n_layer=4, n_head=4, n_embd=128, n_positions=CTX, vocab_size=50257)


# ---------------------------------------------------------------- model
class Conv1D(nn.Module):
    # HF GPT-2 keeps weights [in, out]; keeping that here makes export trivial
    def __init__(self, n_in, n_out, std=0.02):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * std)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


class Attn(nn.Module):
    def __init__(self, d, n_head, proj_std):
        super().__init__()
        self.n_head = n_head
        self.c_attn = Conv1D(d, 3 * d)
        self.c_proj = Conv1D(d, d, proj_std)

    def forward(self, x, hooks=None, layer=None):
        B, T, D = x.shape
        H = self.n_head
        q, k, v = self.c_attn(x).split(D, dim=2)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D // H)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        z = (att @ v).transpose(1, 2).reshape(B, T, D)  # head-major: [h0 d_head, h1 d_head, ...]
        if hooks is not None:
            hooks[f"blocks.{layer}.attn.hook_z"] = z
        return self.c_proj(z)


class Block(nn.Module):
    def __init__(self, d, n_head, proj_std):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = Attn(d, n_head, proj_std)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.mlp = nn.Module()
        self.mlp.c_fc = Conv1D(d, 4 * d)
        self.mlp.c_proj = Conv1D(4 * d, d, proj_std)

    def forward(self, x, hooks=None, layer=None):
        x = x + self.attn(self.ln_1(x), hooks, layer)
        return x + self.mlp.c_proj(gelu_new(self.mlp.c_fc(self.ln_2(x))))


class GPT2(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, n_positions, vocab_size):
        super().__init__()
        # GPT-2's init: N(0, 0.02), residual-writing projections scaled by 1/sqrt(2L)
        proj_std = 0.02 / math.sqrt(2 * n_layer)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)
        self.h = nn.ModuleList([Block(n_embd, n_head, proj_std) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, eps=1e-5)

    def forward(self, idx, hooks=None, return_hidden=False):
        """hooks: dict filled with HF-basis values (blocks.L.hook_resid_pre/post, attn.hook_z)."""
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for i, blk in enumerate(self.h):
            if hooks is not None:
                hooks[f"blocks.{i}.hook_resid_pre"] = x
            x = blk(x, hooks, i)
            if hooks is not None:
                hooks[f"blocks.{i}.hook_resid_post"] = x
        x = self.ln_f(x)
        return x if return_hidden else x @ self.wte.weight.T  # tied unembedding


def chunked_ce(model, idx, chunk=1024):
    """Mean next-token CE without materialising [B*T, 50257] logits at once."""
    h = model(idx[:, :-1], return_hidden=True).reshape(-1, model.wte.weight.shape[1])
    y = idx[:, 1:].reshape(-1)
    tot = 0.0
    for s in range(0, h.shape[0], chunk):
        tot = tot + F.cross_entropy(h[s:s + chunk] @ model.wte.weight.T, y[s:s + chunk], reduction="sum")
    return tot / h.shape[0]


# ---------------------------------------------------------------- data
def load_docs(text_dir, cache="/tmp/saegap-demo-text/docs_tokens.npz"):
    """All speeches in year order (file names start with the year), tokenized."""
    files = sorted(glob.glob(os.path.join(text_dir, "*.txt")))
    if os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        if list(z["names"]) == [os.path.basename(f) for f in files]:
            return list(z["names"]), np.split(z["ids"], z["splits"])
    from bpe import Encoder, selftest
    enc = Encoder()
    selftest(enc)
    docs = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            docs.append(np.array(enc.encode(fh.read().strip()), dtype=np.int32))
    names = [os.path.basename(f) for f in files]
    np.savez(cache, names=np.array(names), ids=np.concatenate(docs),
             splits=np.cumsum([len(d) for d in docs])[:-1])
    return names, docs


def split_docs(docs, held_frac=0.1):
    # hold out the LAST documents (the most recent speeches): never trained on
    n_held = int(round(held_frac * len(docs)))
    return docs[:-n_held], docs[-n_held:]


def pack(docs):
    """BOS doc BOS doc ... cut into rows of BOS + 127 stream tokens."""
    stream = np.concatenate([np.concatenate([[BOS], d]) for d in docs]).astype(np.int32)
    n = len(stream) // (CTX - 1)
    body = stream[: n * (CTX - 1)].reshape(n, CTX - 1)
    return np.concatenate([np.full((n, 1), BOS, np.int32), body], axis=1)


# ---------------------------------------------------------------- safetensors
_DT = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16)}


def save_safetensors(path, tensors, dtype="F16", metadata=None):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        a = np.ascontiguousarray(t.detach().cpu().float().numpy().astype(_DT[dtype][0]))
        b = a.tobytes()  # numpy is little-endian on x86, as the format requires
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # pad so the data block is 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        a = np.frombuffer(data[b:e], dtype=_DT[info["dtype"]][0]).reshape(info["shape"])
        out[name] = torch.from_numpy(a.astype(np.float32))
    return out


def load_exported_model(model_dir=os.path.join(DEMO, "model")):
    """The model exactly as saegap reads it (F16 weights, upcast to F32)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    m = GPT2(c["n_layer"], c["n_head"], c["n_embd"], c["n_positions"], c["vocab_size"])
    sd = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    m.load_state_dict(sd, strict=True)
    return m.eval()


def processed_hooks(model, idx):
    """Hook values in TransformerLens's processed basis (FIELD-FACTS section 2)."""
    hooks = {}
    with torch.no_grad():
        model(idx, hooks=hooks, return_hidden=True)
        out = {}
        D = model.wte.weight.shape[1]
        for k, v in hooks.items():
            if k.endswith("attn.hook_z"):
                L = int(k.split(".")[1])
                blk = model.h[L]
                W_V = blk.attn.c_attn.weight[:, 2 * D:]
                b_V = blk.attn.c_attn.bias[2 * D:]
                # fold_ln puts ln_1.bias @ W_V into b_V, fold_value_biases moves it to b_O
                out[k] = v - (b_V + blk.ln_1.bias @ W_V)
            else:
                out[k] = v - v.mean(-1, keepdim=True)  # center_writing_weights
    return out
