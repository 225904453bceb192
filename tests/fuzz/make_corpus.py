#!/usr/bin/python3
"""Writes tests/fuzz/fixture (a tiny GPT-2 model, two SAEs, tokens) and the seed corpora
tests/fuzz/corpus/<target>/ from real-format files: the test fixtures
(tests/python/saegap_fixtures.py, sae_fixtures.py), jobs/demo and result files written by
saegap itself on the fixture. Run from anywhere with Debian's python3 (numpy, h5py):

    SAEGAP_BIN=build/saegap /usr/bin/python3 tests/fuzz/make_corpus.py

The output is checked in; rerun only when a format changes (the result files record the
fixture's checksums, so fixture and result seeds must be written together). Every file is
small (< 100 KB).
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

import saegap_fixtures as fx  # noqa: E402
import sae_fixtures as sx  # noqa: E402

FIX = os.path.join(HERE, "fixture")
CORPUS = os.path.join(HERE, "corpus")
MODEL_NAME = "saegap-fuzz-gpt2"
D, L, NH, P, V = 8, 2, 2, 16, 32


def out(target, name):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, name)


def write_bytes(target, name, data):
    with open(out(target, name), "wb") as f:
        f.write(data)


def write_json(target, name, obj, indent=2):
    write_bytes(target, name, json.dumps(obj, indent=indent).encode())


# ---------------------------------------------------------------- fixture
def make_fixture():
    shutil.rmtree(FIX, ignore_errors=True)
    m = fx.make_gpt2_model(os.path.join(FIX, "model"), n_layer=L, n_head=NH, n_embd=D, n_positions=P,
                           vocab_size=V, seed=1)
    cfg = dict(m["config"])
    cfg["_name_or_path"] = MODEL_NAME
    with open(os.path.join(FIX, "model", "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    saes = os.path.join(FIX, "saes")
    sx.make_sae(os.path.join(saes, "blocks.0.hook_resid_pre"), D, 16, "blocks.0.hook_resid_pre",
                architecture="standard", generation="v6", model_name=MODEL_NAME,
                from_pretrained_kwargs={"center_writing_weights": True}, seed=2)
    sx.make_sae(os.path.join(saes, "blocks.1.attn.hook_z"), D, 16, "blocks.1.attn.hook_z",
                architecture="topk", generation="flat", k=4, model_name=MODEL_NAME,
                from_pretrained_kwargs={"fold_ln": True, "fold_value_biases": True}, seed=3)
    # sae_cfg's weights: every architecture's tensors in one file (a safetensors seed), and each
    # architecture's own in sae-<arch> (sae_load refuses a tensor its architecture does not use)
    rng = np.random.Generator(np.random.PCG64(4))
    F = 16
    t = {"W_enc": rng.standard_normal((D, F)) * 0.3, "W_dec": rng.standard_normal((F, D)) * 0.3,
         "b_enc": rng.standard_normal(F) * 0.1, "b_dec": rng.standard_normal(D) * 0.1,
         "threshold": np.abs(rng.standard_normal(F)) * 0.1, "b_gate": rng.standard_normal(F) * 0.1,
         "b_mag": rng.standard_normal(F) * 0.1, "r_mag": rng.standard_normal(F) * 0.1,
         "scaling_factor": 1 + 0.1 * rng.standard_normal(F)}
    os.makedirs(os.path.join(FIX, "sae-all-archs"), exist_ok=True)
    fx.write_safetensors(os.path.join(FIX, "sae-all-archs", "sae_weights.safetensors"), t)
    common = ("W_enc", "b_enc", "W_dec", "b_dec", "scaling_factor")
    for arch, names in (("standard", common), ("topk", common), ("jumprelu", common + ("threshold",)),
                        ("gated", ("W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag", "scaling_factor"))):
        os.makedirs(os.path.join(FIX, "sae-" + arch), exist_ok=True)
        fx.write_safetensors(os.path.join(FIX, "sae-" + arch, "sae_weights.safetensors"), {k: t[k] for k in names})
    sx.write_cfg(os.path.join(FIX, "sae-all-archs"), sx._build_cfg("v6", D, F, "blocks.0.hook_resid_pre", "standard", True,
                                                         "none", None, MODEL_NAME, {}, False, False, P))
    fx.write_tokens_npy(os.path.join(FIX, "tokens.npy"), fx.random_tokens(6, 8, V, seed=5, bos=V - 1))


# ---------------------------------------------------------------- safetensors
def corpus_safetensors():
    tgt = "safetensors"
    shutil.copy(os.path.join(FIX, "model", "model.safetensors"), out(tgt, "fixture-model-f32"))
    shutil.copy(os.path.join(FIX, "sae-all-archs", "sae_weights.safetensors"), out(tgt, "fixture-sae-all-archs"))
    tmp = os.path.join(CORPUS, ".tmp")
    for dt, prefix in (("F16", False), ("BF16", True)):
        fx.make_gpt2_model(tmp, n_layer=1, n_head=2, n_embd=4, n_positions=4, vocab_size=8, dtype=dt,
                           prefix=prefix, extra_buffers="U8")
        shutil.copy(os.path.join(tmp, "model.safetensors"), out(tgt, "model-%s%s" % (dt.lower(), "" if prefix else "-noprefix")))
    shutil.rmtree(tmp)
    dts = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"]
    tensors = {"t_%s" % d.lower(): np.arange(6).reshape(2, 3) for d in dts}
    fx.write_safetensors(out(tgt, "every-dtype"), tensors, dtypes={"t_%s" % d.lower(): d for d in dts})
    fx.write_safetensors(out(tgt, "scalar-and-empty"), {"s": np.array(1.5), "e": np.zeros((0, 3)), "v": np.ones(3)},
                         metadata={"format": "pt", "note": "x"})
    fx.write_safetensors(out(tgt, "no-tensors"), {}, metadata={"format": "pt"})
    fx.write_safetensors(out(tgt, "four-dims"), {"x": np.ones((1, 2, 1, 2))}, dtype="F16")
    # F8 dtypes and an unaligned header (not padded to 8 bytes), written by hand
    h = json.dumps({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]},
                    "b": {"dtype": "F8_E5M2", "shape": [1], "data_offsets": [2, 3]}}).encode()
    write_bytes(tgt, "f8-unpadded", struct.pack("<Q", len(h)) + h + b"\x38\x40\x3c")


# ---------------------------------------------------------------- config.json
def corpus_model_config():
    tgt = "model_config"
    shutil.copy(os.path.join(FIX, "model", "config.json"), out(tgt, "fixture"))
    shutil.copy(os.path.join(ROOT, "jobs", "demo", "model", "config.json"), out(tgt, "demo"))
    with open(os.path.join(FIX, "model", "config.json")) as f:
        base = json.load(f)
    c = {k: base[k] for k in ("n_layer", "n_head", "n_embd", "vocab_size")}
    c["n_ctx"] = P
    write_json(tgt, "minimal-n-ctx", c, indent=None)
    c = dict(base, activation_function="relu", scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=False,
             scale_attn_weights=None, bos_token_id=None, pad_token_id=0, layer_norm_epsilon=1e-6)
    write_json(tgt, "relu-flags", c)
    c = dict(base, activation_function="gelu", model_type="gpt2", eos_token_id=3)
    del c["_name_or_path"]
    write_json(tgt, "gelu-no-name", c)
    c = dict(base, activation_function="gelu_pytorch_tanh", torch_dtype="bfloat16", n_inner=None, bos_token_id=1e3)
    write_json(tgt, "gelu-tanh", c, indent=None)


# ---------------------------------------------------------------- tokenizer files
TOKENIZER_SEP = b"\n--8<--\n"


def corpus_tokenizer_special():
    """special_tokens_map.json, tokenizer_config.json, tokenizer.json joined by TOKENIZER_SEP (an
    empty part: that file absent), as fuzz_tokenizer_special.c splits them; Gemma-2's layout."""
    tgt = "tokenizer_special"

    def added(c, special=True):
        return {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                "special": special}
    toks = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<start_of_turn>": 106,
            "<end_of_turn>": 107}
    smap = {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "bos_token": added("<bos>"),
            "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": added("<unk>")}
    tcfg = {"add_bos_token": True, "added_tokens_decoder": {str(i): added(c) for c, i in toks.items()},
            "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
            "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "mask_token": None}
    tjson = {"version": "1.0", "added_tokens": [dict(added(c), id=i) for c, i in toks.items()],
             "model": {"type": "BPE", "vocab": dict(toks, a=5, b=6), "merges": []}}
    unigram = {"added_tokens": [], "model": {"type": "Unigram", "vocab": [["<pad>", 0.0], ["</s>", 0.0],
                                                                          ["<s>", 0.0], ["<unk>", 0.0]]}}
    j = lambda o: json.dumps(o).encode()
    S = TOKENIZER_SEP
    write_bytes(tgt, "gemma2-all-three", j(smap) + S + j(tcfg) + S + j(tjson))
    write_bytes(tgt, "gemma2-map-and-tokenizer", j(smap) + S + S + j(tjson))
    write_bytes(tgt, "gemma2-config-only", S + j(tcfg) + S)
    write_bytes(tgt, "tokenizer-json-only", S + S + j(tjson))
    write_bytes(tgt, "unigram-vocab-list", j({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                              "additional_special_tokens": ["<missing>"]}) + S + S + j(unigram))
    write_bytes(tgt, "gpt2", j({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                "unk_token": "<|endoftext|>"}) + S + S +
                j({"added_tokens": [{"id": 50256, "content": "<|endoftext|>", "special": True}],
                   "model": {"type": "BPE", "vocab": {"<|endoftext|>": 50256}}}))


# ---------------------------------------------------------------- cfg.json
def corpus_sae_cfg():
    tgt = "sae_cfg"
    demo = os.path.join(ROOT, "jobs", "demo", "saes")
    for name in ("blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.3.hook_resid_post"):
        shutil.copy(os.path.join(demo, name, "cfg.json"), out(tgt, "demo-" + name))
    for name in sorted(os.listdir(os.path.join(FIX, "saes"))):
        shutil.copy(os.path.join(FIX, "saes", name, "cfg.json"), out(tgt, "fixture-" + name))
    F = 16
    hooks = [("blocks.0.hook_resid_pre", D), ("blocks.1.hook_resid_mid", D), ("blocks.1.hook_resid_post", D),
             ("blocks.0.attn.hook_z", D), ("blocks.1.hook_attn_out", D), ("blocks.0.hook_mlp_out", D),
             ("blocks.1.mlp.hook_post", 4 * D)]
    kwargs = [None, {}, {"center_writing_weights": False}, {"fold_ln": True, "fold_value_biases": True},
              {"center_writing_weights": True, "fold_ln": True, "fold_value_biases": True, "center_unembed": True,
               "n_devices": 1, "dtype": "float32"}]
    norms = ["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]
    i = 0
    for gen in ("legacy", "flat", "v6"):
        for arch in (("standard",) if gen == "legacy" else ("standard", "jumprelu", "topk", "gated")):
            for hook, d_in in (hooks if arch == "standard" else hooks[:1] + hooks[3:4]):
                cfg = sx._build_cfg(gen, d_in, F, hook, arch, i % 3 != 2, norms[i % 4], 4 if arch == "topk" else None,
                                    MODEL_NAME, kwargs[i % 5], i % 2 == 1, arch == "topk" and i % 2 == 0, P)
                write_json(tgt, "%s-%s-%s" % (gen, arch, hook), cfg, indent=None if i % 2 else 2)
                i += 1
    # normalize_activations as a boolean, activation_fn topk spelled in a flat cfg
    cfg = sx._build_cfg("flat", D, F, "blocks.0.hook_resid_pre", "standard", True, True, None, MODEL_NAME, None,
                        False, False, P)
    cfg["activation_fn_str"] = "topk"
    cfg["activation_fn_kwargs"] = {"k": 3}
    write_json(tgt, "flat-topk-as-activation", cfg)


# ---------------------------------------------------------------- tokens
def npy_bytes(arr, version=None, fortran=False):
    import io
    buf = io.BytesIO()
    a = np.asfortranarray(arr) if fortran else np.ascontiguousarray(arr)
    np.lib.format.write_array(buf, a, version=version)
    return buf.getvalue()


def corpus_tokens():
    toks = fx.random_tokens(3, 5, 211, seed=6, bos=210)
    demo = np.load(os.path.join(ROOT, "jobs", "demo", "tokens.npy"))[:2, :32]
    write_bytes("tokens_npy", "demo-2x32-i4", npy_bytes(demo))
    for dt in ("<i8", "<i4", "<u2", "|u1", "|i1", "<u4", "<u8", "<i2"):
        write_bytes("tokens_npy", "fixture-%s" % dt.replace("<", "le-").replace("|", ""), npy_bytes(toks.astype(dt)))
    write_bytes("tokens_npy", "fortran-i8", npy_bytes(toks.astype("<i8"), fortran=True))
    write_bytes("tokens_npy", "v2-header-i4", npy_bytes(toks.astype("<i4"), version=(2, 0)))
    write_bytes("tokens_npy", "v3-header-u2", npy_bytes(toks.astype("<u2"), version=(3, 0)))
    write_bytes("tokens_npy", "one-d-refused", npy_bytes(np.arange(4, dtype="<i8")))

    flat = toks.reshape(-1)
    write_bytes("tokens_bin", "flat-u16-15", flat.astype("<u2").tobytes())
    write_bytes("tokens_bin", "flat-u16-demo-64", demo.reshape(-1)[:64].astype("<u2").tobytes())
    for version in (1, 2):
        header = np.zeros(256, dtype="<i4")
        header[0], header[1], header[2] = fx.LLMC_MAGIC, version, flat.size
        write_bytes("tokens_bin", "llmc-v%d" % version, header.tobytes() + flat.astype("<u2").tobytes())
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = fx.LLMC_MAGIC, 1, 64
    write_bytes("tokens_bin", "llmc-demo-64", header.tobytes() + demo.reshape(-1)[:64].astype("<u2").tobytes())

    import h5py
    for dt in ("int32", "int64", "uint16", "int8", "uint64"):
        fx.write_tokens_h5(out("tokens_hdf5", "fixture-%s" % dt), toks, dtype=dt)
    with h5py.File(out("tokens_hdf5", "chunked-gzip-extra"), "w") as f:
        f.create_dataset("tokens", data=toks.astype("int32"), chunks=(1, 5), compression="gzip")
        f.create_dataset("other", data=np.ones(3))
        f.attrs["note"] = "x"
    with h5py.File(out("tokens_hdf5", "big-endian-in-group"), "w") as f:
        f.create_dataset("tokens", data=toks.astype(">i4"))
        f.create_group("g").create_dataset("tokens", data=toks[:1])
    with h5py.File(out("tokens_hdf5", "latest-format"), "w", libver="latest") as f:
        f.create_dataset("tokens", data=demo.astype("int32"))
    with h5py.File(out("tokens_hdf5", "float-refused"), "w") as f:
        f.create_dataset("tokens", data=toks.astype("float32"))


# ---------------------------------------------------------------- job files
def corpus_job_file():
    tgt = "job_file"
    shutil.copy(os.path.join(ROOT, "jobs", "demo.job"), out(tgt, "demo"))
    shutil.copy(os.path.join(ROOT, "jobs", "gpt2-small-res-jb.job"), out(tgt, "gpt2-small-res-jb"))
    write_bytes(tgt, "every-key", b"""; every key of saegap run --help
model = /m
sae = /s1
sae = /s2
tokens = t.bin
ctx = 128
contexts = 16
interventions = sae,eps_random,zero_ablation
scope = position
position = 3
window = 4
examples = 2
samples = 3
bos = include
seed = 18446744073709551615
latent-noise = 0.25
norm-scaling-factor = blocks.0.hook_resid_pre=1.5,blocks.1.attn.hook_z=2
basis = center_writing_weights+fold_value_biases
out = r.h5
threads-per-rank = 2
ranks = 4
rank-memory = 1.5GiB
allow-model-mismatch = true
quiet = yes
logits = false
sites = all
""")
    write_bytes(tgt, "rank-memory-sizes", b"""rank-memory = 0x1p40KB
model = /m
""")

    write_bytes(tgt, "comments-spacing", b"# comment\r\n\r\n   model=/m   ; inline\n\ttokens =t.npy # x\nseed=0\n"
                                          b"sae=a\nsae=b\nsae=c\n")
    write_bytes(tgt, "refused-section", b"[job]\nmodel = x\n")


# ---------------------------------------------------------------- result files
def run(args, **kw):
    print(" ".join(args), file=sys.stderr)
    subprocess.run(args, check=True, **kw)


def corpus_results():
    import h5py
    saegap = os.environ.get("SAEGAP_BIN")
    if not saegap:
        print("SAEGAP_BIN not set: result-file seeds not written", file=sys.stderr)
        return
    tmp = os.path.join(CORPUS, ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # exactly the command of fuzz_result_resume.c (paths relative to the fixture: the fuzz
    # target passes absolute ones, which the job identity does not include)
    res = os.path.join(tmp, "complete.h5")
    job = [saegap, "run", "--model", os.path.join(FIX, "model"), "--sae", os.path.join(FIX, "saes"),
           "--tokens", os.path.join(FIX, "tokens.npy"), "--interventions", "sae,eps_random,zero_ablation",
           "--examples", "1", "--threads-per-rank", "1", "--quiet"]
    run(job + ["--out", res], env=env)
    shutil.copy(res, os.path.join(tmp, "left.h5"))
    with h5py.File(os.path.join(tmp, "left.h5"), "r+") as f:
        done = f["progress/unit_done"][...]
        done[len(done) // 2:] = 0
        f["progress/unit_done"][...] = done
        f.attrs["complete"] = 0
    shutil.copy(res, os.path.join(tmp, "none-done.h5"))
    with h5py.File(os.path.join(tmp, "none-done.h5"), "r+") as f:
        f["progress/unit_done"][...] = 0
        f.attrs["complete"] = 0
    # scope position, samples 3: the zscore datasets and the window attribute (verify, info)
    pos = os.path.join(tmp, "position.h5")
    run([saegap, "run", "--model", os.path.join(FIX, "model"), "--sae", os.path.join(FIX, "saes", "blocks.0.hook_resid_pre"),
         "--tokens", os.path.join(FIX, "tokens.npy"), "--interventions", "sae,eps_random", "--scope", "position",
         "--position", "2", "--window", "3", "--samples", "3", "--threads-per-rank", "1", "--quiet", "--out", pos], env=env)
    dump = os.path.join(tmp, "dump.h5")
    run([saegap, "dump", "--model", os.path.join(FIX, "model"), "--tokens", os.path.join(FIX, "tokens.npy"),
         "--sites", "blocks.0.hook_resid_pre", "--threads-per-rank", "1", "--quiet", "--out", dump], env=env)
    for tgt in ("result_verify", "result_info", "result_resume"):
        for name in ("complete", "left", "none-done"):
            shutil.copy(os.path.join(tmp, name + ".h5"), out(tgt, name))
    for tgt in ("result_verify", "result_info"):
        shutil.copy(pos, out(tgt, "position-samples"))
    shutil.copy(dump, out("result_info", "dump"))
    shutil.copy(out("tokens_hdf5", "fixture-int32"), out("result_info", "tokens"))
    shutil.rmtree(tmp)


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    make_fixture()
    corpus_safetensors()
    corpus_model_config()
    corpus_sae_cfg()
    corpus_tokenizer_special()
    corpus_tokens()
    corpus_job_file()
    corpus_results()
    big = [(os.path.getsize(os.path.join(d, f)), os.path.join(d, f))
           for d, _, fs in os.walk(HERE) for f in fs if "corpus" in d or "fixture" in d]
    over = [p for s, p in big if s >= 100_000]
    if over:
        sys.exit("seed files of 100 KB or more: %s" % over)
    print("wrote %d files, largest %d bytes" % (len(big), max(big)[0]))


if __name__ == "__main__":
    main()
