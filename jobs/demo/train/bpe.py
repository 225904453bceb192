"""GPT-2 byte-level BPE, read from the original encoder.json / vocab.bpe.

A short re-implementation (same algorithm as OpenAI's encoder.py) so that the
demo's token ids are GPT-2's own ids without needing PyPI (no tiktoken /
transformers on this machine). Run it directly to self-test against known ids.
"""
import json
import os
import sys
from functools import lru_cache

import regex

HERE = os.path.dirname(os.path.abspath(__file__))
TOK_DIR = os.path.join(HERE, "..", "tokenizer")

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, punctuation
# runs, each optionally carrying one leading space; whitespace is kept apart.
PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    # Maps every byte to a printable unicode char so BPE merges never see
    # whitespace/control bytes (the table vocab.bpe was built with).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Encoder:
    def __init__(self, tok_dir=TOK_DIR):
        with open(os.path.join(tok_dir, "encoder.json"), encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(os.path.join(tok_dir, "vocab.bpe"), encoding="utf-8") as f:
            merges = [tuple(l.split()) for l in f.read().split("\n")[1:] if l.strip()]
        self.ranks = {m: i for i, m in enumerate(merges)}
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


def selftest(enc):
    # ids checked against OpenAI's GPT-2 tokenizer (tiktoken "gpt2")
    known = {
        "Hello world": [15496, 995],
        " the": [262],
        "The": [464],
        " Hello world!": [18435, 995, 0],
    }
    for text, ids in known.items():
        got = enc.encode(text)
        assert got == ids, (text, got, ids)
    assert len(enc.encoder) == 50257 and enc.encoder["<|endoftext|>"] == 50256
    s = "Fellow-Citizens of the Senate, 1790: \u00e9t\u00e9 \u2014 we're  here.\n\n"
    assert enc.decode(enc.encode(s)) == s


if __name__ == "__main__":
    e = Encoder()
    selftest(e)
    print("bpe self-test ok:", e.encode(" ".join(sys.argv[1:]) or "Hello world"))
