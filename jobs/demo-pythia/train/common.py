"""Shared pieces of the Pythia demo trainers: the GPT-NeoX module, data packing, safetensors I/O.

The module's parameter names and shapes are exactly Hugging Face's
GPTNeoXForCausalLM (Linear weights [out, in], the fused query_key_value rows
interleaved per head), so export is a rename-free dump of state_dict() and what
saegap reads is what the SAE trainer and the checker run. There are no buffers
(no attention.bias / masked_bias / rotary inv_freq): the rotary table and the
causal mask are made on the fly.
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BOS = 0  # <|endoftext|>: Pythia's BOS = EOS
CTX = 128
HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.normpath(os.path.join(HERE, ".."))
TOKENIZER_SIZE = 4000  # ids the tokenizer can produce; rows 4000..4095 are padding
CFG = dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=4, intermediate_size=512,
           rotary_pct=0.25, rotary_emb_base=10000, layer_norm_eps=1e-5, vocab_size=4096)


# ---------------------------------------------------------------- model
def rotary_cos_sin(T, r, base, dtype):
    """HF GPTNeoXRotaryEmbedding: inv_freq[i] = base^(-2i/r), cos/sin = [freqs, freqs] ([T, r]).
    Computed in float64 and rounded once to dtype (HF computes the angles in float32)."""
    inv_freq = 1.0 / base ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
    freqs = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


class Attention(nn.Module):
    def __init__(self, d, n_head, r, base, proj_std):
        super().__init__()
        self.n_head, self.r, self.base = n_head, r, base
        self.query_key_value = nn.Linear(d, 3 * d)
        self.dense = nn.Linear(d, d)
        nn.init.normal_(self.query_key_value.weight, std=0.02)
        nn.init.normal_(self.dense.weight, std=proj_std)
        nn.init.zeros_(self.query_key_value.bias)
        nn.init.zeros_(self.dense.bias)

    def forward(self, x, hooks=None, layer=None):
        B, T, D = x.shape
        H, r = self.n_head, self.r
        dh = D // H
        # HF view [B, T, H, 3*dh]: per head q | k | v, i.e. row h*3*dh + s*dh + j
        qkv = self.query_key_value(x).view(B, T, H, 3 * dh).transpose(1, 2)
        q, k, v = qkv[..., :dh], qkv[..., dh:2 * dh], qkv[..., 2 * dh:]
        cos, sin = rotary_cos_sin(T, r, self.base, x.dtype)
        # rotate_half on the first r dims of each head's q and k, positions 0..T-1
        q = torch.cat([q[..., :r] * cos + rotate_half(q[..., :r]) * sin, q[..., r:]], -1)
        k = torch.cat([k[..., :r] * cos + rotate_half(k[..., :r]) * sin, k[..., r:]], -1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        z = (att @ v).transpose(1, 2).reshape(B, T, D)  # head-major: [h0 d_head, h1 d_head, ...]
        if hooks is not None:
            hooks[f"blocks.{layer}.attn.hook_z"] = z
        return self.dense(z)


class Layer(nn.Module):
    def __init__(self, d, n_head, d_ff, r, base, eps, proj_std):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(d, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(d, eps=eps)
        self.attention = Attention(d, n_head, r, base, proj_std)
        self.mlp = nn.Module()
        self.mlp.dense_h_to_4h = nn.Linear(d, d_ff)
        self.mlp.dense_4h_to_h = nn.Linear(d_ff, d)
        nn.init.normal_(self.mlp.dense_h_to_4h.weight, std=0.02)
        nn.init.normal_(self.mlp.dense_4h_to_h.weight, std=proj_std)
        nn.init.zeros_(self.mlp.dense_h_to_4h.bias)
        nn.init.zeros_(self.mlp.dense_4h_to_h.bias)

    def forward(self, x, hooks=None, layer=None):
        # parallel residual (use_parallel_residual): both LayerNorms read the same x
        a = self.attention(self.input_layernorm(x), hooks, layer)
        m = self.mlp.dense_4h_to_h(F.gelu(self.mlp.dense_h_to_4h(self.post_attention_layernorm(x))))  # exact erf
        return x + a + m


class GPTNeoX(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, rotary_pct,
                 rotary_emb_base, layer_norm_eps, vocab_size):
        super().__init__()
        D, H, L = hidden_size, num_attention_heads, num_hidden_layers
        r = int((D // H) * rotary_pct)  # rotary_ndims, as HF: int(head_size * rotary_pct)
        proj_std = 0.02 / math.sqrt(2 * L)  # residual-writing projections scaled by 1/sqrt(2L)
        self.gpt_neox = nn.Module()
        self.gpt_neox.embed_in = nn.Embedding(vocab_size, D)
        nn.init.normal_(self.gpt_neox.embed_in.weight, std=0.02)
        self.gpt_neox.layers = nn.ModuleList(
            [Layer(D, H, intermediate_size, r, rotary_emb_base, layer_norm_eps, proj_std) for _ in range(L)])
        self.gpt_neox.final_layer_norm = nn.LayerNorm(D, eps=layer_norm_eps)
        self.embed_out = nn.Linear(D, vocab_size, bias=False)  # untied unembedding
        nn.init.normal_(self.embed_out.weight, std=0.02)

    def forward(self, idx, hooks=None, patch=None):
        """hooks: dict filled with HF-basis values (blocks.L.hook_resid_pre/post, attn.hook_z).
        patch: {"blocks.L.hook_resid_post": fn(HF value) -> value written back}, as a TL hook."""
        x = self.gpt_neox.embed_in(idx)
        for i, layer in enumerate(self.gpt_neox.layers):
            if hooks is not None:
                hooks[f"blocks.{i}.hook_resid_pre"] = x
            x = layer(x, hooks, i)
            name = f"blocks.{i}.hook_resid_post"
            if hooks is not None:
                hooks[name] = x
            if patch and name in patch:
                x = patch[name](x)
        # logits over all vocab_size rows: the padding rows take part in the softmax
        return self.embed_out(self.gpt_neox.final_layer_norm(x))


def model_from_config(c):
    return GPTNeoX(**{k: c[k] for k in CFG})


# ---------------------------------------------------------------- data
def load_docs(text_dir, cache="/tmp/saegap-demo-text/pythia_docs_tokens.npz"):
    """All speeches in year order (file names start with the year), tokenized with ../model/tokenizer.json."""
    from bpe_train import Encoder, speeches
    enc = Encoder()
    names, texts = speeches(text_dir)
    if os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        if list(z["names"]) == names and str(z["tokenizer_sha256"]) == enc.sha256:
            return names, np.split(z["ids"], z["splits"])
    docs = [np.array(enc.encode(t), dtype=np.int32) for t in texts]
    np.savez(cache, names=np.array(names), ids=np.concatenate(docs),
             splits=np.cumsum([len(d) for d in docs])[:-1], tokenizer_sha256=np.array(enc.sha256))
    return names, docs


def split_docs(docs):
    # hold out the LAST documents (the most recent speeches): never trained on (bpe_train.n_heldout)
    from bpe_train import n_heldout
    n_held = n_heldout(len(docs))
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


def load_safetensors(path, dtype=torch.float32):
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
        out[name] = torch.from_numpy(a.astype(np.float64)).to(dtype)  # F16 -> exact in F32/F64
    return out


def load_exported_model(model_dir=os.path.join(DEMO, "model"), dtype=torch.float32):
    """The model exactly as saegap reads it (F16 weights, upcast to dtype)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    m = model_from_config(c).to(dtype)
    m.load_state_dict(load_safetensors(os.path.join(model_dir, "model.safetensors"), dtype), strict=True)
    return m.eval()


# ---------------------------------------------------------------- the SAE sites
# site -> basis of its SAE: "centred" = TransformerLens center_writing_weights (every residual-stream
# hook of GPT-NeoX is the HF value minus its mean over d_model, tests/python/neox_reference.py),
# "raw" = the Hugging Face value
SITES = {"blocks.0.hook_resid_post": "centred",
         "blocks.1.hook_resid_post": "raw",
         "blocks.2.hook_resid_post": "raw"}


def to_basis(x, basis):
    return x - x.mean(-1, keepdim=True) if basis == "centred" else x


def site_acts(model, idx):
    """{site: activation in its SAE's basis} for SITES."""
    hooks = {}
    with torch.no_grad():
        model(idx, hooks=hooks)
    return {s: to_basis(hooks[s], b) for s, b in SITES.items()}
