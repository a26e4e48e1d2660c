"""load_t5_encoder on every layout (HF folders, shards, .bin, diffusers root, ComfyUI single files, fp8) and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pixart_core.testing.files import save_safetensors, save_torch, write_json
from pixart_core.errors import CheckpointError
from pixart_core.t5 import load_t5_encoder
from pixart_core.t5.cast_linear import quantize_float8
from pixart_core.testing.t5 import (COMFY_PREFIX, TINY_T5_CONFIG, TINY_T5_V1_0_CONFIG, tiny_t5_state_dict,
                                    write_tiny_t5)

transformers = pytest.importorskip("transformers")
FP32_TOL = 1e-5
LINEAR_SUFFIXES = ("q.weight", "k.weight", "v.weight", "o.weight", "wi.weight", "wi_0.weight", "wi_1.weight",
                   "wo.weight")
LAYOUTS = ["hf", "hf_sharded", "hf_sharded_bin", "diffusers_root", "comfy_fp32", "comfy_fp16", "comfy_bf16",
           "comfy_fp8_e4m3fn", "comfy_fp8_e4m3fn_scaled", "comfy_prefixed"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_t5(tmp_path_factory.mktemp("t5_tiny"))


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32128, (3, 21), generator=gen)                   # [B, N]
    mask = torch.ones_like(ids)                                              # [B, N]
    for row, n in ((1, 8), (2, 2)):
        ids[row, n - 1], ids[row, n:], mask[row, n:] = 1, 0, 0
    return ids, mask


def file_weights_as_fp32(path) -> dict[str, torch.Tensor]:
    """The file's tensors in float32 under T5EncoderModel names, float8 scales applied (independent of our loader)."""
    raw = load_file(str(path))
    out = {}
    for key, value in raw.items():
        if not key.endswith(".weight") or key.startswith("text_encoders.clip_l"):
            continue
        name = key[len(COMFY_PREFIX):] if key.startswith(COMFY_PREFIX) else key
        name = "shared.weight" if name == "encoder.embed_tokens.weight" else name
        scale = raw.get(key[: -len("weight")] + "scale_weight")
        out[name] = value.float() * (scale.float() if scale is not None else 1.0)
    return out


_REFERENCES: dict = {}  # folder -> (transformers model, its original weights), built once per module


def reference_output(tiny, layout, ids, mask, requantize_fp8: bool = False):
    """transformers' output; ComfyUI files use the file's (rounded) values, optionally re-quantised to float8."""
    folder = tiny["hf_v1_0"] if layout.endswith("v1_0") else tiny["hf"]
    if folder not in _REFERENCES:
        model = transformers.T5EncoderModel.from_pretrained(folder, dtype=torch.float32).eval()
        _REFERENCES[folder] = model, {k: v.clone() for k, v in model.state_dict().items()}
    model, original = _REFERENCES[folder]
    model.load_state_dict(original)
    if layout.startswith("comfy"):
        weights = file_weights_as_fp32(tiny[layout])
        if requantize_fp8:
            for key, value in weights.items():
                if key.endswith(LINEAR_SUFFIXES):
                    quantized, scale = quantize_float8(value, torch.float8_e4m3fn)
                    weights[key] = quantized.float() * scale
        weights["encoder.embed_tokens.weight"] = weights["shared.weight"]
        model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("layout", LAYOUTS + ["hf_v1_0", "comfy_v1_0"])
def test_layout_loads_and_matches_transformers(tiny, inputs, layout):
    ids, mask = inputs
    model = load_t5_encoder(tiny[layout])
    expected_config = TINY_T5_V1_0_CONFIG if layout.endswith("v1_0") else TINY_T5_CONFIG
    assert model.config == expected_config
    diff = (model(ids, mask) - reference_output(tiny, layout, ids, mask)).abs().max().item()
    assert diff <= FP32_TOL, f"{layout}: {diff}"


def test_fp8_file_kept_in_fp8_bit_exact(tiny):
    for layout in ("comfy_fp8_e4m3fn", "comfy_fp8_e4m3fn_scaled"):
        raw = load_file(str(tiny[layout]))
        model = load_t5_encoder(tiny[layout], dtype=torch.bfloat16, storage_dtype=torch.float8_e4m3fn)
        wo = model.encoder.block[1].layer[1].DenseReluDense.wo
        key = "encoder.block.1.layer.1.DenseReluDense.wo."
        assert wo.weight.dtype == torch.float8_e4m3fn
        assert torch.equal(wo.weight.view(torch.uint8), raw[key + "weight"].view(torch.uint8))
        expected_scale = raw[key + "scale_weight"] if layout.endswith("scaled") else torch.tensor(1.0)
        assert torch.equal(wo.scale_weight, expected_scale.float())
        assert model.shared.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("layout", ["comfy_fp8_e4m3fn_scaled", "comfy_fp16"])
def test_fp8_storage_output_matches_rounded_reference(tiny, inputs, layout):
    """float8 storage of an already-float8 file changes nothing; of an fp16 file it re-quantises per tensor."""
    ids, mask = inputs
    expected = reference_output(tiny, layout, ids, mask, requantize_fp8="fp8" not in layout)
    out = load_t5_encoder(tiny[layout], storage_dtype=torch.float8_e4m3fn)(ids, mask)
    assert (out - expected).abs().max().item() <= FP32_TOL


def test_scaled_fp8_dequantised_to_half(tiny, inputs):
    ids, mask = inputs
    model = load_t5_encoder(tiny["comfy_fp8_e4m3fn_scaled"], dtype=torch.float16)
    assert model.storage_dtype == torch.float16
    assert not any(n.endswith("scale_weight") for n, _ in model.named_buffers())
    expected = reference_output(tiny, "comfy_fp8_e4m3fn_scaled", ids, mask)
    assert (model(ids, mask).float() - expected).abs().max().item() <= 1e-2 * expected.abs().max().item()


def test_one_shard_given_loads_the_whole_model(tiny, inputs):
    shard = tiny["hf_sharded"] / "model-00001-of-00002.safetensors"
    ids, mask = inputs
    out = load_t5_encoder(shard)(ids, mask)
    assert (out - load_t5_encoder(tiny["hf"])(ids, mask)).abs().max().item() == 0.0


def test_text_encoder_subfolder_and_device_argument(tiny, inputs):
    model = load_t5_encoder(tiny["diffusers_root"] / "text_encoder", device=torch.device("cpu"))
    assert model.device.type == "cpu"


# --- bad input ------------------------------------------------------------------------------------------------


def write_state(path, tensors):
    save_safetensors(tensors, path)
    return path


@pytest.mark.parametrize("keys, hint", [
    (["blocks.0.attn.qkv.weight", "x_embedder.proj.weight", "t_block.1.weight"], "PixArt transformer"),
    (["decoder.up.0.block.0.conv1.weight", "encoder.down.0.block.0.conv1.weight", "quant_conv.weight"], "VAE"),
    (["something.weight"], "T5-v1.1-XXL file"),
])
def test_non_t5_file_rejected(tmp_path, keys, hint):
    path = write_state(tmp_path / "other.safetensors", {k: torch.zeros(2, 2) for k in keys})
    with pytest.raises(CheckpointError, match=hint) as err:
        load_t5_encoder(path)
    assert str(path) in str(err.value) and "not a T5" in str(err.value)


def test_missing_key_named(tmp_path):
    state = tiny_t5_state_dict()
    del state["encoder.block.1.layer.0.SelfAttention.v.weight"]
    path = write_state(tmp_path / "t5_broken.safetensors", state)
    with pytest.raises(CheckpointError, match=r"t5_broken\.safetensors.*block\.1\.layer\.0\.SelfAttention\.v"):
        load_t5_encoder(path)


def test_missing_embedding_named(tmp_path):
    state = tiny_t5_state_dict()
    del state["shared.weight"]
    with pytest.raises(CheckpointError, match="token embedding"):
        load_t5_encoder(write_state(tmp_path / "t5.safetensors", state))


def test_config_shape_mismatch(tmp_path):
    write_json(TINY_T5_CONFIG.replace(d_ff=48).to_dict(), tmp_path / "config.json")
    save_safetensors(tiny_t5_state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"wrong shapes.*DenseReluDense\.wi_0\.weight \(64, 32\)"):
        load_t5_encoder(tmp_path)


def test_umt5_style_rejected(tmp_path):
    state = tiny_t5_state_dict()
    state["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    with pytest.raises(CheckpointError, match="UMT5"):
        load_t5_encoder(write_state(tmp_path / "umt5.safetensors", state))


def test_non_t5_config_folder_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    save_safetensors({"decoder.conv_in.weight": torch.zeros(1)}, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="AutoencoderKL.*not a T5"):
        load_t5_encoder(tmp_path)


def test_pipeline_without_text_encoder(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no text_encoder"):
        load_t5_encoder(tmp_path)


def test_missing_and_truncated_files(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="no such file"):
        load_t5_encoder(tmp_path / "nope.safetensors")
    data = tiny["comfy_fp16"].read_bytes()
    cut = tmp_path / "t5xxl_cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t5xxl_cut"):
        load_t5_encoder(cut)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weight files"):
        load_t5_encoder(tmp_path / "empty")


def test_bin_with_python_objects_refused(tmp_path):
    state = tiny_t5_state_dict()
    save_torch({"state_dict": state, "note": ValueError("not a tensor")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_t5_encoder(tmp_path / "pytorch_model.bin")


def test_config_beside_single_file_used_only_when_it_fits(tmp_path):
    save_safetensors(tiny_t5_state_dict(), tmp_path / "t5xxl_tiny.safetensors")
    write_json(TINY_T5_CONFIG.replace(relative_attention_max_distance=64).to_dict(), tmp_path / "config.json")
    assert load_t5_encoder(tmp_path / "t5xxl_tiny.safetensors").config.relative_attention_max_distance == 64
    write_json(TINY_T5_CONFIG.replace(d_ff=48, relative_attention_max_distance=64).to_dict(), tmp_path / "config.json")
    assert load_t5_encoder(tmp_path / "t5xxl_tiny.safetensors").config == TINY_T5_CONFIG


def test_fp8_storage_stays_close_to_fp16(tiny, inputs):
    """The fp8 loader against the same file loaded in fp16. e4m3 keeps 3 mantissa bits (per-weight relative
    error up to 2^-4, per-tensor scaled); through this tiny random encoder that gives a relative RMS error of
    about 7.6% and a worst per-token cosine of 0.98 (measured). Tolerance: RMS error <= 12%, cosine >= 0.97.
    A lost scale or a dropped tensor is far outside both."""
    ids, mask = inputs
    keep = mask.bool()                                                       # [B, N]
    half = load_t5_encoder(tiny["comfy_fp16"], dtype=torch.float16)(ids, mask).float()[keep]  # [T, C]
    eight = load_t5_encoder(tiny["comfy_fp16"], dtype=torch.float32,
                            storage_dtype=torch.float8_e4m3fn)(ids, mask)[keep]  # [T, C]
    rms_error = ((eight - half).pow(2).mean().sqrt() / half.pow(2).mean().sqrt()).item()
    cosine = torch.nn.functional.cosine_similarity(eight, half, dim=-1).min().item()
    assert rms_error <= 0.12 and cosine >= 0.97, (rms_error, cosine)
