"""pixart_core.t5 encoder numerics against transformers' T5EncoderModel on tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch

from pixart_core.testing.files import save_safetensors, write_json
from pixart_core.t5 import T5Encoder, load_t5_encoder
from pixart_core.t5.cast_linear import quantize_float8
from pixart_core.t5.model import relative_position_buckets
from pixart_core.testing.t5 import TINY_T5_CONFIG, TINY_T5_V1_0_CONFIG, tiny_t5_state_dict, write_tiny_t5

transformers = pytest.importorskip("transformers")
FP32_TOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_t5(tmp_path_factory.mktemp("t5_tiny"))


@pytest.fixture(scope="module")
def reference(tiny):
    return transformers.T5EncoderModel.from_pretrained(tiny["hf"], dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def fp32_model(tiny):
    return load_t5_encoder(tiny["hf"])


def hf_forward(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def batch(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids over the whole 32128 vocabulary, </s> after the tokens, <pad> (0) after that."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 32128, (len(lengths), width), generator=gen)   # [B, N]
    mask = torch.zeros(len(lengths), width, dtype=torch.long)               # [B, N]
    for i, n in enumerate(lengths):
        ids[i, n - 1] = 1
        ids[i, n:] = 0
        mask[i, :n] = 1
    return ids, mask


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    for length, buckets, distance in ((400, 32, 128), (77, 32, 128), (300, 16, 64)):
        relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
        expected = T5Attention._relative_position_bucket(relative, bidirectional=True, num_buckets=buckets,
                                                         max_distance=distance)
        assert torch.equal(relative_position_buckets(length, buckets, distance), expected)


def test_fp32_parity_padded_batch(fp32_model, reference):
    model = fp32_model
    ids, mask = batch([37, 12, 1, 30], width=37)
    out = model(ids, mask)
    expected = hf_forward(reference, ids, mask)
    assert out.shape == (4, 37, 32) and out.dtype == torch.float32
    diff = (out - expected).abs().max().item()
    assert diff <= FP32_TOL, diff
    # the mask matters: without it, padded keys change the valid positions
    unmasked = model(ids)
    assert (unmasked[1, :12] - out[1, :12]).abs().max() > 1e-3
    assert (unmasked - hf_forward(reference, ids, None)).abs().max().item() <= FP32_TOL


def test_padding_does_not_change_valid_tokens(fp32_model):
    model = fp32_model
    ids, mask = batch([20, 9], width=300)
    alone = model(ids[1:2, :9], mask[1:2, :9])
    padded = model(ids, mask)
    assert (padded[1, :9] - alone[0]).abs().max().item() <= FP32_TOL


def test_all_padding_row_stays_finite(tiny, fp32_model):
    model = fp32_model
    ids, mask = batch([5, 5], width=8)
    mask[1] = 0
    assert torch.isfinite(model(ids, mask)).all()
    assert torch.isfinite(load_t5_encoder(tiny["hf"], dtype=torch.float16)(ids, mask)).all()
    assert (model(ids, mask)[0] - model(ids[:1], mask[:1])[0]).abs().max() <= FP32_TOL


def test_v1_0_relu_parity(tiny):
    reference = transformers.T5EncoderModel.from_pretrained(tiny["hf_v1_0"], dtype=torch.float32).eval()
    model = load_t5_encoder(tiny["hf_v1_0"])
    assert model.config.feed_forward_proj == "relu" and model.config.d_kv == 16
    ids, mask = batch([16, 4], width=16, seed=1)
    assert (model(ids, mask) - hf_forward(reference, ids, mask)).abs().max().item() <= FP32_TOL


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 8e-2)])
def test_half_precision_close_to_fp32(tiny, reference, dtype, tol):
    model = load_t5_encoder(tiny["hf"], dtype=dtype)
    assert model.dtype == dtype and model.storage_dtype == dtype
    ids, mask = batch([25, 10, 3], width=25, seed=2)
    out = model(ids, mask)
    assert out.dtype == dtype
    expected = hf_forward(reference, ids, mask)
    diff = (out.float() - expected).abs().max().item()
    assert diff <= tol * expected.abs().max().item(), diff


def test_fp16_overflow_guard(tmp_path, reference):
    """Feed-forward outputs beyond the float16 range: the residual stays float32, no inf; fp32 parity holds."""
    state = tiny_t5_state_dict(TINY_T5_CONFIG, seed=0)
    state["encoder.block.0.layer.1.DenseReluDense.wo.weight"] *= 40000.0
    write_json(TINY_T5_CONFIG.to_dict(), tmp_path / "config.json")
    save_safetensors(state, tmp_path / "model.safetensors")
    hot = transformers.T5EncoderModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids, mask = batch([24, 6], width=24, seed=3)
    with torch.no_grad():
        hidden = hot(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert hidden[1].abs().max().item() > 65504  # a float16 residual stream would overflow here
    expected = hidden[-1]
    out = load_t5_encoder(tmp_path, dtype=torch.float16)(ids, mask)
    assert torch.isfinite(out).all()
    assert (out.float() - expected).abs().max().item() <= 1e-2 * expected.abs().max().item()


def fp8_rounded_reference(tiny, dtype=torch.float8_e4m3fn):
    """transformers model whose Linear weights are the per-tensor scaled float8 rounding of the originals."""
    model = transformers.T5EncoderModel.from_pretrained(tiny["hf"], dtype=torch.float32).eval()
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "wi_0.weight", "wi_1.weight", "wo.weight")):
            quantized, scale = quantize_float8(value, dtype)
            state[key] = quantized.float() * scale
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_storage_from_fp32_source(tiny, fp8):
    model = load_t5_encoder(tiny["hf"], storage_dtype=fp8)
    q = model.encoder.block[0].layer[0].SelfAttention.q
    assert q.weight.dtype == fp8 and q.scale_weight.dtype == torch.float32
    assert model.shared.weight.dtype == torch.float32 and model.dtype == torch.float32
    ids, mask = batch([19, 7], width=19, seed=4)
    expected = hf_forward(fp8_rounded_reference(tiny, fp8), ids, mask)
    assert (model(ids, mask) - expected).abs().max().item() <= FP32_TOL
    half = load_t5_encoder(tiny["hf"], dtype=torch.float16, storage_dtype=fp8)(ids, mask)
    assert (half.float() - expected).abs().max().item() <= 1e-2 * expected.abs().max().item()


def test_linear_storage_bytes(tiny, fp32_model):
    def linear_bytes(model: T5Encoder) -> int:
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.endswith(
            ("q.weight", "k.weight", "v.weight", "o.weight", "wi_0.weight", "wi_1.weight", "wo.weight")))

    full = fp32_model
    fp8 = load_t5_encoder(tiny["hf"], dtype=torch.bfloat16, storage_dtype=torch.float8_e4m3fn)
    assert linear_bytes(fp8) * 4 == linear_bytes(full)
    assert not any(p.requires_grad for p in fp8.parameters())
    assert not any(p.is_meta for p in list(fp8.parameters()) + list(fp8.buffers()))


def test_forward_input_checks(fp32_model):
    model = fp32_model
    with pytest.raises(ValueError, match="batch, length"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 4))


def test_dtype_arguments_checked(tiny):
    with pytest.raises(ValueError, match="compute dtype"):
        load_t5_encoder(tiny["hf"], dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="storage dtype"):
        load_t5_encoder(tiny["hf"], storage_dtype=torch.int8)


def test_config_round_trip():
    data = TINY_T5_V1_0_CONFIG.to_dict()
    assert data["architectures"] == ["T5EncoderModel"] and data["is_gated_act"] is False
    assert type(TINY_T5_CONFIG).from_dict(data) == TINY_T5_V1_0_CONFIG
    assert TINY_T5_CONFIG.dense_act_fn == "gelu_new" and TINY_T5_CONFIG.to_dict()["is_gated_act"] is True
    with pytest.raises(ValueError, match="feed_forward_proj"):
        TINY_T5_CONFIG.replace(feed_forward_proj="gated-foo")
