"""`PixArtTransformer.regional_prompting` against a cross-attention assembled by hand from each block's modules.

The reference takes the residual stream and the embedded caption entering each block's cross-attention (forward
hooks), q from `q_linear`, k and v from `kv_linear`, a masked softmax per branch (global columns only; global plus
the token's own region or background columns, the token's owner found by the box-centre rule), the β blend and
`proj`: the cross-attention of `PixArtMSBlock.forward` (PixArt-alpha `diffusion/model/nets/PixArtMS.py`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixart_core.controlnet import PixArtControlNet
from pixart_core.pixart.model import PixArtTransformer
from pixart_core.pixart.regions import Region, RegionalPrompt
from pixart_core.testing.transformers import random_official_state_dict, tiny_transformer_config

TOL = 1e-5
LATENT = (8, 12)  # grid 4 x 6 with patch 2
CANVAS = (96, 64)  # (width, height) in pixels: 8 px per latent, 16 px per token
BOX_A, BOX_B = (0, 0, 48, 64), (32, 16, 80, 48)  # B overlaps A at column 2, rows 1-2, and wins there
SPANS = [("global", 0, 7), ("cat", 7, 12), ("dog", 12, 18), ("background", 18, 22)]


@pytest.fixture(scope="module")
def model():
    cfg = tiny_transformer_config("sigma-1024").with_(depth=2)
    net = PixArtTransformer(cfg).eval()
    net.load_state_dict(random_official_state_dict(cfg, seed=11, pos_embed=False), strict=True)
    return net


def caption(seed: int, batch: int, length: int, valid: list[int], padding: int = 3):
    """T5-like features [B, length + padding, c] with rows valid up to `valid[row]` tokens, and their mask."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, length + padding, 32, generator=gen)  # [B, L, c]
    mask = torch.zeros(batch, length + padding)  # [B, L]
    for row in range(batch):
        mask[row, :valid[row % len(valid)]] = 1
    return context * mask[..., None], mask


def prompt(beta: float = 0.3, boxes=(BOX_A, BOX_B), background: bool = True, dog_seed: int = 3) -> RegionalPrompt:
    context, mask = caption(1, 2, 7, [7, 4])
    cat, cat_mask = caption(2, 2, 5, [3, 5])
    dog, dog_mask = caption(dog_seed, 1, 6, [6])  # batch 1: shared by both rows
    regions = [Region(*part, name) for part, name in zip([(cat, boxes[0], cat_mask), (dog, boxes[-1], dog_mask)],
                                                           ["cat", "dog"][:len(boxes)])]
    bg, bg_mask = caption(4, 2, 4, [2, 4]) if background else (None, None)
    return RegionalPrompt(context, mask, regions, CANVAS, background=bg, background_mask=bg_mask, base_ratio=beta)


def latents(model, seed: int, batch: int = 2, size=LATENT):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.config.in_channels, *size, generator=gen)  # [B, 4, H, W]
    return x, torch.tensor([700.0, 30.5, 500.0, 999.0][:batch])  # [B]


def owner_by_centres(boxes, grid_hw) -> torch.Tensor:
    """[N] owning region per token by the box-centre rule, written out token by token (-1: none)."""
    height, width = grid_hw
    owner = torch.full((height * width,), -1)
    for row in range(height):
        for col in range(width):
            cx, cy = (col + 0.5) * CANVAS[0] / width, (row + 0.5) * CANVAS[1] / height
            for index, (x0, y0, x1, y1) in enumerate(boxes):
                if x0 <= cx < x1 and y0 <= cy < y1:
                    owner[row * width + col] = index
    return owner


def allowed_columns(owner: torch.Tensor, spans, background: bool) -> torch.Tensor:
    """[N, L] columns each token sees in the regional branch."""
    allowed = torch.zeros(owner.numel(), spans[-1][2], dtype=torch.bool)
    allowed[:, :spans[0][2]] = True
    for index, (_, start, stop) in enumerate(spans[1:3]):
        allowed[owner == index, start:stop] = True
    if background:
        allowed[owner < 0, spans[3][1]:spans[3][2]] = True
    return allowed


def reference_attention(attn, x, caption_tokens, valid, allowed, global_length, beta, rows):
    """(projected output [B, N, C], blended probabilities [B, H, N, L]) by hand; rows not in `rows` are plain."""
    heads = attn.num_heads
    batch, tokens, width = x.shape
    q = F.linear(x, attn.q_linear.weight, attn.q_linear.bias).view(batch, tokens, heads, -1).transpose(1, 2)
    kv = F.linear(caption_tokens, attn.kv_linear.weight, attn.kv_linear.bias)  # [B, L, 2C]
    k = kv[..., :width].view(batch, -1, heads, q.shape[-1]).transpose(1, 2)  # [B, H, L, d]
    v = kv[..., width:].view(batch, -1, heads, q.shape[-1]).transpose(1, 2)  # [B, H, L, d]
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, N, L]
    length = k.shape[2]
    plain_mask = valid[:, None, None, :length]  # [B, 1, 1, L]
    global_mask = plain_mask & (torch.arange(length) < global_length)  # [B, 1, 1, L]
    regional_mask = plain_mask & allowed[None, None, :, :length]  # [B, 1, N, L]
    probs = []
    for row in range(batch):
        plain = torch.softmax(logits[row].masked_fill(~plain_mask[row], -math.inf), -1)  # [H, N, L]
        if row in rows:
            base = torch.softmax(logits[row].masked_fill(~global_mask[row], -math.inf), -1)
            regional = torch.softmax(logits[row].masked_fill(~regional_mask[row], -math.inf), -1)
            plain = beta * base + (1 - beta) * regional
        probs.append(plain)
    probs = torch.stack(probs)  # [B, H, N, L]
    out = (probs @ v).transpose(1, 2).reshape(batch, tokens, width)  # [B, N, C]
    return F.linear(out, attn.proj.weight, attn.proj.bias), probs


def run_with_hooks(model, *args, blocks=None):
    """Forward under no_grad recording each block's cross-attention inputs and output (cloned)."""
    seen = {}
    hooks = []
    for index in blocks if blocks is not None else range(len(model.blocks)):
        attn = model.blocks[index].cross_attn
        hooks.append(attn.register_forward_pre_hook(
            lambda m, a, i=index: seen.__setitem__(i, [t if t is None else t.clone() for t in a])))
        hooks.append(attn.register_forward_hook(lambda m, a, out, i=index: seen[i].append(out.clone())))
    try:
        with torch.no_grad():
            out = model(*args)
    finally:
        for hook in hooks:
            hook.remove()
    return out, seen


@pytest.mark.parametrize("size", [LATENT, (12, 8), (6, 20)])
@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_matches_hand_built_cross_attention(model, size, beta):
    regional = prompt(beta)
    assert regional.spans == SPANS and regional.context.shape == (2, 22, 32)
    grid = (size[0] // 2, size[1] // 2)
    owner = owner_by_centres([BOX_A, BOX_B], grid)
    assert torch.equal(regional.owner_map(grid).reshape(-1), owner)
    allowed = allowed_columns(owner, SPANS, background=True)
    x, t = latents(model, 5, size=size)
    context, mask, rows = regional.model_inputs()
    with model.regional_prompting(regional, rows):
        _, seen = run_with_hooks(model, x, t, context, mask)
    assert sorted(seen) == [0, 1]
    for index, (stream, caption_tokens, _, out) in seen.items():
        expected, _ = reference_attention(model.blocks[index].cross_attn, stream, caption_tokens, mask != 0, allowed,
                                          7, beta, rows)
        assert (out - expected).abs().max().item() < TOL


def test_inactive_and_no_region_prompts_are_bit_identical(model):
    context, mask = caption(1, 2, 7, [7, 4])
    x, t = latents(model, 6)
    with torch.no_grad():
        plain = model(x, t, context, mask)
        for beta in (0.0, 0.5, 1.0):
            regional = RegionalPrompt(context, mask, [], CANVAS, base_ratio=beta)
            with model.regional_prompting(regional):
                assert torch.equal(model(x, t, *regional.model_inputs()[:2]), plain)
        with model.regional_prompting(prompt()):
            pass
        assert torch.equal(model(x, t, context, mask), plain)
        assert all(block.cross_attn.regional is None for block in model.blocks) and not model._forward_pre_hooks
        regional = prompt(beta=1.0)  # β = 1: only the global branch, up to rounding of the longer kv GEMM
        with model.regional_prompting(regional):
            assert (model(x, t, *regional.model_inputs()[:2]) - plain).abs().max().item() < TOL


def test_whole_canvas_region_at_beta_zero_is_the_concatenated_caption(model):
    regional = prompt(beta=0.0, boxes=[(0, 0, *CANVAS)], background=False)
    context, mask, _ = regional.model_inputs()
    x, t = latents(model, 7)
    with torch.no_grad():
        plain = model(x, t, context, mask)
        with model.regional_prompting(regional):
            out = model(x, t, context, mask)
    assert (out - plain).abs().max().item() < TOL


def test_region_caption_reaches_only_its_tokens(model):
    x, t = latents(model, 8)
    outputs = []
    for dog_seed in (3, 30):
        regional = prompt(beta=0.3, dog_seed=dog_seed)
        with model.regional_prompting(regional):
            _, seen = run_with_hooks(model, x, t, *regional.model_inputs()[:2], blocks=[0])
        outputs.append(seen[0][-1])  # [B, N, C] block 0 cross-attention output
    in_dog = regional.owner_map((4, 6)).reshape(-1) == 1  # [N]
    assert in_dog.sum().item() == 6
    assert torch.equal(outputs[0][:, ~in_dog], outputs[1][:, ~in_dog])
    assert not torch.allclose(outputs[0][:, in_dog], outputs[1][:, in_dog])


def test_boxes_on_non_square_grids():
    regional = prompt(boxes=[(0, 0, *CANVAS), (40, 20, 42, 22)], background=False)
    for grid in [(4, 6), (6, 4), (3, 10), (1, 1)]:
        assert regional.token_boxes(grid)[0] == (0, 0, *grid)  # the canvas box covers every token
    assert regional.token_boxes((4, 6))[1] == (1, 2, 2, 3)  # smaller than a token: the token holding its centre
    edge = prompt(boxes=[(94, 62, 96, 64), (0, 0, 24, 16)], background=False)
    assert edge.token_boxes((4, 6)) == [(3, 5, 4, 6), (0, 0, 1, 1)]  # a centre on the right edge is outside
    owner = prompt().owner_map((4, 6))
    assert owner[1:3, 2].tolist() == [1, 1] and owner[0, 2].item() == 0  # the later box wins the overlap
    columns = prompt().column_mask((4, 6))
    assert columns.shape == (24, 22) and bool(columns[:, :7].all())
    expected = allowed_columns(owner_by_centres([BOX_A, BOX_B], (4, 6)), SPANS, background=True)
    assert torch.equal(columns, expected)
    assert torch.equal(prompt().attention_mask((4, 6)), expected & (prompt().mask != 0)[:, None, None, :])
    assert bool(columns[owner.reshape(-1) < 0, 18:].all()) and not bool(columns[owner.reshape(-1) >= 0, 18:].any())


def test_cfg_rows_and_capture(model):
    regional = prompt(beta=0.4)
    negative, negative_mask = caption(9, 1, 4, [4], padding=20)
    context, mask, rows = regional.model_inputs(negative, negative_mask)
    assert context.shape == (4, 22, 32) and list(rows) == [2, 3]
    x, t = latents(model, 10)
    x4, t4 = torch.cat([x, x]), torch.cat([t, t])
    with torch.no_grad():
        uncond = model(x, t, negative.expand(2, -1, -1), negative_mask.expand(2, -1))
        with model.regional_prompting(regional):
            cond = model(x, t, *regional.model_inputs()[:2])
        with model.regional_prompting(regional, rows), model.capture_attention(blocks=[1]) as cap:
            _, seen = run_with_hooks(model, x4, t4, context, mask, blocks=[1])
            both = model(x4, t4, context, mask)
    assert (both[:2] - uncond).abs().max().item() < TOL and (both[2:] - cond).abs().max().item() < TOL
    allowed = allowed_columns(owner_by_centres([BOX_A, BOX_B], (4, 6)), SPANS, background=True)
    stream, caption_tokens, _, _ = seen[1]
    _, probs = reference_attention(model.blocks[1].cross_attn, stream, caption_tokens, mask != 0, allowed, 7, 0.4,
                                   rows)
    got = cap.cross_attention()  # [4, N, 22] over the concatenated columns
    assert got.shape == (4, 24, 22) and (got - probs.mean(1)).abs().max().item() < TOL
    assert torch.allclose(got.sum(-1), torch.ones(4, 24), atol=TOL)
    assert torch.all(got[:2, :, 4:] == 0)  # the negative rows see only their caption
    outside_cat = regional.owner_map((4, 6)).reshape(-1) != 0
    assert torch.all(got[2:, outside_cat, 7:12] == 0)  # a region's columns are zero outside its tokens


def test_bfloat16(model):
    bf16 = PixArtTransformer(model.config, dtype=torch.bfloat16).eval()
    bf16.load_state_dict(model.state_dict())
    x, t = latents(model, 12)
    regional = prompt(beta=0.3)
    context, mask, _ = regional.model_inputs()
    with torch.no_grad():
        with model.regional_prompting(regional):
            full = model(x, t, context, mask)
        with bf16.regional_prompting(regional):
            half = bf16(x.bfloat16(), t, context.bfloat16(), mask)
        plain = bf16(x.bfloat16(), t, regional.context[:, :7].bfloat16(), mask[:, :7])
        with bf16.regional_prompting(RegionalPrompt(context[:, :7], mask[:, :7], [], CANVAS)):
            assert torch.equal(bf16(x.bfloat16(), t, context[:, :7].bfloat16(), mask[:, :7]), plain)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert (half.float() - full).abs().max().item() < 0.1 * full.abs().max().item()


def test_controlnet_copies_prompt_regionally(model):
    net = PixArtControlNet.from_transformer(model, num_blocks=1)
    with torch.no_grad():
        net.controlnet[0].after_proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
    control = torch.randn(1, model.config.in_channels, *LATENT, generator=torch.Generator().manual_seed(7))
    regional = prompt(beta=0.0, boxes=[(0, 0, *CANVAS)], background=False)
    context, mask, _ = regional.model_inputs()
    x, t = latents(model, 13)
    with torch.no_grad():
        plain = model(x, t, context, mask, controls=[(net, control, 0.8)])
        with model.regional_prompting(regional):
            out = model(x, t, context, mask, controls=[(net, control, 0.8)])
            assert net.controlnet[0].copied_block.cross_attn.regional is not None
    assert (out - plain).abs().max().item() < TOL
    assert net.controlnet[0].copied_block.cross_attn.regional is None


def test_bad_input_names_the_region_and_field(model):
    context, mask = caption(1, 2, 7, [7, 4])
    cat, _ = caption(2, 2, 5, [5])
    cases = [([Region(cat, (0, 0, 97, 10), name="cat")], "cat: box .* outside the canvas"),
             ([Region(cat, (-1, 0, 10, 10), name="cat")], "cat: box .* outside the canvas"),
             ([Region(cat, (10, 0, 10, 10), name="cat")], "cat: box .* empty"),
             ([Region(cat, (0, 20, 10, 5), name="cat")], "cat: box .* empty"),
             ([Region(cat, (0, 0, 10), name="cat")], "cat: box must be 4 numbers"),
             ([Region(caption(2, 3, 5, [5])[0], (0, 0, 10, 10), name="dog")], "dog: context batch 3"),
             ([Region(cat, (0, 0, 10, 10), torch.ones(2, 4))], "region 0: mask must be"),
             ([Region(cat[..., :8], (0, 0, 10, 10), name="dog")], "dog: context width 8")]
    for regions, message in cases:
        with pytest.raises(ValueError, match=message):
            RegionalPrompt(context, mask, regions, CANVAS)
    with pytest.raises(ValueError, match="base_ratio"):
        RegionalPrompt(context, mask, [], CANVAS, base_ratio=1.5)
    with pytest.raises(ValueError, match="background: context batch"):
        RegionalPrompt(context, mask, [], CANVAS, background=caption(2, 3, 5, [5])[0])
    regional = prompt()
    x, t = latents(model, 14)
    with model.regional_prompting(regional, rows=[0, 5]), pytest.raises(ValueError, match="rows"):
        model(x, t, *regional.model_inputs()[:2])
    with model.regional_prompting(regional):
        with pytest.raises(ValueError, match="context has 7 tokens"):
            model(x, t, context[:, :7], mask[:, :7])
        with pytest.raises(RuntimeError, match="already"):
            with model.regional_prompting(regional):
                pass
    assert all(block.cross_attn.regional is None for block in model.blocks) and not model._forward_pre_hooks
