"""PixArtTransformer against diffusers' PixArtTransformer2DModel (tiny random weights) and key conversion."""

from __future__ import annotations

import pytest
import torch

from pixart_core.pixart.config import PixArtConfig
from pixart_core.pixart.convert import (
    diffusers_key_sources,
    diffusers_to_official,
    official_key_split,
    official_key_targets,
    official_to_diffusers,
)
from pixart_core.pixart.model import PixArtTransformer

diffusers = pytest.importorskip("diffusers")
FP32_TOL = 1e-5  # max |ours - diffusers| allowed at float32 (measured ~1e-6)
HEADS, HEAD_DIM, CAPTION, TOKENS = 3, 8, 32, 12
HIDDEN = HEADS * HEAD_DIM


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter (incl. scale_shift_tables) and null caption random, weights ~ N(0, 1/fan_in).

    diffusers' position-table buffer is left alone (it is the sin-cos table, not a weight)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = list(module.parameters()) + [b for n, b in module.named_buffers() if n.endswith("y_embedding")]
    with torch.no_grad():
        for tensor in tensors:
            scale = tensor[0].numel() ** -0.5 if tensor.dim() > 1 else 0.3
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)


def make_pair(sample_size: int, interpolation: float, micro: bool, seed: int = 0):
    """(diffusers model, our model) holding the same random weights."""
    reference = diffusers.PixArtTransformer2DModel(
        sample_size=sample_size, num_layers=2, patch_size=2, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, caption_channels=CAPTION, in_channels=4, cross_attention_dim=HIDDEN,
        out_channels=8, attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=micro, interpolation_scale=interpolation,
    ).eval()
    randomize(reference, seed)
    config = PixArtConfig(hidden_size=HIDDEN, depth=2, num_heads=HEADS, caption_channels=CAPTION,
                          model_max_length=TOKENS, sample_size=sample_size, pe_interpolation=interpolation,
                          micro_condition=micro)
    ours = PixArtTransformer(config).eval()
    ours.load_state_dict(diffusers_to_official(reference.state_dict()), strict=True)
    return reference, ours


def make_mask(rows: list[list[int]] | None, batch: int) -> torch.Tensor | None:
    """rows: per row, the valid token positions; None = no mask."""
    if rows is None:
        return None
    mask = torch.zeros(batch, TOKENS)  # [B, L]
    for index, valid in enumerate(rows):
        mask[index, valid] = 1
    return mask


CASES = {
    # name: (sample_size, interpolation, micro, latent (H, W), batch, timesteps, valid tokens per row or None)
    "alpha512_square_padded": (8, 1.0, False, (8, 8), 2, [999, 0], [list(range(7)), list(range(3))]),
    "alpha512_unpadded_mask": (8, 1.0, False, (8, 8), 2, [500, 1], [list(range(TOKENS))] * 2),
    "alpha1024ms_nonsquare": (16, 2.0, True, (8, 12), 2, [981.5, 3.25], [list(range(5)), list(range(11))]),
    "alpha1024ms_batch3": (16, 2.0, True, (12, 8), 3, [400, 400, 700], [[0, 1, 2], list(range(9)), [0]]),
    "sigma1024_interp2_no_mask": (16, 2.0, False, (16, 8), 2, [250.75, 999], None),
    "sigma2k_interp4_nonsquare": (32, 4.0, False, (12, 20), 2, [10, 600.5], [list(range(4)), list(range(8))]),
    "sigma_gapped_mask": (16, 2.0, False, (10, 10), 2, [321, 654], [[0, 2, 5, 6], [1, 3, 4, 9, 10]]),
    "sigma256_interp_half": (4, 0.5, False, (6, 4), 1, [77.7], [list(range(6))]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_diffusers(name):
    sample_size, interpolation, micro, (height, width), batch, timesteps, valid = CASES[name]
    reference, ours = make_pair(sample_size, interpolation, micro, seed=len(name))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, height, width, generator=generator)  # [B, 4, H, W]
    context = torch.randn(batch, TOKENS, CAPTION, generator=generator)  # [B, L, 32]
    timestep = torch.tensor(timesteps)  # [B]
    mask = make_mask(valid, batch)
    resolution = torch.tensor([[height * 8.0, width * 8.0]] * batch) if micro else None  # [B, 2]
    aspect_ratio = torch.tensor([[height / width]] * batch) if micro else None  # [B, 1]
    with torch.no_grad():
        expected = reference(x, context, timestep, encoder_attention_mask=mask,
                             added_cond_kwargs={"resolution": resolution, "aspect_ratio": aspect_ratio}).sample
        got = ours(x, timestep, context, mask, resolution, aspect_ratio)
        got_grad_path = None
    with torch.enable_grad():
        got_grad_path = ours(x, timestep, context, mask, resolution, aspect_ratio).detach()
    assert got.shape == expected.shape == (batch, 8, height, width)
    assert expected.abs().max() > 0.5  # a real signal, not all-zero outputs
    diff = (got - expected).abs().max().item()
    assert diff <= FP32_TOL, f"{name}: max |ours - diffusers| = {diff:.3g}"
    # the autograd path (no scratch buffers, no in-place updates) computes the same thing
    assert (got_grad_path - got).abs().max().item() <= 1e-6


def test_integer_and_float_timesteps_agree():
    reference, ours = make_pair(8, 1.0, False)
    x = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, TOKENS, CAPTION)
    with torch.no_grad():
        as_int = ours(x, torch.tensor([999, 17]), context)
        as_float = ours(x, torch.tensor([999.0, 17.0]), context)
        expected = reference(x, context, torch.tensor([999, 17]),
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    assert torch.equal(as_int, as_float)
    assert (as_int - expected).abs().max().item() <= FP32_TOL


def test_micro_conditions_default_to_latent_size():
    """resolution/aspect_ratio omitted -> (H*8, W*8) and H/W, as diffusers' pipeline passes them."""
    reference, ours = make_pair(16, 2.0, True)
    x = torch.randn(2, 4, 8, 14)
    context = torch.randn(2, TOKENS, CAPTION)
    conditions = {"resolution": torch.tensor([[64.0, 112.0]] * 2), "aspect_ratio": torch.tensor([[8 / 14]] * 2)}
    with torch.no_grad():
        expected = reference(x, context, torch.tensor([500, 500]), added_cond_kwargs=conditions).sample
        got = ours(x, torch.tensor([500, 500]), context)
        other = ours(x, torch.tensor([500, 500]), context, resolution=torch.tensor([[1024.0, 1024.0]]),
                     aspect_ratio=torch.tensor([1.0]))
    assert (got - expected).abs().max().item() <= FP32_TOL
    assert (other - got).abs().max().item() > 1e-3  # the micro-conditions really change the output


def test_all_zero_mask_row_matches_diffusers_bias():
    """diffusers adds -10000 to every token of an all-padded row, i.e. plain attention over all tokens."""
    reference, ours = make_pair(8, 1.0, False)
    x = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, TOKENS, CAPTION)
    mask = make_mask([[], list(range(4))], 2)
    with torch.no_grad():
        expected = reference(x, context, torch.tensor([5, 900]), encoder_attention_mask=mask,
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        got = ours(x, torch.tensor([5, 900]), context, mask)
    assert torch.isfinite(got).all()
    # fp32 rounding of (score - 10000) limits diffusers itself to ~1e-3 here
    assert (got - expected).abs().max().item() <= 5e-3
    assert (got[1] - expected[1]).abs().max().item() <= FP32_TOL


# ---------------------------------------------------------------- key conversion


def test_diffusers_official_round_trips_are_exact():
    reference, _ = make_pair(16, 2.0, True)
    diffusers_sd = reference.state_dict()
    official = diffusers_to_official(diffusers_sd)
    assert "pos_embed" not in official and not any(k.startswith("transformer_blocks") for k in official)
    assert official["blocks.1.attn.qkv.weight"].shape == (3 * HIDDEN, HIDDEN)
    assert torch.equal(official["blocks.1.cross_attn.kv_linear.bias"],
                       torch.cat([diffusers_sd["transformer_blocks.1.attn2.to_k.bias"],
                                  diffusers_sd["transformer_blocks.1.attn2.to_v.bias"]]))
    back = official_to_diffusers(official)
    assert set(back) == set(diffusers_sd)
    assert all(torch.equal(back[k], diffusers_sd[k]) for k in back)

    # official -> diffusers -> official, with the null caption and the official stored pos_embed
    config = PixArtConfig(hidden_size=HIDDEN, depth=2, num_heads=HEADS, caption_channels=CAPTION,
                          model_max_length=TOKENS, micro_condition=True, has_null_caption=True)
    ours = PixArtTransformer(config)
    randomize(ours, 3)
    official = dict(ours.state_dict())
    with_pos = dict(official, pos_embed=torch.zeros(1, 16, HIDDEN))
    converted = official_to_diffusers(with_pos)
    assert "caption_projection.y_embedding" in converted and "pos_embed" not in converted
    again = diffusers_to_official(converted)
    assert set(again) == set(official)
    assert all(torch.equal(again[k], official[k]) for k in official)
    ours.load_state_dict(again, strict=True)


def test_converted_weights_load_into_diffusers_strictly():
    reference, ours = make_pair(8, 1.0, False, seed=5)
    fresh = diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
        caption_channels=CAPTION, in_channels=4, cross_attention_dim=HIDDEN, out_channels=8,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=1)
    fresh.load_state_dict(official_to_diffusers(ours.state_dict()), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), reference.state_dict().values()))


def test_streaming_key_plan():
    reference, _ = make_pair(16, 2.0, True)
    keys = list(reference.state_dict())
    sources = diffusers_key_sources(keys)
    assert sources["blocks.0.attn.qkv.weight"] == tuple(
        f"transformer_blocks.0.attn1.to_{part}.weight" for part in "qkv")
    assert sources["blocks.1.cross_attn.kv_linear.bias"] == (
        "transformer_blocks.1.attn2.to_k.bias", "transformer_blocks.1.attn2.to_v.bias")
    assert sources["csize_embedder.mlp.2.weight"] == ("adaln_single.emb.resolution_embedder.linear_2.weight",)
    assert sources["final_layer.scale_shift_table"] == ("scale_shift_table",)
    assert len({d for parts in sources.values() for d in parts}) == len(keys)
    assert diffusers_key_sources(["transformer_blocks.3.attn1.q_norm.weight"]) == {
        "blocks.3.attn.q_norm.weight": ("transformer_blocks.3.attn1.q_norm.weight",)}

    assert official_key_targets("pos_embed") == ()
    assert official_key_targets("y_embedder.y_embedding") == ("caption_projection.y_embedding",)
    assert official_key_split("blocks.2.attn.qkv.bias", 72) == [
        ("transformer_blocks.2.attn1.to_q.bias", slice(0, 24)),
        ("transformer_blocks.2.attn1.to_k.bias", slice(24, 48)),
        ("transformer_blocks.2.attn1.to_v.bias", slice(48, 72))]
    assert official_key_split("blocks.0.attn.k_norm.weight", 24) == [
        ("transformer_blocks.0.attn1.k_norm.weight", slice(0, 24))]


def test_conversion_errors_name_the_keys():
    with pytest.raises(ValueError, match="transformer_blocks.0.attn1.to_k.weight"):
        diffusers_key_sources(["transformer_blocks.0.attn1.to_q.weight", "transformer_blocks.0.attn1.to_v.weight"])
    with pytest.raises(ValueError, match="mystery.weight"):
        diffusers_to_official({"mystery.weight": torch.zeros(1), "proj_out.bias": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.sr\.weight"):
        official_to_diffusers({"blocks.0.attn.sr.weight": torch.zeros(4, 1, 2, 2)})
    with pytest.raises(ValueError, match="not_a_key"):
        official_key_targets("not_a_key")
    with pytest.raises(ValueError, match="equal parts"):
        official_key_split("blocks.0.attn.qkv.weight", 10)
