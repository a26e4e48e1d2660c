"""PixArtTransformer features without a diffusers reference: PE formula, qk-norm, KV compression, caption
masks, dtype/device/meta construction, the CPU bf16 compute policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixart_core.pixart import linear as linear_module
from pixart_core.pixart.attention import SelfAttention
from pixart_core.pixart.config import PixArtConfig
from pixart_core.pixart.embeddings import sincos_pos_embed_2d, timestep_sinusoid
from pixart_core.pixart.model import PixArtTransformer

HIDDEN, HEADS, CAPTION, TOKENS = 24, 3, 16, 10


def small_config(**changes) -> PixArtConfig:
    """A small hand-made config (width 24 = 3 heads x 8, 10 caption tokens) with `changes` applied."""
    base = dict(hidden_size=HIDDEN, depth=2, num_heads=HEADS, caption_channels=CAPTION, model_max_length=TOKENS,
                sample_size=16, pe_interpolation=2.0)
    return PixArtConfig(**{**base, **changes})


def random_model(config: PixArtConfig, seed: int = 0, **kwargs) -> PixArtTransformer:
    model = PixArtTransformer(config, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            scale = param[0].numel() ** -0.5 if param.dim() > 1 else 0.3
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return model


def inputs(batch: int = 2, height: int = 8, width: int = 12, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=generator)  # [B, 4, H, W]
    context = torch.randn(batch, TOKENS, CAPTION, generator=generator)  # [B, L, C_text]
    timestep = torch.linspace(999, 1, batch)  # [B]
    return x, timestep, context


# ---------------------------------------------------------------- embeddings


def numpy_pos_embed(dim: int, height: int, width: int, base_size: int, interpolation: float) -> np.ndarray:
    """Direct transcription of the official `get_2d_sincos_pos_embed` (PixArt-alpha
    `diffusion/model/nets/PixArt.py`)."""
    def one_axis(half_dim: int, positions: np.ndarray) -> np.ndarray:
        omega = np.arange(half_dim // 2, dtype=np.float64)
        omega /= half_dim / 2.0
        omega = 1.0 / 10000**omega
        angles = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    grid_h = np.arange(height, dtype=np.float32) / (height / base_size) / interpolation
    grid_w = np.arange(width, dtype=np.float32) / (width / base_size) / interpolation
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, height, width])  # w goes first
    return np.concatenate([one_axis(dim // 2, grid[0]), one_axis(dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("dim,height,width,base_size,interpolation", [
    (1152, 32, 32, 64, 2.0), (1152, 48, 80, 64, 2.0), (1152, 128, 64, 128, 4.0), (1152, 17, 33, 16, 0.5),
    (24, 3, 5, 4, 1.0), (64, 7, 13, 128, 4.0),
])
def test_pos_embed_matches_numpy_formula(dim, height, width, base_size, interpolation):
    expected = numpy_pos_embed(dim, height, width, base_size, interpolation)
    got = sincos_pos_embed_2d(dim, height, width, base_size, interpolation)
    assert got.dtype == torch.float64 and got.shape == (height * width, dim)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    # channel layout: first half encodes the column, second half the row
    assert torch.equal(got[:width, dim // 2:], got[:1, dim // 2:].expand(width, -1))
    assert torch.equal(got[::width, :dim // 2], got[:1, :dim // 2].expand(height, -1))


def test_pos_embed_cache_per_size_device_dtype():
    model = PixArtTransformer(small_config())
    first = model.position_table(4, 6, torch.device("cpu"), torch.float32)
    assert model.position_table(4, 6, torch.device("cpu"), torch.float32) is first
    as_bf16 = model.position_table(4, 6, torch.device("cpu"), torch.bfloat16)
    assert as_bf16.dtype == torch.bfloat16 and as_bf16 is not first
    assert model.position_table(6, 4, torch.device("cpu"), torch.float32).shape == (24, HIDDEN)
    expected = torch.from_numpy(numpy_pos_embed(HIDDEN, 4, 6, 8, 2.0)).float()
    assert torch.equal(first, expected)
    model.to(torch.float64)
    assert model._pos_cache == {}


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 1.5, 999.0])
    got = timestep_sinusoid(t)
    freqs = torch.tensor([math.exp(-math.log(10000) * i / 128) for i in range(128)])
    args = t[:, None] * freqs[None]
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    assert got.shape == (3, 256)
    assert (got - expected).abs().max().item() < 1e-4  # float32 args at t = 999
    assert torch.equal(got[0, :128], torch.ones(128)) and torch.equal(got[0, 128:], torch.zeros(128))


# ---------------------------------------------------------------- qk-norm and KV compression


def reference_self_attention(attn: SelfAttention, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Hand transcription of Σ `AttentionKVCompress.forward` with an explicit softmax (PixArt-sigma
    `diffusion/model/nets/PixArt_blocks.py`)."""
    batch, tokens, channels = x.shape
    heads, head_dim = attn.num_heads, channels // attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(batch, tokens, 3, channels).unbind(2)
    if attn.q_norm is not None:
        q = F.layer_norm(q, (channels,), attn.q_norm.weight, attn.q_norm.bias, 1e-5)
        k = F.layer_norm(k, (channels,), attn.k_norm.weight, attn.k_norm.bias, 1e-5)
    ratio, (height, width) = attn.kv_compress_ratio, grid_hw
    if ratio > 1:
        def down(t):
            grid = t.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
            if attn.kv_compress_sampling == "conv":
                out = torch.zeros(batch, channels, height // ratio, width // ratio)
                for i in range(height // ratio):  # explicit depthwise conv, kernel = stride = ratio
                    for j in range(width // ratio):
                        patch = grid[:, :, i * ratio:(i + 1) * ratio, j * ratio:(j + 1) * ratio]
                        out[:, :, i, j] = (patch * attn.sr.weight[:, 0]).sum((-1, -2)) + attn.sr.bias
                out = out.flatten(2).transpose(1, 2)
                return F.layer_norm(out, (channels,), attn.norm.weight, attn.norm.bias, 1e-5)
            return grid[:, :, ::ratio, ::ratio].flatten(2).transpose(1, 2)  # "ave" (nearest) == "uniform"
        k, v = down(k), down(v)
    q = q.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
    k = k.reshape(batch, -1, heads, head_dim).transpose(1, 2)
    v = v.reshape(batch, -1, heads, head_dim).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, channels)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("qk_norm,ratio,sampling", [
    (True, 1, "conv"), (False, 2, "conv"), (True, 2, "conv"), (False, 2, "ave"), (False, 2, "uniform"),
    (False, 3, "conv"),
])
def test_self_attention_variants_match_hand_computation(qk_norm, ratio, sampling):
    torch.manual_seed(0)
    attn = SelfAttention(HIDDEN, HEADS, qk_norm=qk_norm, kv_compress_ratio=ratio, kv_compress_sampling=sampling)
    with torch.no_grad():
        for param in attn.parameters():
            param.copy_(torch.randn_like(param) * 0.4)
    grid_hw = (6, 12)
    x = torch.randn(2, 72, HIDDEN)
    if ratio > 1:
        compressed = attn.downsample(torch.randn(2, 72, HIDDEN), grid_hw)
        assert compressed.shape == (2, (6 // ratio) * (12 // ratio), HIDDEN)  # K and V: 4x / 9x fewer tokens
    with torch.no_grad():
        expected = reference_self_attention(attn, x, grid_hw)
        got = attn(x, grid_hw)
    assert got.shape == (2, 72, HIDDEN)  # Q keeps every token
    assert (got - expected).abs().max().item() < 1e-5


def test_kv_compress_default_is_average_pooling():
    attn = SelfAttention(HIDDEN, HEADS, kv_compress_ratio=2)
    tokens = torch.randn(1, 16, HIDDEN)
    with torch.no_grad():
        pooled = attn.downsample(tokens, (4, 4))
    grid = tokens.reshape(1, 4, 4, HIDDEN).permute(0, 3, 1, 2)
    expected = F.layer_norm(F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2), (HIDDEN,), eps=1e-5)
    assert (pooled - expected).abs().max().item() < 1e-5


def test_qk_norm_and_kv_compress_in_full_model():
    config = small_config(qk_norm=True, kv_compress_layers=(1,), kv_compress_ratio=2, kv_compress_sampling="conv")
    model = random_model(config)
    keys = set(model.state_dict())
    assert {"blocks.0.attn.q_norm.weight", "blocks.1.attn.k_norm.bias", "blocks.1.attn.sr.weight",
            "blocks.1.attn.norm.bias"} <= keys
    assert "blocks.0.attn.sr.weight" not in keys and model.state_dict()["blocks.1.attn.sr.weight"].shape == (
        HIDDEN, 1, 2, 2)
    x, timestep, context = inputs(height=8, width=12)
    with torch.no_grad():
        out = model(x, timestep, context)
    assert out.shape == (2, 8, 8, 12) and torch.isfinite(out).all()
    plain = random_model(small_config(qk_norm=True))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".attn.sr." not in k
                           and ".attn.norm." not in k}, strict=True)
    with torch.no_grad():
        assert (plain(x, timestep, context) - out).abs().max().item() > 1e-4  # compression changes the result


# ---------------------------------------------------------------- caption masks


def test_padded_token_values_do_not_matter():
    model = random_model(small_config())
    x, timestep, context = inputs()
    mask = torch.zeros(2, TOKENS)
    mask[0, [0, 1, 2, 5]] = 1  # a gap: position 3, 4 masked inside the kept span
    mask[1, :7] = 1
    noisy = context.clone()
    noisy[mask == 0] = torch.randn(int((mask == 0).sum()), CAPTION) * 100
    with torch.no_grad():
        a = model(x, timestep, context, mask)
        b = model(x, timestep, noisy, mask)
    assert torch.equal(a, b)


def test_mask_equals_official_token_removal():
    """Each row attends only to its valid tokens: same as running it alone on the cut-down caption."""
    model = random_model(small_config())
    x, timestep, context = inputs(batch=3)
    lengths = [3, 10, 6]
    mask = torch.zeros(3, TOKENS)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    with torch.no_grad():
        batched = model(x, timestep, context, mask)
        for row, length in enumerate(lengths):
            alone = model(x[row:row + 1], timestep[row:row + 1], context[row:row + 1, :length])
            assert (batched[row] - alone[0]).abs().max().item() < 1e-5


def test_all_zero_mask_row_is_finite_and_attends_to_everything():
    model = random_model(small_config())
    x, timestep, context = inputs()
    mask = torch.ones(2, TOKENS)
    mask[0] = 0
    with torch.no_grad():
        out = model(x, timestep, context, mask)
        unmasked = model(x, timestep, context)
    assert torch.isfinite(out).all()
    assert (out - unmasked).abs().max().item() < 1e-6


def test_caption_keep_trims_to_longest_row():
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    kept, keep = PixArtTransformer.caption_keep(mask, 2, 6)
    assert kept == 3 and keep.shape == (2, 1, 1, 3) and keep[1, 0, 0].tolist() == [True, True, False]
    kept, keep = PixArtTransformer.caption_keep(torch.tensor([[1, 1, 0], [1, 1, 0]]), 2, 3)
    assert kept == 2 and keep is None
    assert PixArtTransformer.caption_keep(None, 2, 5) == (5, None)


# ---------------------------------------------------------------- construction, dtypes, devices


def test_official_state_dict_keys_and_strict_load():
    config = small_config(micro_condition=True, has_null_caption=True)
    model = random_model(config)
    keys = set(model.state_dict())
    assert "y_embedder.y_embedding" in keys and model.state_dict()["y_embedder.y_embedding"].shape == (TOKENS, CAPTION)
    assert {"x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias", "t_block.1.weight",
            "y_embedder.y_proj.fc1.weight", "y_embedder.y_proj.fc2.bias", "csize_embedder.mlp.0.weight",
            "ar_embedder.mlp.2.bias", "blocks.1.scale_shift_table", "blocks.0.attn.qkv.weight",
            "blocks.0.attn.proj.bias", "blocks.0.cross_attn.q_linear.weight", "blocks.0.cross_attn.kv_linear.bias",
            "blocks.0.cross_attn.proj.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias",
            "final_layer.scale_shift_table", "final_layer.linear.weight"} <= keys
    assert not any("pos_embed" in k for k in keys)
    assert model.state_dict()["x_embedder.proj.weight"].shape == (HIDDEN, 4, 2, 2)
    plain = PixArtTransformer(small_config())
    assert not any(k.startswith(("csize", "ar_", "y_embedder.y_embedding")) for k in plain.state_dict())
    with pytest.raises(ValueError, match="divisible by 3"):
        PixArtTransformer(small_config(hidden_size=16, num_heads=2, micro_condition=True))


def test_meta_construction_then_assign_load():
    config = small_config(micro_condition=True, has_null_caption=True)
    reference = random_model(config)
    with torch.device("meta"):
        model = PixArtTransformer(config)
    assert all(t.device.type == "meta" for t in model.state_dict().values())
    model.load_state_dict(reference.state_dict(), strict=True, assign=True)
    also_meta = PixArtTransformer(config, device="meta")
    assert next(also_meta.parameters()).is_meta
    x, timestep, context = inputs()
    with torch.no_grad():
        assert torch.equal(model.eval()(x, timestep, context), reference(x, timestep, context))


def test_dtype_and_device_arguments():
    model = PixArtTransformer(small_config(has_null_caption=True), dtype=torch.bfloat16, device="cpu")
    assert {t.dtype for t in model.state_dict().values()} == {torch.bfloat16}
    assert {t.device.type for t in model.state_dict().values()} == {"cpu"}
    reference = random_model(small_config(has_null_caption=True))
    model.load_state_dict(reference.state_dict())
    x, timestep, context = inputs()
    with torch.no_grad():
        expected = reference(x, timestep, context)
        out_bf16 = model(x.bfloat16(), timestep, context.bfloat16())
        out_fp32_in = model(x, timestep, context)
    assert out_bf16.dtype == torch.bfloat16 and out_fp32_in.dtype == torch.float32
    assert (out_bf16.float() - expected).abs().max().item() < 0.1 * expected.abs().max().item()


@pytest.mark.parametrize("native", [False, True])
def test_cpu_bf16_compute_policy(monkeypatch, native):
    """bf16 products run in fp32 on CPUs without native bf16, natively otherwise; both give bf16 out."""
    monkeypatch.setattr(linear_module, "cpu_has_native_bf16", lambda: native)
    probe = torch.zeros(2, dtype=torch.bfloat16)
    assert linear_module.compute_dtype(probe) == (torch.bfloat16 if native else torch.float32)
    assert linear_module.compute_dtype(probe.half()) == torch.float16
    reference = random_model(small_config())
    model = PixArtTransformer(small_config(), dtype=torch.bfloat16)
    model.load_state_dict(reference.state_dict())
    x, timestep, context = inputs()
    with torch.no_grad():
        expected = reference(x, timestep, context)
        got = model(x.bfloat16(), timestep, context.bfloat16())
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max().item() < 0.1 * expected.abs().max().item()


def test_inputs_validation_and_broadcasting():
    model = random_model(small_config())
    x, timestep, context = inputs()
    with torch.no_grad():
        scalar = model(x, 500.0, context)
        vector = model(x, torch.tensor([500.0, 500.0]), context)
    assert torch.equal(scalar, vector)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 4, 7, 8), timestep[:1], context[:1])
    with pytest.raises(ValueError, match="batch"):
        model(x, timestep, context[:1])


def test_backward_through_the_model():
    model = random_model(small_config(qk_norm=True, micro_condition=True))
    x, timestep, context = inputs()
    mask = torch.ones(2, TOKENS)
    mask[1, 4:] = 0
    out = model(x, timestep, context, mask)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        assert (model(x, timestep, context, mask) - out.detach()).abs().max().item() < 1e-6
