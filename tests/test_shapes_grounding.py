"""The shapes world's attention grounding: phrase spans, token-cell regions, the recorded attention and the loss."""

from __future__ import annotations

import numpy as np
import torch

from pixart_core.pixart.config import PRESETS
from pixart_core.pixart.model import PixArtTransformer
from pixart_core.t5.tokenizer import load_t5_tokenizer
from pixart_core.testing.shapes_data import ShapeSpec, describe, render
from pixart_core.testing.shapes_grounding import (GROUPS, grounding_loss, grounding_targets, recording,
                                                  token_regions)


def _two_shapes():
    specs = [ShapeSpec("circle", "red", "left", 26, 64, 15), ShapeSpec("star", "blue", "top right", 102, 26, 15)]
    return render("grey", specs)


def test_each_phrase_owns_its_own_tokens_and_region(t5_tokenizer_dir):
    tokenizer = load_t5_tokenizer(t5_tokenizer_dir)
    scene = _two_shapes()
    regions = token_regions(scene.masks, 8)  # [G, 64]
    targets = grounding_targets(tokenizer, [(scene.background, scene.shapes)], regions[None], 48)
    ids = tokenizer.encode(scene.prompt.lower())
    for group, spec in enumerate(scene.shapes):
        span = np.flatnonzero(targets["members"][0, group].numpy())
        assert ids[span[0]:span[-1] + 1] == tokenizer.encode(describe(spec).lower())[:-1]  # contiguous, whole
    background = np.flatnonzero(targets["members"][0, -1].numpy())
    assert ids[background[0]:background[-1] + 1] == tokenizer.encode("on a grey background")[:-1]
    assert targets["valid"][0].tolist() == [True, True, False, True]  # two shapes: the third phrase is absent
    grid = regions.reshape(GROUPS, 8, 8)
    assert grid[0, 4, 1] > 0.5 and grid[0, 4, 6] == 0  # the circle covers a left cell, not a right one
    assert grid[1, 1, 6] > 0.3 and grid[1, 6, 1] == 0  # the star is at the top right
    np.testing.assert_allclose(grid[:3].sum(0) + grid[3], 1.0, atol=1e-6)  # shapes and background tile the image


def test_a_shape_free_scene_has_only_its_background_phrase_over_the_whole_image(t5_tokenizer_dir):
    tokenizer = load_t5_tokenizer(t5_tokenizer_dir)
    scene = render("sky blue", [])
    regions = token_regions(scene.masks, 8)  # [G, 64]
    targets = grounding_targets(tokenizer, [(scene.background, [])], regions[None], 48)
    ids = tokenizer.encode(scene.prompt.lower())
    background = np.flatnonzero(targets["members"][0, -1].numpy())
    assert ids[background[0]:background[-1] + 1] == ids[:-1] == tokenizer.encode("a plain sky blue background")[:-1]
    assert targets["valid"][0].tolist() == [False, False, False, True]
    np.testing.assert_array_equal(regions[-1], 1.0)
    np.testing.assert_array_equal(regions[:-1], 0.0)


def test_loss_is_zero_inside_the_region_and_larger_the_more_attention_strays():
    members = torch.zeros(1, GROUPS, 6, dtype=torch.bool)
    members[0, 0, 1:3] = True  # the shape's phrase is caption tokens 1 and 2
    regions = torch.zeros(1, GROUPS, 4)
    regions[0, 0, :2] = 1.0  # the shape covers image tokens 0 and 1
    valid = torch.tensor([[True, False, False, False]])
    inside = torch.zeros(1, 4, 6)
    inside[0, :2, 1] = 1.0  # image tokens 0-1 read the phrase, 2-3 read token 0
    inside[0, 2:, 0] = 1.0
    assert float(grounding_loss([inside], members, regions, valid)) == 0.0
    uniform = torch.full((1, 4, 6), 1 / 6)  # every image token reads every caption token alike
    assert abs(float(grounding_loss([uniform], members, regions, valid)) - 0.25) < 1e-6  # (1 - 2/4)²
    assert float(grounding_loss([uniform], members, regions, torch.zeros_like(valid))) == 0.0  # nothing to ground


def test_recorded_attention_is_what_capture_attention_reports_and_carries_gradients():
    torch.manual_seed(0)
    config = PRESETS["sigma-256"].with_(hidden_size=64, num_heads=2, depth=2, caption_channels=32, sample_size=8,
                                        has_null_caption=False)
    model = PixArtTransformer(config).eval()
    for block in model.blocks:  # the preset starts these at zero; random values make the test see every term
        torch.nn.init.normal_(block.cross_attn.q_linear.weight, std=0.5)
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    timestep = torch.tensor([10.0, 500.0])
    with model.capture_attention() as capture:
        model(x, timestep, context, mask)
    with recording(model) as recorder:
        model(x, timestep, context, mask)
    assert len(recorder.maps) == 2
    recorded = torch.stack(recorder.maps).mean(0)  # [B, N, L']
    reference = capture.cross_attention()[..., :recorded.shape[-1]]
    torch.testing.assert_close(recorded.detach(), reference, atol=1e-5, rtol=1e-5)
    assert all(block.cross_attn.recorder is None for block in model.blocks)  # detached on exit
    recorded.sum(dim=(0, 1))[0].backward()
    assert model.blocks[0].cross_attn.q_linear.weight.grad is not None


def test_projections_only_records_the_same_maps_but_trains_only_the_cross_attention_q_and_k():
    torch.manual_seed(0)
    config = PRESETS["sigma-256"].with_(hidden_size=64, num_heads=2, depth=2, caption_channels=32, sample_size=8,
                                        has_null_caption=False)
    model = PixArtTransformer(config).eval()
    for block in model.blocks:
        torch.nn.init.normal_(block.cross_attn.q_linear.weight, std=0.5)
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    timestep = torch.tensor([10.0, 500.0])
    with recording(model) as recorder:
        model(x, timestep, context, mask)
    full = torch.stack(recorder.maps).mean(0).detach()  # [B, N, L']
    with recording(model, projections_only=True) as recorder:
        model(x, timestep, context, mask)
    restricted = torch.stack(recorder.maps).mean(0)  # [B, N, L']
    torch.testing.assert_close(restricted.detach(), full, atol=1e-6, rtol=1e-6)
    assert all(block.cross_attn.recorder is None and not block.cross_attn._forward_pre_hooks for block in model.blocks)
    restricted.sum(dim=(0, 1))[0].backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(".cross_attn.q_linear." in name or ".cross_attn.kv_linear." in name for name in trained)
    assert "blocks.1.cross_attn.q_linear.weight" in trained and "blocks.0.cross_attn.kv_linear.weight" in trained


def test_grounding_the_first_head_trains_only_that_heads_query_and_key_rows():
    torch.manual_seed(0)
    config = PRESETS["sigma-256"].with_(hidden_size=64, num_heads=2, depth=1, caption_channels=32, sample_size=8,
                                        has_null_caption=False)
    model = PixArtTransformer(config).eval()
    torch.nn.init.normal_(model.blocks[0].cross_attn.q_linear.weight, std=0.5)
    x, context, mask = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 32), torch.ones(1, 6, dtype=torch.long)
    with recording(model, projections_only=True, heads=1) as recorder:
        model(x, torch.tensor([300.0]), context, mask)
    recorder.maps[0][0, :, 1].sum().backward()  # [B, N, L'] -> one caption column
    attention = model.blocks[0].cross_attn
    q_grad, kv_grad = attention.q_linear.weight.grad, attention.kv_linear.weight.grad  # [C, C], [2C, C]
    assert q_grad[:32].abs().sum() > 0 and kv_grad[:32].abs().sum() > 0  # head 0's query and key rows
    assert q_grad[32:].abs().sum() == 0 and kv_grad[32:].abs().sum() == 0  # head 1, and every value row


def test_the_pixel_term_prefers_a_map_that_covers_its_shape_to_one_that_peaks_in_it():
    """Both maps lie wholly inside the shape's cells, so the inside term cannot tell them apart; TokenCompose's
    pixel term (binary cross-entropy against the coverage) favours the one covering the whole shape."""
    tokens, length = 16, 4
    regions = torch.zeros(1, GROUPS, tokens)  # [B, G, N]
    regions[0, 0, 4:8] = 1.0  # the shape covers 4 token cells
    members = torch.zeros(1, GROUPS, length, dtype=torch.bool)  # [B, G, L]
    members[0, 0, 1] = True
    valid = torch.zeros(1, GROUPS, dtype=torch.bool)
    valid[0, 0] = True
    peaked, covering = torch.full((1, tokens, length), 1 / 3), torch.full((1, tokens, length), 1 / 3)  # [B, N, L]
    peaked[0, :, 1] = 0.0
    peaked[0, 5] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    covering[0, :, 1] = 0.0
    covering[0, 4:8] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    inside_only = [float(grounding_loss([m], members, regions, valid)) for m in (peaked, covering)]
    assert inside_only[0] == inside_only[1] == 0.0
    with_pixels = [float(grounding_loss([m], members, regions, valid, pixel_weight=1.0)) for m in (peaked, covering)]
    assert with_pixels[1] < with_pixels[0]
