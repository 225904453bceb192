"""Test fixtures for saegap: tiny GPT-2 models and token files in the formats
users already have (FIELD-FACTS.md sections 1 and 6).

Everything here is written from the published formats (safetensors, Hugging
Face GPT-2 config/tensor names, nanoGPT / llm.c token files), independently of
saegap's C code.  Only NumPy and h5py are used.
"""

import json
import os
import struct

import numpy as np

__all__ = [
    "to_bf16_bits",
    "bf16_bits_to_f32",
    "round_to_dtype",
    "write_safetensors",
    "write_checkpoint",
    "checkpoint_files",
    "SHARD_NAMES",
    "INDEX_NAME",
    "TORCH_DTYPE",
    "make_gpt2_model",
    "write_tokens_h5",
    "write_tokens_npy",
    "write_tokens_bin",
    "write_tokens_llmc",
    "random_tokens",
    "LLMC_MAGIC",
]

LLMC_MAGIC = 20240520

# safetensors dtype name -> (numpy dtype used for the bytes, element size)
_NP_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}


def to_bf16_bits(x):
    """float array -> uint16 bfloat16 bits (float32 first, then round to nearest even)."""
    f = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    u = f.view(np.uint32).astype(np.uint64)
    lsb = (u >> 16) & 1
    rounded = (u + 0x7FFF + lsb) >> 16
    bits = rounded.astype(np.uint16)
    # keep NaN a (quiet) NaN
    nan = np.isnan(f)
    if np.any(nan):
        bits = np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), bits)
    return bits.reshape(f.shape)


def bf16_bits_to_f32(bits):
    b = np.asarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def round_to_dtype(x, dtype):
    """The float64 values that a tensor holds after being stored as `dtype`."""
    x = np.asarray(x)
    if dtype == "F64":
        return x.astype(np.float64)
    if dtype == "F32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "F16":
        return x.astype(np.float32).astype(np.float16).astype(np.float64)
    if dtype == "BF16":
        return bf16_bits_to_f32(to_bf16_bits(x)).astype(np.float64)
    if dtype == "BOOL":
        return (x != 0).astype(np.float64)
    return x.astype(_NP_DTYPES[dtype]).astype(np.float64)


def _encode(arr, dtype):
    arr = np.asarray(arr)
    if dtype == "BF16":
        data = to_bf16_bits(arr)
    elif dtype == "BOOL":
        data = (arr != 0).astype(np.uint8)
    elif dtype in ("F16",):
        data = arr.astype(np.float32).astype("<f2")
    elif dtype in _NP_DTYPES:
        data = arr.astype(_NP_DTYPES[dtype])
    else:
        raise ValueError("unsupported safetensors dtype %r" % dtype)
    return np.ascontiguousarray(data).tobytes()


def write_safetensors(path, tensors, dtype="F32", metadata=None, dtypes=None):
    """Write a real safetensors file.

    Layout: u64 LE header length N, N bytes of JSON (padded with spaces to a
    multiple of 8), then the data block with the tensors back to back in name
    order.  `dtype` is the default dtype, `dtypes` maps names to per-tensor
    dtypes (F64/F32/F16/BF16/I64/I32/I16/I8/U64/U32/U16/U8/BOOL).
    """
    dtypes = dict(dtypes or {})
    header = {}
    if metadata is None:
        metadata = {"format": "pt"}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        dt = dtypes.get(name, dtype)
        blob = _encode(arr, dt)
        assert len(blob) == int(np.prod(arr.shape, dtype=np.int64)) * _NP_DTYPES[dt].itemsize
        header[name] = {
            "dtype": dt,
            "shape": [int(s) for s in arr.shape],
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (-len(hjson)) % 8
    hjson += b" " * pad
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    return path


SHARD_NAMES = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX_NAME = "model.safetensors.index.json"

# safetensors dtype -> config.json's torch_dtype (the Pythia and Gemma-2 folders; others: float32)
TORCH_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def checkpoint_files(dir, sharded):
    """(files, model_path) of a folder write_checkpoint wrote: the safetensors files, and the
    path a user names (model.safetensors, or the index when sharded)."""
    if sharded:
        return [os.path.join(dir, s) for s in SHARD_NAMES], os.path.join(dir, INDEX_NAME)
    files = [os.path.join(dir, "model.safetensors")]
    return files, files[0]


def write_checkpoint(dir, config, tensors, dtypes, sharded, embed_prefix, layers_prefix, n_layer):
    """config.json and `tensors` ({name: float64 array}, stored as dtypes[name]) as
    model.safetensors, or (sharded) as Hugging Face's two shards and their index: SHARD_NAMES[0]
    holds the names under embed_prefix and the first ceil(n_layer/2) layers (layers_prefix +
    "<l>."), SHARD_NAMES[1] the rest; INDEX_NAME = {"metadata": {"total_size": bytes},
    "weight_map": {name: shard}}. The Pythia and Gemma-2 fixtures write their folders with it."""
    with open(os.path.join(dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if not sharded:
        write_safetensors(os.path.join(dir, "model.safetensors"), tensors, dtypes=dtypes)
        return
    first = (n_layer + 1) // 2

    def shard_of(name):
        if name.startswith(embed_prefix):
            return 0
        if name.startswith(layers_prefix):
            return 0 if int(name[len(layers_prefix):].split(".")[0]) < first else 1
        return 1

    parts = ({}, {})
    for k, v in tensors.items():
        parts[shard_of(k)][k] = v
    weight_map, total = {}, 0
    for i, part in enumerate(parts):
        write_safetensors(os.path.join(dir, SHARD_NAMES[i]), part, dtypes={k: dtypes[k] for k in part})
        for k, v in part.items():
            weight_map[k] = SHARD_NAMES[i]
            total += int(np.prod(np.shape(v), dtype=np.int64)) * _NP_DTYPES[dtypes[k]].itemsize
    index = {"metadata": {"total_size": total},
             "weight_map": {k: weight_map[k] for k in sorted(weight_map)}}
    with open(os.path.join(dir, INDEX_NAME), "w") as f:
        json.dump(index, f, indent=2)


def make_gpt2_model(dir, n_layer=2, n_head=5, n_embd=60, n_positions=40,
                    vocab_size=211, dtype="F32", prefix=True, seed=0,
                    extra_buffers=True, activation_function="gelu_new",
                    layer_norm_epsilon=1e-5):
    """Create a random Hugging Face GPT-2 folder (config.json + model.safetensors).

    Weights are chosen so that every basis detail is visible: nonzero
    LayerNorm biases and non-unit LayerNorm weights, nonzero value biases,
    residual-stream means clearly away from zero (constant offsets on wte, wpe
    and the c_proj biases), attention that is far from uniform.

    extra_buffers: False, or True / "BOOL" / "U8" / "F32" = the dtype used for
    the causal-mask buffer `h.L.attn.bias` [1,1,P,P] (a `masked_bias` scalar is
    written as F32 alongside).  The loader must ignore both.

    Returns {"config": config dict, "params": {name without prefix: float64
    array of exactly the stored values}, "dir", "model_path", "dtype"}.
    """
    assert n_embd % n_head == 0
    os.makedirs(dir, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    D, V, P, L = n_embd, vocab_size, n_positions, n_layer

    def nrm(shape, std, mean=0.0):
        return mean + std * rng.standard_normal(shape)

    p = {}
    # embeddings: per-row random offset plus a global offset => nonzero mean over d
    p["wte.weight"] = nrm((V, D), 0.3) + 0.4 + nrm((V, 1), 0.3)
    p["wpe.weight"] = nrm((P, D), 0.15) - 0.25 + nrm((P, 1), 0.2)
    for l in range(L):
        h = "h.%d." % l
        p[h + "ln_1.weight"] = 1.0 + nrm((D,), 0.1)
        p[h + "ln_1.bias"] = nrm((D,), 0.1)
        w_attn = nrm((D, 3 * D), 0.2)
        w_attn[:, 2 * D:] *= 0.5  # W_V a bit smaller than W_Q/W_K
        p[h + "attn.c_attn.weight"] = w_attn
        b_attn = nrm((3 * D,), 0.1)
        b_attn[2 * D:] += 0.2  # clearly nonzero b_V
        p[h + "attn.c_attn.bias"] = b_attn
        p[h + "attn.c_proj.weight"] = nrm((D, D), 0.08)
        p[h + "attn.c_proj.bias"] = nrm((D,), 0.1) + 0.15
        p[h + "ln_2.weight"] = 1.0 + nrm((D,), 0.1)
        p[h + "ln_2.bias"] = nrm((D,), 0.1)
        p[h + "mlp.c_fc.weight"] = nrm((D, 4 * D), 0.12)
        p[h + "mlp.c_fc.bias"] = nrm((4 * D,), 0.1)
        p[h + "mlp.c_proj.weight"] = nrm((4 * D, D), 0.06)
        p[h + "mlp.c_proj.bias"] = nrm((D,), 0.1) - 0.1
    p["ln_f.weight"] = 1.0 + nrm((D,), 0.1)
    p["ln_f.bias"] = nrm((D,), 0.1)

    pre = "transformer." if prefix else ""
    tensors = {}
    dts = {}
    params = {}
    for k, v in p.items():
        tensors[pre + k] = v
        params[k] = round_to_dtype(v, dtype)
    if extra_buffers:
        bdt = "BOOL" if extra_buffers is True else str(extra_buffers)
        mask = np.tril(np.ones((P, P)))[None, None]
        for l in range(L):
            nb = pre + "h.%d.attn.bias" % l
            nm = pre + "h.%d.attn.masked_bias" % l
            tensors[nb] = mask
            dts[nb] = bdt
            tensors[nm] = np.array(-1e4)
            dts[nm] = "F32"
    model_path = os.path.join(dir, "model.safetensors")
    write_safetensors(model_path, tensors, dtype=dtype, dtypes=dts)

    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "n_positions": n_positions,
        "n_ctx": n_positions,
        "vocab_size": vocab_size,
        "layer_norm_epsilon": layer_norm_epsilon,
        "activation_function": activation_function,
        "bos_token_id": vocab_size - 1,
        "eos_token_id": vocab_size - 1,
        "n_inner": None,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(dtype, "float32"),
    }
    with open(os.path.join(dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return {"config": config, "params": params, "dir": str(dir),
            "model_path": model_path, "dtype": dtype}


# ---------------------------------------------------------------- tokens

def write_tokens_h5(path, tokens, dtype="int32"):
    import h5py
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=np.asarray(tokens).astype(dtype))
    return path


def write_tokens_npy(path, tokens, dtype="<i8"):
    np.save(path, np.asarray(tokens).astype(dtype))
    return path


def write_tokens_bin(path, tokens):
    t = np.asarray(tokens).reshape(-1)
    assert t.min() >= 0 and t.max() < 65536
    with open(path, "wb") as f:
        f.write(t.astype("<u2").tobytes())
    return path


def write_tokens_llmc(path, tokens):
    t = np.asarray(tokens).reshape(-1)
    assert t.min() >= 0 and t.max() < 65536
    header = np.zeros(256, dtype="<i4")
    header[0] = LLMC_MAGIC
    header[1] = 1
    header[2] = t.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(t.astype("<u2").tobytes())
    return path


def random_tokens(n, ctx, vocab_size, seed=0, bos=None):
    rng = np.random.Generator(np.random.PCG64(seed))
    t = rng.integers(0, vocab_size, size=(n, ctx), dtype=np.int64)
    if bos is not None:
        t[:, 0] = bos
    return t
