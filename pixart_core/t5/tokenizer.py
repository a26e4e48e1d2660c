"""The T5 SentencePiece (Unigram) tokenizer, with PixArt's padded, truncated batches.

`T5Tokenizer(texts, max_length=N)` returns what transformers returns for
`tokenizer(texts, padding="max_length", max_length=N, truncation=True, add_special_tokens=True)`:
the pieces, cut to N - 1, then `</s>`, then `<pad>` (id 0) up to N; the mask is 1 on pieces and `</s>`.

Backends: `tokenizers` on tokenizer.json (preferred), else `sentencepiece` on spiece.model. The
tokenizer.json backend uses the file's vocabulary and normalisation map with the pre-tokenisation that
transformers' T5Tokenizer (v5) builds (split on whitespace, "▁" before every word), so text glued to a
literal special token (e.g. "</s>x") tokenises as transformers does.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path
from typing import Sequence

import torch

from ..errors import TokenizerNotFoundError

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
_EXTRA_IDS = 100  # T5 sentinels <extra_id_0..99>, appended after the SentencePiece vocabulary in reverse order


class T5Tokenizer:
    """Text -> (input_ids [B, N] long, attention_mask [B, N] long), T5 conventions (pad 0, </s> 1).

    Build with `load_t5_tokenizer(path)`. `backend` is "tokenizers" or "sentencepiece"; `source` is the file used.
    """

    def __init__(self, encode_batch, *, pad_id: int, eos_id: int, vocab_size: int, backend: str, source: Path):
        self._encode_batch = encode_batch
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.vocab_size = vocab_size
        self.backend = backend
        self.source = source

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, untruncated, with the trailing `</s>`."""
        return self._encode_batch([text])[0] + [self.eos_id]

    def __call__(self, texts: str | Sequence[str], max_length: int = 120,
                 pad_to_max_length: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise a batch: pieces cut to max_length - 1, `</s>`, then padding.

        pad_to_max_length=False pads to the longest sequence of the batch instead of max_length.
        Returns input_ids [B, N] and attention_mask [B, N], both int64.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, not {max_length!r}")
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings, got {bad[0]}")
        rows = [ids[: max_length - 1] + [self.eos_id] for ids in self._encode_batch(list(texts))]
        width = max_length if pad_to_max_length else max((len(r) for r in rows), default=1)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)   # [B, N]
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)         # [B, N]
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask

    def __repr__(self) -> str:
        return f"T5Tokenizer(backend={self.backend!r}, source={str(self.source)!r}, vocab_size={self.vocab_size})"


def _precompiled_charsmap(normalizer: dict | None) -> str | None:
    if not normalizer:
        return None
    if normalizer.get("type") == "Precompiled":
        return normalizer.get("precompiled_charsmap")
    for inner in normalizer.get("normalizers") or []:
        found = _precompiled_charsmap(inner)
        if found:
            return found
    return None


def _from_tokenizer_json(path: Path) -> T5Tokenizer:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure means an unusable file
        raise TokenizerNotFoundError(f"{path}: not a readable tokenizer.json ({err}); re-download it.") from err
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if (data.get("model") or {}).get("type") != "Unigram" or "</s>" not in vocab:
        raise TokenizerNotFoundError(f"{path}: not a T5 (SentencePiece Unigram) tokenizer; use the tokenizer of "
                                     f"google/t5-v1_1-xxl.")
    charsmap = _precompiled_charsmap(data.get("normalizer"))
    tokenizer.normalizer = normalizers.Precompiled(base64.b64decode(charsmap)) if charsmap else None
    try:
        metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    except TypeError:  # tokenizers < 0.19 has no `split` argument (it always splits)
        metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace])
    tokenizer.post_processor = None
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

    return T5Tokenizer(encode_batch, pad_id=vocab.get("<pad>", 0), eos_id=vocab["</s>"],
                       vocab_size=tokenizer.get_vocab_size(with_added_tokens=True), backend="tokenizers", source=path)


def _from_spiece(path: Path) -> T5Tokenizer:
    try:
        import sentencepiece
    except ImportError as err:
        raise TokenizerNotFoundError(
            f"{path.parent}: has spiece.model but no tokenizer.json, and the `sentencepiece` package is not "
            f"installed: `pip install sentencepiece`, or put the tokenizer.json of google/t5-v1_1-xxl there.") from err
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except Exception as err:  # noqa: BLE001
        raise TokenizerNotFoundError(f"{path}: not a readable SentencePiece model ({err}); re-download it.") from err
    pieces = processor.GetPieceSize()
    eos = processor.eos_id() if processor.eos_id() >= 0 else 1
    pad = processor.pad_id() if processor.pad_id() >= 0 else 0
    unk = processor.unk_id() if processor.unk_id() >= 0 else 2
    # Literal special tokens in the text map to their ids, as transformers' added tokens do.
    special = {"<pad>": pad, "</s>": eos, "<unk>": unk}
    special.update({f"<extra_id_{i}>": pieces + _EXTRA_IDS - 1 - i for i in range(_EXTRA_IDS)})
    splitter = re.compile("(" + "|".join(re.escape(s) for s in sorted(special, key=len, reverse=True)) + ")")

    def encode_one(text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(splitter.split(text)):
            if i % 2:
                ids.append(special[part])
            elif part:
                ids.extend(processor.EncodeAsIds(part))
        return ids

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [encode_one(t) for t in texts]

    return T5Tokenizer(encode_batch, pad_id=pad, eos_id=eos, vocab_size=pieces + _EXTRA_IDS,
                       backend="sentencepiece", source=path)


def tokenizer_search_dirs(path: Path) -> list[Path]:
    """Where a tokenizer is looked for: the folder itself (or the weight file's folder), its `tokenizer/`
    subfolder (diffusers pipeline root), a sibling `tokenizer/` (pipeline's text_encoder/), then the parent."""
    folder = path if path.is_dir() else path.parent
    candidates = [folder, folder / "tokenizer", folder.parent / "tokenizer", folder.parent]
    return list(dict.fromkeys(c.resolve() for c in candidates))


def load_t5_tokenizer(path: str | Path) -> T5Tokenizer:
    """Load the T5 tokenizer from a tokenizer folder, a T5 weight file/folder or a diffusers pipeline root.

    Raises TokenizerNotFoundError naming the folders searched when there is no tokenizer.json/spiece.model.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise TokenizerNotFoundError(f"{path}: no such file or folder; give the folder holding the T5 tokenizer "
                                     f"(tokenizer.json or spiece.model).")
    if path.is_file() and path.name in TOKENIZER_FILES:
        return _from_tokenizer_json(path) if path.name == "tokenizer.json" else _from_spiece(path)
    searched = tokenizer_search_dirs(path)
    for folder in searched:
        if (folder / "tokenizer.json").is_file():
            log.debug("T5 tokenizer: %s", folder / "tokenizer.json")
            return _from_tokenizer_json(folder / "tokenizer.json")
        if (folder / "spiece.model").is_file():
            log.debug("T5 tokenizer: %s (sentencepiece)", folder / "spiece.model")
            return _from_spiece(folder / "spiece.model")
    where = ", ".join(str(f) for f in searched)
    raise TokenizerNotFoundError(
        f"No T5 tokenizer (tokenizer.json or spiece.model) found for {path}; looked in: {where}. Put the tokenizer "
        f"files of google/t5-v1_1-xxl (tokenizer.json, or spiece.model) next to the T5 weights, or pass the "
        f"tokenizer folder (inside ComfyUI: its bundled comfy/text_encoders/t5_tokenizer).")
