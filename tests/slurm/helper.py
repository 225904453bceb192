"""Helpers of tests/slurm/run-slurm-test.sh (Debian's /usr/bin/python3: numpy, h5py).

  helper.py make DIR N_CONTEXTS        tiny GPT-2 + 2 SAEs + N_CONTEXTS x 32 tokens, DIR/job.job
  helper.py progress FILE              "DONE TOTAL" of /progress/unit_done ("0 0" if unreadable)
  helper.py compare RESULT REFERENCE   every dataset under /sites and /correlation byte-identical
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))


def make(d, n_contexts):
    import saegap_fixtures as fx
    import sae_fixtures as sf
    fx.make_gpt2_model(os.path.join(d, "model"), n_layer=3, n_head=4, n_embd=128, n_positions=64,
                       vocab_size=2000, seed=1)
    fx.write_tokens_npy(os.path.join(d, "tokens.npy"),
                        fx.random_tokens(n_contexts, 32, 2000, seed=2, bos=1999))
    sf.make_sae(os.path.join(d, "saes", "a"), 128, 512, "blocks.1.hook_resid_pre",
                architecture="standard", generation="v6", model_name="model", seed=3,
                from_pretrained_kwargs={})
    sf.make_sae(os.path.join(d, "saes", "b"), 128, 512, "blocks.2.attn.hook_z", architecture="topk",
                k=16, generation="v6", model_name="model", seed=4, from_pretrained_kwargs={})
    with open(os.path.join(d, "job.job"), "w") as f:
        f.write("# tests/slurm: small sweep, interrupted and requeued on a one-node Slurm\n"
                "model = %s\nsae = %s\ntokens = %s\ninterventions = all\nseed = 5\n"
                % (os.path.join(d, "model"), os.path.join(d, "saes"), os.path.join(d, "tokens.npy")))


def progress(path):
    # Read while saegap may hold the file open for writing: no HDF5 file locking, and any
    # error (file not there yet, not flushed yet) just means "nothing known".
    os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
    import h5py
    try:
        with h5py.File(path, "r", locking=False) as f:
            d = f["progress/unit_done"][()]
        print(int((d != 0).sum()), int(d.size))
    except Exception:
        print(0, 0)


def compare(result, reference):
    import h5py

    def datasets(f):
        out = {}
        for top in ("sites", "correlation"):
            if top not in f:
                continue
            f[top].visititems(lambda name, obj: out.__setitem__(top + "/" + name, obj)
                              if isinstance(obj, h5py.Dataset) else None)
        return out

    bad = []
    with h5py.File(result, "r") as fr, h5py.File(reference, "r") as fe:
        r, e = datasets(fr), datasets(fe)
        if not any(k.startswith("sites/") for k in e) or not any(k.startswith("correlation/") for k in e):
            bad.append("the reference has no datasets under /sites or /correlation")
        for k in sorted(set(e) - set(r)):
            bad.append("missing in the result: /" + k)
        for k in sorted(set(r) - set(e)):
            bad.append("not in the reference: /" + k)
        for k in sorted(set(r) & set(e)):
            a, b = r[k][()], e[k][()]
            if a.dtype != b.dtype or a.shape != b.shape:
                bad.append("/%s: %s%s vs reference %s%s" % (k, a.dtype, a.shape, b.dtype, b.shape))
            elif a.tobytes() != b.tobytes():
                bad.append("/%s: bytes differ" % k)
        n = len(set(r) & set(e))
    if bad:
        print("result differs from the uninterrupted reference:")
        for line in bad[:40]:
            print("  " + line)
        return 1
    print("all %d datasets under /sites and /correlation byte-identical to the reference" % n)
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "make" and len(sys.argv) == 4:
        make(sys.argv[2], int(sys.argv[3]))
    elif cmd == "progress" and len(sys.argv) == 3:
        progress(sys.argv[2])
    elif cmd == "compare" and len(sys.argv) == 4:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
