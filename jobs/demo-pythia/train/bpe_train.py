"""Byte-level BPE for the Pythia-architecture demo, trained here on the training speeches.

Usage: bpe_train.py TEXT_DIR           train on the training speeches -> ../model/tokenizer.json,
                                        then run the self-test
       bpe_train.py --test TEXT_DIR    self-test only (the shipped tokenizer.json)

The file is in Hugging Face `tokenizers` JSON format, the layout of Pythia's own
tokenizer.json: GPT-2's pre-tokenizer regex and bytes_to_unicode table, id 0 =
<|endoftext|> (Pythia's BOS = EOS), ids 1..256 the 256 byte symbols (in GPT-2's
order, so byte symbol id = GPT-2's id + 1), then one token per merge, in merge order,
up to exactly VOCAB_SIZE tokens. The held-out speeches (the last 10% by year, the same
split as the GPT-2 demo) are never seen by the trainer.

Training (the classic algorithm, made incremental): count the unique pre-tokenized
words with their frequencies; keep the count of every adjacent symbol pair and an
index pair -> words that contain it; each merge rewrites only the words holding the
best pair and updates the counts of the pairs they lose and gain. The best pair is
taken from a lazy max-heap: highest count, ties broken by the smaller (a, b) in
code-point order, so the result is deterministic (no seed needed).
"""
import glob
import hashlib
import heapq
import json
import os
import sys
import time
from collections import Counter, defaultdict
from functools import lru_cache

import regex

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.normpath(os.path.join(HERE, ".."))
TOKENIZER = os.path.join(DEMO, "model", "tokenizer.json")
VOCAB_SIZE = 4000
EOT = "<|endoftext|>"

# GPT-2's pre-tokenizer (the regex of the ByteLevel pre-tokenizer with use_regex true)
PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    # GPT-2's table: every byte -> a printable character, printable bytes first
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# ---------------------------------------------------------------- the text and its split
def speeches(text_dir):
    """All speeches in year order (file names start with the year): names, texts."""
    files = sorted(glob.glob(os.path.join(text_dir, "*.txt")))
    texts = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            texts.append(fh.read().strip())
    return [os.path.basename(f) for f in files], texts


def n_heldout(n_docs, held_frac=0.1):
    # the LAST documents (the most recent speeches) are held out: never trained on
    return int(round(held_frac * n_docs))


# ---------------------------------------------------------------- training
def train(texts, vocab_size=VOCAB_SIZE):
    b2u = bytes_to_unicode()
    counts = Counter()
    for t in texts:
        counts.update(PAT.findall(t))
    words = [[b2u[b] for b in w.encode("utf-8")] for w in counts]
    freq = list(counts.values())
    pairs = defaultdict(int)
    where = defaultdict(set)
    for i, w in enumerate(words):
        for p in zip(w, w[1:]):
            pairs[p] += freq[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    vocab = [EOT] + list(b2u.values())  # GPT-2's byte order: printable bytes first
    known = set(vocab)
    merges = []
    print(f"bpe: {sum(freq)} pre-tokenized words, {len(words)} unique, {len(pairs)} pairs", flush=True)
    while len(vocab) < vocab_size:
        while heap:
            c, p = heapq.heappop(heap)
            if pairs.get(p, 0) == -c and c < 0:  # lazy heap: skip stale entries
                break
        else:
            raise RuntimeError("ran out of pairs before the vocabulary was full")
        a, b = p
        new = a + b
        merges.append(p)
        if new not in known:  # a merge can rebuild a string an earlier merge made
            known.add(new)
            vocab.append(new)
        changed = set()
        for i in sorted(where.pop(p)):
            w, f = words[i], freq[i]
            if len(w) < 2:
                continue
            out, j, hit = [], 0, False
            while j < len(w):
                if j < len(w) - 1 and w[j] == a and w[j + 1] == b:
                    out.append(new)
                    j += 2
                    hit = True
                else:
                    out.append(w[j])
                    j += 1
            if not hit:  # the index may hold words that lost the pair to an earlier merge
                continue
            for q in zip(w, w[1:]):
                pairs[q] -= f
                changed.add(q)
            for q in zip(out, out[1:]):
                pairs[q] += f
                where[q].add(i)
                changed.add(q)
            words[i] = out
        pairs.pop(p, None)
        changed.discard(p)
        for q in changed:
            c = pairs.get(q, 0)
            if c > 0:
                heapq.heappush(heap, (-c, q))
            else:
                pairs.pop(q, None)
    final = {"".join(w): tuple(s) for w, s in zip(words, words)}
    return vocab, merges, final


def tokenizer_json(vocab, merges):
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": 0, "content": EOT, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": dict(byte_level, add_prefix_space=True),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(vocab)},
                  "merges": [f"{a} {b}" for a, b in merges]},
    }


# ---------------------------------------------------------------- encoding
class Encoder:
    """Reads tokenizer.json; applies the merges by rank (OpenAI's encoder.py algorithm)."""

    def __init__(self, path=TOKENIZER):
        with open(path, "rb") as f:
            raw = f.read()
        self.sha256 = hashlib.sha256(raw).hexdigest()
        tj = json.loads(raw)
        self.encoder = tj["model"]["vocab"]
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(tj["model"]["merges"])}
        self.specials = {t["id"]: t["content"] for t in tj["added_tokens"]}
        self.b2u = bytes_to_unicode()
        self.u2b = {v: k for k, v in self.b2u.items()}
        self.bpe = lru_cache(maxsize=1 << 18)(self._bpe)

    def _bpe(self, token):
        word = list(token)
        while len(word) > 1:
            # merge the lowest-ranked (earliest learned) adjacent pair everywhere
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return tuple(word)

    def encode(self, text):
        ids = []
        for piece in PAT.findall(text):
            u = "".join(self.b2u[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(u))
        return ids

    def decode(self, ids):
        s = "".join(self.decoder[i] for i in ids)
        return bytearray(self.u2b[c] for c in s).decode("utf-8", errors="replace")


def selftest(enc, held_texts=()):
    v = enc.encoder
    assert len(v) == VOCAB_SIZE and sorted(v.values()) == list(range(VOCAB_SIZE)), len(v)
    assert v[EOT] == 0 and enc.specials == {0: EOT}
    b2u = bytes_to_unicode()
    assert [enc.decoder[i] for i in range(1, 257)] == list(b2u.values())  # ids 1..256: the bytes
    for a, b in enc.ranks:
        assert a in v and b in v and a + b in v, (a, b)
    s = "Fellow-Citizens of the Senate, 1790: \u00e9t\u00e9 \u2014 we're  here.\n\n\U0001F600 \t x"
    assert enc.decode(enc.encode(s)) == s
    assert enc.encode(" the") == [v["\u0120the"]], enc.encode(" the")  # a common word is one token
    for t in held_texts:
        assert enc.decode(enc.encode(t)) == t


def main():
    args = [a for a in sys.argv[1:] if a != "--test"]
    if len(args) != 1:
        sys.exit(__doc__)
    names, texts = speeches(args[0])
    n_held = n_heldout(len(texts))
    train_texts, held = texts[:-n_held], texts[-n_held:]
    if "--test" not in sys.argv:
        t0 = time.time()
        vocab, merges, final = train(train_texts)
        wall = time.time() - t0
        os.makedirs(os.path.dirname(TOKENIZER), exist_ok=True)
        with open(TOKENIZER, "w", encoding="utf-8") as f:
            json.dump(tokenizer_json(vocab, merges), f, ensure_ascii=False, indent=2)
            f.write("\n")
        print(f"bpe: {len(vocab)} tokens, {len(merges)} merges from {len(train_texts)} training speeches "
              f"({names[0]} .. {names[-n_held - 1]}) in {wall:.1f} s -> {TOKENIZER}", flush=True)
        # the rank-order encoder must segment every training word as the trainer did
        enc = Encoder()
        for w, segs in final.items():
            assert enc.bpe(w) == segs, (w, enc.bpe(w), segs)
    enc = Encoder()
    # round trip on three held-out speeches: the first, the middle and the last
    selftest(enc, [held[0], held[len(held) // 2], held[-1]])
    n_tok = sum(len(enc.encode(t)) for t in held)
    print(f"bpe self-test ok: {len(enc.encoder)} tokens; held-out speeches {names[-n_held]} .. {names[-1]}: "
          f"{sum(map(len, held))} chars -> {n_tok} tokens; sha256 {enc.sha256[:12]}", flush=True)


if __name__ == "__main__":
    main()
