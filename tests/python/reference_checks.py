"""The family-independent checks of the float64 references' own tests (test_neox_reference.py,
test_gemma_reference.py; the next family's reference test uses them too) and of the family tests
(test_neox.py, test_gemma.py: rel_err, log_softmax of saegap's logits): float64 closeness, the
safetensors header of a written file, a sharded folder's index against its shards, and the loader
strictness every reference's load_model must show. Written from the published formats, apart
from saegap's C code."""

import json
import os
import struct

import numpy as np
import pytest

from saegap_fixtures import INDEX_NAME, SHARD_NAMES, write_safetensors

__all__ = ["close", "rel_err", "log_softmax", "safetensors_header", "stored_dtypes",
           "check_sharded_index", "strictness_cases", "check_loader_strict"]


def close(a, b, tol=1e-10):
    """max |a - b| <= tol * max(1, max |b|), with b broadcast when it is a scalar."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if b.ndim == 0:
        b = np.broadcast_to(b, a.shape)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    err = float(np.abs(a - b).max()) if a.size else 0.0
    assert err <= tol * scale, "max abs err %g (scale %g)" % (err, scale)


def rel_err(got, ref):
    """max |got - ref| / max |ref| (saegap's values against a reference, test_neox/test_gemma)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def log_softmax(x):
    """log-softmax over the last axis, in float64 whatever x's dtype (saegap's logits)."""
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def safetensors_header(path):
    """The JSON header of a safetensors file, as written."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def stored_dtypes(path):
    """The set of dtypes a safetensors file stores its tensors in."""
    return {v["dtype"] for k, v in safetensors_header(path).items() if k != "__metadata__"}


def check_sharded_index(dir):
    """A folder sharded as SHARD_NAMES with INDEX_NAME: every shard holds tensors, each mapped to
    its own shard, the map names exactly the shards' tensors, and metadata.total_size is their
    bytes. -> (index, names of the tensors)."""
    with open(os.path.join(dir, INDEX_NAME)) as f:
        index = json.load(f)
    names, total = set(), 0
    for s in SHARD_NAMES:
        part = {k: v for k, v in safetensors_header(os.path.join(dir, s)).items() if k != "__metadata__"}
        assert part, s
        for k, v in part.items():
            assert index["weight_map"][k] == s
            total += v["data_offsets"][1] - v["data_offsets"][0]
        names |= set(part)
    assert names == set(index["weight_map"])
    assert index["metadata"]["total_size"] == total
    return index, names


def strictness_cases(unexpected, missing, wrong_shape=None, buffer=None):
    """The loader-strictness cases, from a family's names: (edits, match) pairs, edits
    {name: array, or None to leave the tensor out}, match the ValueError's message pattern or
    None (the folder loads, to the same parameters).
    unexpected: (name, array) of a tensor the family does not have; missing: a required name;
    wrong_shape: (name, array) of a required tensor in another shape; buffer: (name, array) of a
    buffer the loader ignores."""
    cases = [({unexpected[0]: unexpected[1]}, "unexpected"), ({missing: None}, "missing")]
    if wrong_shape:
        cases.append(({wrong_shape[0]: wrong_shape[1]}, "shape"))
    if buffer:
        cases.append(({buffer[0]: buffer[1]}, None))
    return cases


def check_loader_strict(load_model, dir, params, cases):
    """load_model(dir) on dir/model.safetensors holding params with each case's edits (dir holds
    the folder's config.json): refused with the case's message, or loading params' names."""
    for edits, match in cases:
        t = dict(params)
        for k, v in edits.items():
            if v is None:
                del t[k]
            else:
                t[k] = v
        write_safetensors(os.path.join(dir, "model.safetensors"), t)
        if match is None:
            assert set(load_model(dir)[1]) == set(params), edits.keys()
        else:
            with pytest.raises(ValueError, match=match):
                load_model(dir)
