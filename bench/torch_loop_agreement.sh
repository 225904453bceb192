#!/usr/bin/env bash
# Does bench/torch_loop.py compute what saegap computes? On a small random GPT-2 (2 layers,
# d_model 64, 4 heads, GPT-2's vocabulary of 50257, F32) and SAEs fitted to its activations in
# different bases (cfg without model_from_pretrained_kwargs = processed, {} = raw,
# {"center_writing_weights": true}, all four flags true at attn.hook_z), runs `saegap run` and
# bench/torch_loop.py --compare on the same job: exit 0 when every mean KL per site and
# intervention agrees to 1e-3 relative.
#   Usage: bash bench/torch_loop_agreement.sh [WORKDIR (default: a new /tmp dir)]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SAEGAP_BIN:-build/saegap}
[ -x "$BIN" ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j2 > /dev/null; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=${1:-$(mktemp -d /tmp/saegap-torch-agree.XXXXXX)}
mkdir -p "$W"
if [ ! -f "$W/tokens.npy" ]; then
  /usr/bin/python3 - "$W" <<'PY'
import os, sys
import numpy as np
sys.path.insert(0, "tests/python")
import saegap_fixtures as fx, sae_fixtures as sf, tl_reference as tl
w = sys.argv[1]
V = 50257
m = fx.make_gpt2_model(os.path.join(w, "model"), n_layer=2, n_head=4, n_embd=64, n_positions=64,
                       vocab_size=V, dtype="F32", seed=3)
bos = int(m["config"]["bos_token_id"])
tok = fx.random_tokens(8, 64, V, seed=5, bos=bos)
tok[3, 40] = bos                                   # a BOS inside a packed row
np.save(os.path.join(w, "tokens.npy"), tok.astype("<i4"))
ALL4 = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True}
ABSENT = None
# (site, cfg generation, architecture, model_from_pretrained_kwargs)
saes = [
    ("blocks.0.hook_resid_post", "legacy", "standard", ABSENT),        # processed (key absent)
    ("blocks.1.hook_resid_pre", "flat", "standard", {}),                # raw
    ("blocks.1.hook_resid_mid", "v6", "jumprelu", {"center_writing_weights": True}),
    ("blocks.1.attn.hook_z", "v6", "standard", ALL4),                   # minus b_V + ln_1.b W_V
    ("blocks.0.attn.hook_z", "flat", "standard", {}),                   # raw hook_z
    ("blocks.0.mlp.hook_post", "v6", "topk", ABSENT),
]
models = {}
for site, gen, arch, kw in saes:
    flags = tl.saelens_flags({} if kw is None else {"model_from_pretrained_kwargs": kw})
    key = tuple(sorted(flags.items()))
    if key not in models:
        cache = {}
        tl.TLModel(m["config"], m["params"], **flags).run(tok[:4], cache=cache)
        models[key] = cache
    x = models[key][site].reshape(-1, models[key][site].shape[-1])
    sf.make_sae(os.path.join(w, "saes", site), x.shape[-1], 256, site, architecture=arch, generation=gen,
                from_pretrained_kwargs=kw, x_sample=x, seed=hash(site) % 1000, model_name="tiny-gpt2")
PY
fi
IV=sae,eps_random,zero_ablation,norm_corrected_sae,sae_norm,theta_random
rm -f "$W/result.h5"
"$BIN" run --model "$W/model" --sae "$W/saes" --tokens "$W/tokens.npy" --interventions "$IV" \
    --examples 0 --threads-per-rank 1 --allow-model-mismatch --quiet --out "$W/result.h5"
/usr/bin/python3 bench/torch_loop.py --model "$W/model" --sae "$W/saes" --tokens "$W/tokens.npy" \
    --interventions "$IV" --threads 1 --compare "$W/result.h5"
