"""The family-independent parts of the float64 references (gpt2_reference.py, neox_reference.py,
gemma_reference.py; the next family's reference imports them too and holds only what is new).

Written from the published formats and formulas, independently of saegap's C code, like the
references themselves: nothing here may be derived from the C implementation.

* `load_safetensors(path)`, `load_checkpoint(dir)`: an own safetensors reader (F64/F32/F16/BF16
  and the integer dtypes, exact stored values as float64) and a Hugging Face folder (single file,
  or shards through model.safetensors.index.json).
* `check_tensors(tensors, shapes, is_buffer, optional)`: the loader's strictness, the same for
  every family: buffers ignored, any other unexpected tensor, a missing one or a wrong shape an
  error (tests/python/reference_checks.py's `check_loader_strict` drives it).
* `hooked(acts, patch, name, value)`: records a hook's value and applies a patch, as a
  TransformerLens forward hook returning a new value does.
* `batch_tokens`, `log_softmax`, `gelu_erf`, `gelu_tanh`: small ops every forward uses.
"""

import json
import math
import os

import numpy as np

__all__ = ["load_safetensors", "load_checkpoint", "check_tensors", "hooked", "batch_tokens",
           "log_softmax", "gelu_erf", "gelu_tanh"]

_DT = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1",
}


# ---------------------------------------------------------------- files

def load_safetensors(path, names=None):
    """Own safetensors reader -> {name: float64 ndarray} (all tensors, or `names` only)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int(np.frombuffer(raw[:8], dtype="<u8")[0])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        dt = info["dtype"]
        shape = tuple(info["shape"])
        b, e = info["data_offsets"]
        npdt = np.dtype(_DT[dt])
        count = int(np.prod(shape, dtype=np.int64))
        assert e - b == count * npdt.itemsize, name
        assert base + e <= len(raw), name
        a = np.frombuffer(raw, dtype=npdt, count=count, offset=base + b)
        if dt == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(np.float64).reshape(shape)
    return out


def load_checkpoint(dir):
    """A Hugging Face folder -> (config dict, {name: float64 ndarray}): model.safetensors, or the
    shards a model.safetensors.index.json maps (each tensor in exactly the shard it names, every
    mapped tensor present), in the order Hugging Face's from_pretrained tries them."""
    with open(os.path.join(dir, "config.json")) as f:
        config = json.load(f)
    single = os.path.join(dir, "model.safetensors")
    index = os.path.join(dir, "model.safetensors.index.json")
    t = {}
    if os.path.exists(single):
        t = load_safetensors(single)
    elif os.path.exists(index):
        with open(index) as f:
            wm = json.load(f)["weight_map"]
        for shard in sorted(set(wm.values())):
            part = load_safetensors(os.path.join(dir, shard))
            for k, v in part.items():
                if k in t:
                    raise ValueError("tensor %s in two shards" % k)
                if wm.get(k) != shard:
                    raise ValueError("tensor %s not mapped to %s" % (k, shard))
                t[k] = v
        absent = [k for k in wm if k not in t]
        if absent:
            raise ValueError("index names tensors not in the shards: %s" % absent)
    else:
        raise FileNotFoundError("no model.safetensors or index in %s" % dir)
    return config, t


def check_tensors(tensors, shapes, is_buffer, optional=None):
    """A folder's tensors -> the parameters, strictly: names is_buffer(name) says are buffers are
    left out; every other name must be in `shapes` ({name: shape} of the required tensors) or
    `optional` (likewise, may be absent) with that shape; every required one must be there.
    Raises ValueError "unexpected tensor NAME", "NAME has shape S, expected E" or "missing
    tensors: [...]"."""
    optional = optional or {}
    params = {}
    for k, v in tensors.items():
        if is_buffer(k):
            continue
        want = shapes.get(k, optional.get(k))
        if want is None:
            raise ValueError("unexpected tensor %s" % k)
        if tuple(v.shape) != want:
            raise ValueError("%s has shape %s, expected %s" % (k, v.shape, want))
        params[k] = v
    missing = [k for k in shapes if k not in params]
    if missing:
        raise ValueError("missing tensors: %s" % missing)
    return params


# ---------------------------------------------------------------- forward helpers

def batch_tokens(tokens):
    """Token ids as an int64 [B, T] array (a single context [T] becomes [1, T])."""
    t = np.asarray(tokens, dtype=np.int64)
    if t.ndim == 1:
        t = t[None]
    assert t.ndim == 2
    return t


def hooked(acts, patch, name, value):
    """Records the hook's value; a patch {hook name: fn(value) -> value} replaces it
    downstream, as a TransformerLens forward hook returning a new value does."""
    acts[name] = value.copy()
    if patch and name in patch:
        return np.asarray(patch[name](value.copy()), dtype=np.float64)
    return value


# ---------------------------------------------------------------- ops

def log_softmax(x, axis=-1):
    m = x.max(axis, keepdims=True)
    y = x - m
    return y - np.log(np.exp(y).sum(axis, keepdims=True))


_verf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_erf(x):
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (ACT2FN["gelu"], TL "gelu")."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _verf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    """The tanh approximation (gelu_new, gelu_fast, gelu_pytorch_tanh):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
