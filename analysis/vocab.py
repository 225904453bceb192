"""Token ids -> text, from a GPT-2 `encoder.json` (or a Hugging Face `vocab.json`, the same
mapping) or a Hugging Face `tokenizer.json` of a byte-level BPE model (Pythia's GPT-NeoX
tokenizer: its model.vocab uses GPT-2's byte alphabet; its added_tokens, such as
<|endoftext|> and <|padding|>, are literal text), without the tokenizers library.

In tables a token that is part of a multi-byte character shows its bytes as escapes
(e.g. '\\xe2\\x80'), not as a replacement character that hides which token it is.

The file maps byte-level BPE strings to ids; those strings spell each byte as a printable
unicode character (GPT-2's bytes_to_unicode), so decoding inverts that table too.
"""

import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ENCODER = os.path.join(REPO, "jobs", "demo", "tokenizer", "encoder.json")


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


GPT2_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")


def find_encoder(path=None, architecture=None, model_dir=None):
    """The encoder file to use: `path` (a file, or a folder holding encoder.json, vocab.json
    or tokenizer.json, e.g. the model's folder), else the one in the result's model folder
    (`model_dir`, as the result records it, when it is there: Hugging Face folders ship
    tokenizer.json), else the repository's GPT-2 jobs/demo/tokenizer/encoder.json when the
    result's model is a GPT-2 (architecture None means a result written before saegap recorded
    it: GPT-2 then), else None (ids are shown as numbers: another model's ids decoded with
    GPT-2's vocabulary would be wrong text)."""
    if not path and model_dir and os.path.isdir(model_dir):
        for name in ("tokenizer.json", "vocab.json", "encoder.json"):
            p = os.path.join(model_dir, name)
            if os.path.isfile(p):
                return p
    if path:
        if os.path.isdir(path):
            for name in ("encoder.json", "vocab.json", "tokenizer.json"):
                p = os.path.join(path, name)
                if os.path.isfile(p):
                    return p
            raise FileNotFoundError("no encoder.json or vocab.json in %s" % path)
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        return path
    if architecture is not None and architecture not in GPT2_ARCHITECTURES:
        return None
    return DEFAULT_ENCODER if os.path.isfile(DEFAULT_ENCODER) else None


def _sentencepiece_bytes(piece):
    """A SentencePiece token's bytes: '<0xNN>' is byte NN (byte fallback), '\u2581' a space."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace("\u2581", " ").encode("utf-8")


class Vocab:
    """decode(id) -> text of one token; ids outside the vocabulary come back as '<id N>'."""

    def __init__(self, encoder_path):
        self.path = encoder_path
        with open(encoder_path, encoding="utf-8") as f:
            enc = json.load(f)
        added, sentencepiece = {}, False
        if isinstance(enc.get("model"), dict) and isinstance(enc["model"].get("vocab"), dict):
            # tokenizer.json: a BPE vocabulary plus literal added tokens
            if enc["model"].get("type", "BPE") != "BPE":
                raise ValueError("%s: tokenizer model %r is not BPE" % (encoder_path, enc["model"].get("type")))
            # Gemma's is SentencePiece-style: '\u2581' for a space, '<0xNN>' byte tokens
            sentencepiece = bool(enc["model"].get("byte_fallback"))
            added = {int(t["id"]): t["content"].encode("utf-8") for t in enc.get("added_tokens") or []}
            enc = enc["model"]["vocab"]
        if sentencepiece:
            self._bytes = {int(i): _sentencepiece_bytes(s) for s, i in enc.items()}
        else:
            back = {c: b for b, c in bytes_to_unicode().items()}
            self._bytes = {int(i): bytes(back.get(c, ord("?")) for c in s) for s, i in enc.items()}
        self._bytes.update(added)

    def __len__(self):
        return len(self._bytes)

    def token_bytes(self, token_id):
        return self._bytes.get(int(token_id))

    def decode(self, token_id):
        """Text of one token (partial UTF-8 characters as U+FFFD, for running text)."""
        b = self._bytes.get(int(token_id))
        return "<id %d>" % int(token_id) if b is None else b.decode("utf-8", errors="replace")

    def decode_many(self, ids):
        """Text of a token sequence (bytes joined first, so split characters reunite)."""
        return b"".join(self._bytes.get(int(t), b"?") for t in ids).decode("utf-8", errors="replace")


def show_token(vocab, token_id):
    """How a token is printed in tables and tick labels: its text quoted with visible
    whitespace (repr), or '#id' without a vocabulary."""
    if vocab is None:
        return "#%d" % int(token_id)
    b = vocab.token_bytes(token_id)
    if b is None:
        return "<id %d>" % int(token_id)
    try:
        return repr(b.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(b)[1:]
