"""PixArtTransformer(controls=...) against a reference assembled here from diffusers' PixArt blocks.

The reference is diffusers' `PixArtTransformer2DModel` (the base, loaded from its diffusers folder) whose blocks
get the ControlNet residuals through forward pre-hooks, with control blocks that are diffusers
`BasicTransformerBlock`s loaded strictly from the diffusers-layout file, wired as the official
`ControlPixArtMSHalf.forward` (PixArt-alpha `diffusion/model/nets/pixart_controlnet.py`): the control latent
through the base patch embedding and position table, control block i-1 before base block i, copy 0 on
x + before_proj(c), residual = strength * after_proj(c).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pixart_core import load_controlnet, load_transformer
from pixart_core.controlnet import PixArtControlNet
from pixart_core.testing.controlnet import CONTROLNET_NAMES, write_controlnet_testbed

diffusers = pytest.importorskip("diffusers")
REL_TOL = 1e-5  # max |ours - reference| / max |reference| at float32
TOKENS = 10


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    cfg, paths = write_controlnet_testbed(tmp_path_factory.mktemp("controlnet_model"), depth=4, block_counts=(2, 3))
    base = load_transformer(paths["base.pth"])
    reference = diffusers.PixArtTransformer2DModel.from_pretrained(paths["base-diffusers"]).eval()
    return cfg, paths, base, reference


def reference_branch(cfg, path) -> list[tuple]:
    """[(before_proj or None, BasicTransformerBlock, after_proj)] from a diffusers-layout ControlNet file."""
    state = load_file(str(path))
    count = len({key.split(".")[1] for key in state})
    branch = []
    for index in range(count):
        block = diffusers.models.attention.BasicTransformerBlock(
            cfg.hidden_size, cfg.num_heads, cfg.head_dim, cross_attention_dim=cfg.hidden_size,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, attention_bias=True,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6).eval()
        inner = f"controlnet_blocks.{index}.transformer_block."
        block.load_state_dict({k[len(inner):]: v for k, v in state.items() if k.startswith(inner)}, strict=True)
        projections = []
        for name in ("before_proj", "after_proj"):
            key = f"controlnet_blocks.{index}.{name}"
            if f"{key}.weight" in state:
                linear = torch.nn.Linear(cfg.hidden_size, cfg.hidden_size)
                linear.load_state_dict({"weight": state[f"{key}.weight"], "bias": state[f"{key}.bias"]})
                projections.append(linear)
            else:
                projections.append(None)
        branch.append((projections[0], block, projections[1]))
    return branch


def reference_forward(reference, controls, x, timestep, context, mask):
    """diffusers' forward with each (branch, latent, strength) added before base blocks 1..N."""
    batch = x.shape[0]
    streams: dict[int, torch.Tensor] = {}

    def before_block(index):
        def hook(module, args, kwargs):
            hidden = args[0]  # [B, N, C], output of base block index-1
            shared = {name: kwargs[name] for name in ("encoder_hidden_states", "encoder_attention_mask", "timestep")}
            residual = torch.zeros_like(hidden)
            for k, (branch, latent, strength) in enumerate(controls):
                if index > len(branch):
                    continue
                before, block, after = branch[index - 1]
                if index == 1:  # the control latent, tiled over the batch, through the base embedding
                    c = reference.pos_embed(latent.repeat(batch // latent.shape[0], 1, 1, 1))  # [B, N, C]
                    c = hidden + before(c)
                else:
                    c = streams[k]
                streams[k] = block(c, **shared)  # [B, N, C]
                residual = residual + strength * after(streams[k])
            return (hidden + residual, *args[1:]), kwargs
        return hook

    handles = [block.register_forward_pre_hook(before_block(i), with_kwargs=True)
               for i, block in enumerate(reference.transformer_blocks) if i > 0]
    try:
        height, width = x.shape[-2:]
        conditions = {"resolution": torch.tensor([[height * 8.0, width * 8.0]] * batch),
                      "aspect_ratio": torch.tensor([[height / width]] * batch)}
        return reference(x, context, timestep, encoder_attention_mask=mask, added_cond_kwargs=conditions).sample
    finally:
        for handle in handles:
            handle.remove()


def inputs(cfg, batch: int, height: int = 8, width: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, height, width, generator=gen)  # [B, 4, H, W]
    context = torch.randn(batch, TOKENS, cfg.caption_channels, generator=gen)  # [B, L, 32]
    mask = torch.zeros(batch, TOKENS)  # [B, L]
    for row in range(batch):
        mask[row, : 3 + 2 * row] = 1
    timestep = torch.tensor([900.0 - 250 * row for row in range(batch)])  # [B]
    return x, timestep, context, mask


def latent(batch: int, height: int = 8, width: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed))  # [B', 4, H, W]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("layout", CONTROLNET_NAMES)
def test_every_layout_matches_the_reference_at_strength_half(testbed, layout):
    cfg, paths, base, reference = testbed
    net = load_controlnet(paths[f"2-blocks/{layout}"])
    branch = reference_branch(cfg, paths["2-blocks/diffusers.safetensors"])
    x, timestep, context, mask = inputs(cfg, batch=2)
    control = latent(1)
    with torch.no_grad():
        got = base(x, timestep, context, mask, controls=[(net, control, 0.5)])
        expected = reference_forward(reference, [(branch, control, 0.5)], x, timestep, context, mask)
        plain = base(x, timestep, context, mask)
    assert relative_error(got, expected) <= REL_TOL
    assert (got - plain).abs().max() > 1e-2 * plain.abs().max()  # the ControlNet really acts


def test_two_controlnets_add_their_residuals(testbed):
    cfg, paths, base, reference = testbed
    nets = [load_controlnet(paths["2-blocks/official.pth"]), load_controlnet(paths["3-blocks/diffusers"])]
    branches = [reference_branch(cfg, paths[f"{n}-blocks/diffusers.safetensors"]) for n in (2, 3)]
    x, timestep, context, mask = inputs(cfg, batch=2, seed=3)
    latents = [latent(1, seed=4), latent(2, seed=5)]
    strengths = [0.5, 1.25]
    with torch.no_grad():
        got = base(x, timestep, context, mask, controls=list(zip(nets, latents, strengths)))
        expected = reference_forward(reference, list(zip(branches, latents, strengths)), x, timestep, context, mask)
        one = base(x, timestep, context, mask, controls=[(nets[0], latents[0], 0.5)])
    assert relative_error(got, expected) <= REL_TOL
    assert (got - one).abs().max() > 1e-2 * one.abs().max()


@pytest.mark.parametrize("control_batch", [1, 2, 4])
def test_a_cfg_batch_takes_a_latent_of_1_b_or_2b(testbed, control_batch):
    """[uncond; cond] for two prompts (batch 4): the control latent is tiled over the batch."""
    cfg, paths, base, reference = testbed
    net = load_controlnet(paths["3-blocks/official.safetensors"])
    branch = reference_branch(cfg, paths["3-blocks/diffusers.safetensors"])
    x, timestep, context, mask = inputs(cfg, batch=4, height=10, width=6, seed=6)
    control = latent(control_batch, height=10, width=6, seed=7)
    with torch.no_grad():
        got = base(x, timestep, context, mask, controls=[(net, control, 0.5)])
        expected = reference_forward(reference, [(branch, control, 0.5)], x, timestep, context, mask)
    assert relative_error(got, expected) <= REL_TOL
    if control_batch == 2:  # the same as the latent written out for every row
        tiled = base(x, timestep, context, mask, controls=[(net, control.repeat(2, 1, 1, 1), 0.5)])
        assert relative_error(got, tiled) <= 1e-6


def test_strength_zero_or_no_controls_is_exactly_the_plain_model(testbed):
    cfg, paths, base, _ = testbed
    nets = [load_controlnet(paths["2-blocks/official.pth"]), load_controlnet(paths["3-blocks/official.pth"])]
    x, timestep, context, mask = inputs(cfg, batch=2)
    with torch.no_grad():
        plain = base(x, timestep, context, mask)
        assert torch.equal(base(x, timestep, context, mask, controls=[(nets[0], latent(1), 0.0)]), plain)
        assert torch.equal(base(x, timestep, context, mask, controls=[]), plain)
        assert torch.equal(base(x, timestep, context, mask, controls=None), plain)
        one = base(x, timestep, context, mask, controls=[(nets[1], latent(2), 0.5)])
        mixed = base(x, timestep, context, mask, controls=[(nets[0], latent(1), 0.0), (nets[1], latent(2), 0.5)])
        assert torch.equal(mixed, one)
        fresh = PixArtControlNet.from_transformer(base, num_blocks=3)  # zero projections: no effect
        assert torch.equal(base(x, timestep, context, mask, controls=[(fresh, latent(1), 1.0)]), plain)


def test_the_autograd_path_agrees(testbed):
    cfg, paths, base, _ = testbed
    net = load_controlnet(paths["3-blocks/official.pth"])
    x, timestep, context, mask = inputs(cfg, batch=2)
    controls = [(net, latent(1), 0.5)]
    with torch.no_grad():
        fast = base(x, timestep, context, mask, controls=controls)
    with torch.enable_grad():
        slow = base(x, timestep, context, mask, controls=controls).detach()
    assert relative_error(slow, fast) <= 1e-6


def test_bfloat16_follows_float32(testbed):
    cfg, paths, base, _ = testbed
    half_base = load_transformer(paths["base.pth"], dtype=torch.bfloat16)
    net = load_controlnet(paths["3-blocks/official.pth"])
    half_net = load_controlnet(paths["3-blocks/official.pth"], dtype=torch.bfloat16)
    x, timestep, context, mask = inputs(cfg, batch=2)
    with torch.no_grad():
        full = base(x, timestep, context, mask, controls=[(net, latent(1), 0.5)])
        half = half_base(x, timestep, context, mask, controls=[(half_net, latent(1), 0.5)])
        mixed = half_base(x, timestep, context, mask, controls=[(net, latent(1), 0.5)])  # fp32 branch, bf16 base
    assert half.dtype == mixed.dtype == torch.float32  # the output follows x
    assert relative_error(half, full) <= 3e-2 and relative_error(mixed, full) <= 3e-2


def test_mismatched_controls_are_refused_before_any_compute(testbed):
    cfg, paths, base, _ = testbed
    x, timestep, context, mask = inputs(cfg, batch=2)
    calls = []
    handle = base.x_embedder.register_forward_hook(lambda *args: calls.append(1))
    try:
        wide = PixArtControlNet(216, 3, 1, source="wide.pth")
        with pytest.raises(ValueError, match=r"wide\.pth: ControlNet width 216 with 3 heads does not match"):
            base(x, timestep, context, mask, controls=[(wide, latent(1), 0.0)])
        heads = PixArtControlNet(144, 4, 1, source="heads.safetensors")
        with pytest.raises(ValueError, match=r"heads\.safetensors: .*4 heads"):
            base(x, timestep, context, mask, controls=[(heads, latent(1), 1.0)])
        deep = PixArtControlNet(144, 2, 4, source="deep.pth")
        with pytest.raises(ValueError, match="deep.pth: 4 control blocks need a base model deeper"):
            base(x, timestep, context, mask, controls=[(deep, latent(1), 1.0)])
        net = load_controlnet(paths["2-blocks/official.pth"])
        with pytest.raises(ValueError, match="control latent"):
            base(x, timestep, context, mask, controls=[(net, latent(1, height=8, width=8), 1.0)])
        with pytest.raises(ValueError, match="control latent"):
            base(x, timestep, context, mask, controls=[(net, latent(3), 1.0)])
        with pytest.raises(ValueError, match=r"\(controlnet, control_latent, strength\)"):
            base(x, timestep, context, mask, controls=[(net, latent(1))])
        assert not calls
    finally:
        handle.remove()
