"""`PixArtTransformer.capture_attention` against cross-attention probabilities computed by hand.

The reference takes the residual stream entering each block's cross-attention (a forward pre-hook), q from its
`q_linear`, k from `kv_linear` on the embedded caption over all L tokens, and a softmax that masks the padding
columns: the cross-attention of `PixArtMSBlock.forward` (PixArt-alpha `diffusion/model/nets/PixArtMS.py`)."""

from __future__ import annotations

import pytest
import torch

from pixart_core.controlnet import PixArtControlNet
from pixart_core.pixart import capture
from pixart_core.pixart.capture import upsample_map
from pixart_core.pixart.model import PixArtTransformer
from pixart_core.testing.transformers import random_official_state_dict, tiny_transformer_config

TOL = 1e-5
DEPTH, TOKENS, LATENT = 3, 12, (8, 12)  # grid 4 x 6 with patch 2
VALID = [list(range(5)), [0, 2, 3, 4, 5, 6, 7, 8]]  # per row; columns 9.. are padding in every row


@pytest.fixture(scope="module")
def model():
    cfg = tiny_transformer_config("sigma-1024").with_(depth=DEPTH)
    net = PixArtTransformer(cfg).eval()
    net.load_state_dict(random_official_state_dict(cfg, seed=3, pos_embed=False), strict=True)
    return net


def inputs(model, seed: int, batch: int = 2, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.config.in_channels, *LATENT, generator=gen).to(dtype)  # [B, 4, H, W]
    context = torch.randn(batch, TOKENS, model.config.caption_channels, generator=gen).to(dtype)  # [B, L, c]
    mask = torch.zeros(batch, TOKENS)  # [B, L]
    for row in range(batch):
        mask[row, VALID[row % len(VALID)]] = 1
    timestep = torch.tensor([700.0, 30.5][:batch] + [500.0] * max(0, batch - 2))  # [B]
    return x, timestep, context * mask[..., None].to(dtype), mask


def reference_probs(model, blocks, calls, **extra) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(mean probabilities [B, N, L] over heads, blocks and calls, outputs) computed by hand."""
    entering: dict[int, torch.Tensor] = {}
    hooks = [model.blocks[i].cross_attn.register_forward_pre_hook(
        lambda module, args, i=i: entering.__setitem__(i, args[0].detach().float().clone())) for i in blocks]
    heads, head_dim = model.config.num_heads, model.config.head_dim
    total, outputs = 0.0, []
    try:
        for x, timestep, context, mask in calls:
            with torch.no_grad():
                outputs.append(model(x, timestep, context, mask, **extra))
                caption = model.y_embedder(context.float())  # [B, L, C]
                for i in blocks:
                    attn = model.blocks[i].cross_attn
                    stream = entering[i]  # [B, N, C]
                    batch, tokens, width = stream.shape
                    q = torch.nn.functional.linear(stream, attn.q_linear.weight.float(), attn.q_linear.bias.float())
                    kv = torch.nn.functional.linear(caption, attn.kv_linear.weight.float(), attn.kv_linear.bias.float())
                    q = q.view(batch, tokens, heads, head_dim).transpose(1, 2)  # [B, H, N, d]
                    k = kv[..., :width].view(batch, -1, heads, head_dim).transpose(1, 2)  # [B, H, L, d]
                    logits = q @ k.transpose(-1, -2) / head_dim**0.5  # [B, H, N, L]
                    logits = logits.masked_fill(mask[:, None, None, :] == 0, float("-inf"))  # [B, H, N, L]
                    total = total + torch.softmax(logits, dim=-1).mean(dim=1)  # [B, N, L]
    finally:
        for hook in hooks:
            hook.remove()
    return total / (len(blocks) * len(calls)), outputs


@pytest.mark.parametrize("blocks", [None, [0, 2]])
def test_capture_matches_explicit_probabilities_over_two_calls(model, blocks):
    calls = [inputs(model, 1), inputs(model, 2)]
    expected, plain = reference_probs(model, range(DEPTH) if blocks is None else blocks, calls)
    with model.capture_attention(blocks=blocks) as cap:
        with torch.no_grad():
            captured = [model(*call) for call in calls]
    got = cap.cross_attention()  # [B, N, L]
    assert cap.calls == 2 and cap.grid_hw == (4, 6)
    assert got.shape == (2, 24, TOKENS) and got.dtype == torch.float32
    assert (got - expected).abs().max().item() < TOL
    for row, valid in enumerate(VALID):
        padding = [c for c in range(TOKENS) if c not in valid]
        assert torch.all(got[row][:, padding] == 0)
    assert torch.allclose(got.sum(-1), torch.ones(2, 24), atol=TOL)
    for with_capture, without in zip(captured, plain):
        assert torch.equal(with_capture, without)


def test_query_chunks_give_the_same_map(model, monkeypatch):
    """A chunk budget of 5 query rows (5 chunks over 24 tokens) gives the one-chunk result."""
    call = inputs(model, 10)
    expected, _ = reference_probs(model, range(DEPTH), [call])
    monkeypatch.setattr(capture, "CHUNK_ELEMENTS", 2 * model.config.num_heads * 9 * 5)
    with model.capture_attention() as cap, torch.no_grad():
        model(*call)
    assert (cap.cross_attention() - expected).abs().max().item() < TOL


def test_nothing_recorded_after_exit_and_memory_bounded(model):
    x, timestep, context, mask = inputs(model, 4)
    with model.capture_attention() as cap:
        with torch.no_grad():
            model(x, timestep, context, mask)
        held = [v for v in vars(cap.recorder).values() if isinstance(v, torch.Tensor)]
        assert [t.numel() for t in held] == [2 * 24 * TOKENS]
    before = cap.cross_attention().clone()
    assert all(block.cross_attn.recorder is None for block in model.blocks)
    assert not model._forward_pre_hooks and not model._forward_hooks
    with torch.no_grad():
        model(x, timestep, context, mask)
    assert cap.calls == 1 and torch.equal(cap.cross_attention(), before)


def test_controlnet_path_and_cfg_batch(model):
    """CFG batch of 4 rows (cond, cond, uncond, uncond) through a ControlNet, capture of block 1 only."""
    net = PixArtControlNet.from_transformer(model, num_blocks=1)
    with torch.no_grad():
        net.controlnet[0].after_proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
    x, timestep, context, mask = inputs(model, 6, batch=4)
    control = torch.randn(1, model.config.in_channels, *LATENT, generator=torch.Generator().manual_seed(7))
    extra = {"controls": [(net, control, 0.8)]}
    expected, plain = reference_probs(model, [1], [(x, timestep, context, mask)], **extra)
    with model.capture_attention(blocks=[1]) as cap, torch.no_grad():
        out = model(x, timestep, context, mask, **extra)
    assert torch.equal(out, plain[0])
    assert (cap.cross_attention() - expected).abs().max().item() < TOL
    maps = cap.token_maps([0, 1], batch_index=slice(0, 2))  # [2, h, w] of the conditional rows
    assert maps.shape == (2, 4, 6)
    assert torch.allclose(maps, expected[:2, :, :2].sum(-1).reshape(2, 4, 6), atol=TOL)
    assert cap.token_maps(3, batch_index=1).shape == (1, 4, 6)
    assert upsample_map(maps, (32, 48)).shape == (2, 1, 32, 48)


def test_bfloat16_accumulates_in_float32(model):
    bf16 = PixArtTransformer(model.config, dtype=torch.bfloat16).eval()
    bf16.load_state_dict(model.state_dict())
    x, timestep, context, mask = inputs(model, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        plain = bf16(x, timestep, context, mask)
        with bf16.capture_attention() as cap:
            out = bf16(x, timestep, context, mask)
    probs = cap.cross_attention()
    assert torch.equal(out, plain) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(-1), torch.ones(2, 24), atol=TOL)
    assert torch.all(probs[:, :, 9:] == 0)


def test_capture_refuses_bad_use(model):
    with pytest.raises(ValueError, match="blocks"):
        model.capture_attention(blocks=[DEPTH])
    with model.capture_attention() as cap:
        with pytest.raises(ValueError, match="no cross-attention"):
            cap.cross_attention()
        with pytest.raises(RuntimeError, match="already being captured"):
            with model.capture_attention(blocks=[0]):
                pass
        x, timestep, context, mask = inputs(model, 9)
        with torch.no_grad():
            model(x, timestep, context, mask)
            with pytest.raises(ValueError, match="open a new capture"):
                model(x[:1], timestep[:1], context[:1], mask[:1])
    assert all(block.cross_attn.recorder is None for block in model.blocks)
