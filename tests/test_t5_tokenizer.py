"""load_t5_tokenizer: ids and masks equal transformers' T5 tokenizer; lookup next to weights; spiece fallback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from pixart_core.errors import TokenizerNotFoundError
from pixart_core.t5 import load_t5_tokenizer
from pixart_core.testing.t5 import write_tiny_t5

ROOT = Path(__file__).resolve().parents[1]
COMFY_TOKENIZER = Path(os.environ.get("COMFYUI_ROOT", ROOT.parent / "comfyui")) / "comfy/text_encoders/t5_tokenizer"

PROMPTS = [
    "a cat",
    "A photo of an astronaut riding a horse on Mars, highly detailed, 8k, trending on artstation.",
    "",
    " ",
    "   \t \n ",
    "a  cat   with    many     spaces",
    "  leading and trailing spaces  ",
    "line one\nline two\r\nline three\ttabbed",
    "Café naïve résumé Ångström façade über straße",
    "東京タワーの夜景、桜の花びら",
    "一只戴着帽子的猫 🐱🎩 in the rain ☔️",
    "emoji only 🚀🔥👍🏽👨‍👩‍👧",
    "Hello, world! (test) [brackets] {braces} <angle> \"quotes\" 'single' ... ?! ;:",
    "numbers 1234567890 3.14159 1e-5 -42 50% $9.99 #1 @user",
    "ﬁ ligature, ① circled, Ａ fullwidth, ㎏ unit, ½ fraction",
    "zero\u200bwidth and\u00a0nbsp and\u3000ideographic space",
    "don't stop believin' — em dash – en dash … ellipsis",
    "literal special tokens </s> <pad> <unk> <extra_id_0> inside",
    "glued</s>x and <extra_id_5>cat and a<pad>b",
    "ALL CAPS PROMPT WITH MIXED case WoRdS",
    "Ελληνικά, русский текст, العربية, עברית, हिन्दी",
    "masterpiece, best quality, " * 30,
    "a very long prompt describing a scene " * 60,
]


@pytest.fixture(scope="module")
def reference(t5_tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(t5_tokenizer_dir))


@pytest.fixture(scope="module")
def tokenizer(t5_tokenizer_dir):
    return load_t5_tokenizer(t5_tokenizer_dir)


def expected(reference, texts, max_length):
    out = reference(texts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                    return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


@pytest.mark.parametrize("max_length", [120, 300, 77, 8, 2, 1])
def test_batch_matches_transformers(tokenizer, reference, max_length):
    ids, mask = tokenizer(PROMPTS, max_length=max_length)
    ref_ids, ref_mask = expected(reference, PROMPTS, max_length)
    assert ids.dtype == mask.dtype == torch.long and ids.shape == (len(PROMPTS), max_length)
    for i, text in enumerate(PROMPTS):
        assert ids[i].tolist() == ref_ids[i].tolist(), text
        assert mask[i].tolist() == ref_mask[i].tolist(), text


def test_long_prompts_truncate_keeping_eos(tokenizer, reference):
    long = PROMPTS[-1]
    assert len(reference(long)["input_ids"]) > 300
    for max_length in (120, 300):
        ids, mask = tokenizer([long, "a cat"], max_length=max_length)
        assert int(mask[0].sum()) == max_length and ids[0, -1].item() == tokenizer.eos_id == 1
        short = len(tokenizer.encode("a cat"))  # "▁", "a", "▁cat", "</s>"
        assert short == 4 and int(mask[1].sum()) == short and ids[1, short - 1].item() == 1
        assert ids[1, short:].eq(0).all()


def test_single_string_encode_and_unpadded(tokenizer, reference):
    ids, mask = tokenizer("a cat", max_length=120)
    assert ids.shape == (1, 120)
    assert tokenizer.encode(PROMPTS[1]) == reference(PROMPTS[1])["input_ids"]
    ids, mask = tokenizer(["a cat", PROMPTS[1]], max_length=120, pad_to_max_length=False)
    assert ids.shape[1] == len(tokenizer.encode(PROMPTS[1])) and mask[0].sum() == 4
    assert tokenizer.backend == "tokenizers" and tokenizer.vocab_size == 32100 and tokenizer.pad_id == 0


def test_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        tokenizer("a", max_length=0)
    with pytest.raises(TypeError, match="strings"):
        tokenizer(["a", None])


def test_comfyui_bundled_tokenizer_folder(tokenizer):
    if not (COMFY_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"ComfyUI's bundled tokenizer not found at {COMFY_TOKENIZER}")
    comfy = load_t5_tokenizer(COMFY_TOKENIZER)
    for max_length in (120, 300):
        a, b = comfy(PROMPTS, max_length=max_length), tokenizer(PROMPTS, max_length=max_length)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- where the tokenizer is found -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, t5_tokenizer_dir):
    return write_tiny_t5(tmp_path_factory.mktemp("t5_tiny"), tokenizer_dir=t5_tokenizer_dir)


def test_found_next_to_weights_and_in_pipelines(tiny, tokenizer):
    want = tokenizer(PROMPTS[:3], max_length=16)
    for path in (tiny["hf"], tiny["hf"] / "model.safetensors", tiny["diffusers_root"],
                 tiny["diffusers_root"] / "text_encoder", tiny["diffusers_root"] / "text_encoder" / "model.safetensors",
                 tiny["diffusers_root"] / "tokenizer" / "tokenizer.json"):
        got = load_t5_tokenizer(path)(PROMPTS[:3], max_length=16)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), path


def test_found_in_parent_folder(tmp_path, t5_tokenizer_dir):
    shutil.copyfile(t5_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "t5" / "deeper").mkdir(parents=True)
    (tmp_path / "t5" / "model.safetensors").write_bytes(b"")
    assert load_t5_tokenizer(tmp_path / "t5" / "model.safetensors").source == (tmp_path / "tokenizer.json").resolve()


def test_missing_tokenizer_error_explains(tiny):
    weights = tiny["comfy_fp16"]
    with pytest.raises(TokenizerNotFoundError) as err:
        load_t5_tokenizer(weights)
    text = str(err.value)
    assert str(weights.parent.resolve()) in text and "google/t5-v1_1-xxl" in text and "t5_tokenizer" in text
    with pytest.raises(TokenizerNotFoundError, match="no such file"):
        load_t5_tokenizer(weights.parent / "missing")


def test_wrong_tokenizer_file_rejected(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {}, "merges": []}}')
    with pytest.raises(TokenizerNotFoundError, match="tokenizer.json"):
        load_t5_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "spiece.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(TokenizerNotFoundError, match="spiece.model"):
        load_t5_tokenizer(tmp_path)


# --- sentencepiece fallback (spiece.model, no tokenizer.json) -------------------------------------------------


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory):
    """A small SentencePiece Unigram model with T5's conventions (pad 0, </s> 1, <unk> 2, NFKC, no BOS)."""
    spm = pytest.importorskip("sentencepiece")
    import io

    corpus = [p for p in PROMPTS if p.strip()] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=150,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=0.98, normalization_rule_name="nmt_nfkc", minloglevel=2)
    folder = tmp_path_factory.mktemp("spiece")
    (folder / "spiece.model").write_bytes(model.getvalue())
    return folder


def test_spiece_fallback_semantics(spiece_dir):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(spiece_dir / "spiece.model"))
    tok = load_t5_tokenizer(spiece_dir)
    assert tok.backend == "sentencepiece" and tok.vocab_size == processor.GetPieceSize() + 100
    texts = [p for p in PROMPTS if "<" not in p]
    for max_length in (120, 300, 5):
        ids, mask = tok(texts, max_length=max_length)
        for i, text in enumerate(texts):
            pieces = processor.EncodeAsIds(text)[: max_length - 1] + [1]
            assert ids[i].tolist() == pieces + [0] * (max_length - len(pieces)), text
            assert mask[i].tolist() == [1] * len(pieces) + [0] * (max_length - len(pieces)), text


def test_spiece_literal_special_tokens(spiece_dir):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(spiece_dir / "spiece.model"))
    tok = load_t5_tokenizer(spiece_dir)
    size = processor.GetPieceSize()
    got = tok.encode("a cat</s>on <extra_id_0> mat<pad><extra_id_99>")
    enc = processor.EncodeAsIds
    assert got == enc("a cat") + [1] + enc("on ") + [size + 99] + enc(" mat") + [0, size] + [1]


def test_tokenizer_json_preferred_over_spiece(tmp_path, spiece_dir, t5_tokenizer_dir):
    shutil.copyfile(spiece_dir / "spiece.model", tmp_path / "spiece.model")
    assert load_t5_tokenizer(tmp_path).backend == "sentencepiece"
    shutil.copyfile(t5_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    assert load_t5_tokenizer(tmp_path).backend == "tokenizers"
