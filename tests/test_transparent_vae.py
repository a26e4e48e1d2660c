"""pixart_core.rgba's LayerDiffuse transparent decoder/encoder against a reference UNet1024 that this test assembles
from diffusers' UNet blocks the way upstream does (lllyasviel/sd-forge-layerdiffuse `lib_layerdiffusion/models.py`,
`UNet1024` and `LatentTransparencyOffsetEncoder`), loading files saved under the released key names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixart_core.errors import CheckpointError
from pixart_core.rgba import (FAMILIES, RELEASED_FILES, TransparentUNet, family_from_name,
                              grey_composite, load_transparent_decoder, load_transparent_encoder, pad_rgb)
from pixart_core.rgba.transparent_encoder import LatentTransparencyOffsetEncoder
from pixart_core.testing.files import save_safetensors
from pixart_core.testing.transparent_vae import (TINY_DECODER_WIDTHS, encoder_state_dict, random_state_dict,
                                                 write_tiny_transparent_vaes)

blocks = pytest.importorskip("diffusers.models.unets.unet_2d_blocks")
RELEASED_WIDTHS = (32, 32, 64, 128, 256, 512, 512)
DOWN_TYPES = ("DownBlock2D",) * 4 + ("AttnDownBlock2D",) * 3
UP_TYPES = ("AttnUpBlock2D",) * 3 + ("UpBlock2D",) * 4
FP32_TOL = 1e-4


class ReferenceUNet1024(nn.Module):
    """Upstream's UNet1024 topology from diffusers blocks: no time embedding, 4 groups, head size 8, latent added
    before down block 3 through a 1x1 conv (random here, zero-initialised upstream)."""

    def __init__(self, widths=RELEASED_WIDTHS):
        super().__init__()
        common = dict(temb_channels=None, resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=4,
                      attention_head_dim=8, resnet_time_scale_shift="default", dropout=0.0)
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        self.latent_conv_in = nn.Conv2d(4, widths[2], 1)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(DOWN_TYPES):
            self.down_blocks.append(blocks.get_down_block(
                kind, num_layers=2, in_channels=widths[max(i - 1, 0)], out_channels=widths[i],
                add_downsample=i < 6, downsample_padding=1, downsample_type="conv", **common))
        self.mid_block = blocks.UNetMidBlock2D(in_channels=widths[-1], output_scale_factor=1, attn_groups=None,
                                               add_attention=True, **common)
        back = list(reversed(widths))
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(UP_TYPES):
            self.up_blocks.append(blocks.get_up_block(
                kind, num_layers=3, in_channels=back[min(i + 1, 6)], out_channels=back[i],
                prev_output_channel=back[max(i - 1, 0)], add_upsample=i < 6, upsample_type="conv", **common))
        self.conv_norm_out = nn.GroupNorm(4, widths[0], eps=1e-5)
        self.conv_out = nn.Conv2d(widths[0], 4, 3, padding=1)

    def forward(self, x, latent):
        injected = self.latent_conv_in(latent)
        h = self.conv_in(x)
        saved = (h,)
        for i, block in enumerate(self.down_blocks):
            if i == 3:
                h = h + injected
            h, outs = block(hidden_states=h, temb=None)
            saved += outs
        h = self.mid_block(h, None)
        for block in self.up_blocks:
            n = len(block.resnets)
            h, saved = block(h, saved[-n:], None), saved[:-n]
        return self.conv_out(torch.nn.functional.silu(self.conv_norm_out(h)))


class ReferenceOffsetEncoder(nn.Module):
    """Upstream's encoder: nine 3x3 convs with SiLU between them, as `blocks`."""

    def __init__(self):
        super().__init__()
        spec = [(4, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2),
                (256, 256, 1), (256, 4, 1)]
        layers = []
        for cin, cout, stride in spec:
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.SiLU()]
        self.blocks = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.blocks(x)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The networks here are tiny: one thread is fastest, and immune to a busy machine's oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """(reference in fp32 with the file's weights, path of an fp16 file under the released key names)."""
    reference = ReferenceUNet1024(TINY_DECODER_WIDTHS).eval()
    state = random_state_dict(reference, seed=3)  # fp16
    path = tmp_path_factory.mktemp("ld") / "vae_transparent_decoder.safetensors"
    save_safetensors(state, path)
    reference.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return reference, path, state


def _inputs(height, width, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=g)  # [B, 3, H, W]
    latent = torch.randn(batch, 4, height // 8, width // 8, generator=g) * 5  # [B, 4, H/8, W/8], raw VAE scale
    return image, latent


def test_parameter_counts_and_released_key_names():
    with torch.device("meta"):
        ours, reference = TransparentUNet(), ReferenceUNet1024()
        encoder = LatentTransparencyOffsetEncoder()
    assert sum(p.numel() for p in ours.parameters()) == 104_104_804
    assert _shapes(ours) == _shapes(reference)
    assert sum(p.numel() for p in encoder.parameters()) == 1_181_764
    assert sorted(encoder.state_dict()) == sorted(f"blocks.{i}.{p}" for i in range(0, 17, 2) for p in ("weight", "bias"))


@pytest.mark.parametrize("size", [(64, 64), (72, 88)])
def test_decoder_matches_reference(tiny_reference, size):
    reference, path, _ = tiny_reference
    dec = load_transparent_decoder(path, dtype=torch.float32)
    assert dec.unet.config.widths == TINY_DECODER_WIDTHS and dec.dtype == torch.float32
    image, latent = _inputs(*size)
    pad_h, pad_w = -size[0] % 64, -size[1] % 64
    padded_image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
    padded_latent = torch.nn.functional.pad(latent, (0, pad_w // 8, 0, pad_h // 8), mode="replicate")
    with torch.no_grad():
        expected = reference(padded_image, padded_latent)[:, :, :size[0], :size[1]]
        got = dec(image, latent)
    assert got.shape == (1, 4, *size)
    assert (got - expected).abs().max() < FP32_TOL
    assert torch.equal(dec.estimate(image, latent, tta=False), got.clamp(0, 1))


def test_tta_is_the_median_over_the_eight_dihedral_transforms(tiny_reference):
    reference, path, _ = tiny_reference
    dec = load_transparent_decoder(path, dtype=torch.float32)
    image, latent = _inputs(64, 128, seed=1, batch=1)
    outputs = []
    with torch.no_grad():
        for mirrored in (False, True):
            for quarter_turns in range(4):
                x, z = (image.flip(-1), latent.flip(-1)) if mirrored else (image, latent)
                for _ in range(quarter_turns):  # one counter-clockwise quarter turn each: transpose, then flip rows
                    x, z = x.transpose(-2, -1).flip(-2), z.transpose(-2, -1).flip(-2)
                y = reference(x.contiguous(), z.contiguous()).clamp(0, 1)
                for _ in range(quarter_turns):  # undo: flip rows, then transpose
                    y = y.flip(-2).transpose(-2, -1)
                outputs.append(y.flip(-1) if mirrored else y)
    expected = torch.stack(outputs).sort(dim=0).values[3]  # the lower middle of 8 values, as torch.median
    got = dec.estimate(image, latent, tta=True)
    assert got.shape == (1, 4, 64, 128) and got.min() >= 0 and got.max() <= 1
    assert (got - expected).abs().max() < FP32_TOL


def test_encoder_matches_reference(tmp_path):
    reference = ReferenceOffsetEncoder().eval()
    state = encoder_state_dict(seed=5)
    reference.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    path = tmp_path / "vae_transparent_encoder.safetensors"
    save_safetensors(state, path)
    enc = load_transparent_encoder(path)
    x = torch.rand(2, 4, 48, 40, generator=torch.Generator().manual_seed(2))  # [B, 4, H, W]
    with torch.no_grad():
        assert (enc(x) - reference(x)).abs().max() < FP32_TOL
    assert enc(x).shape == (2, 4, 6, 5) and enc.offset_scale == 1.0 and enc.dtype == torch.float32


def test_wrong_files_are_refused_naming_the_file(tiny_reference, tmp_path):
    _, _, state = tiny_reference
    cases = {
        "missing.safetensors": ({k: v for k, v in state.items() if k != "mid_block.attentions.0.to_q.weight"},
                                "mid_block.attentions.0.to_q.weight"),
        "extra.safetensors": ({**state, "up_blocks.0.attentions.3.to_q.weight": torch.zeros(2)},
                              "up_blocks.0.attentions.3.to_q.weight"),
        "encoder_as_decoder.safetensors": (encoder_state_dict(), "load_transparent_encoder"),
        "pixart.safetensors": ({"x_embedder.proj.weight": torch.zeros(2), "t_block.1.weight": torch.zeros(2)},
                               "PixArt"),
    }
    for name, (tensors, needle) in cases.items():
        save_safetensors(tensors, tmp_path / name)
        with pytest.raises(CheckpointError) as err:
            load_transparent_decoder(tmp_path / name)
        message = str(err.value)
        assert name in message and needle in message and "\n" not in message
    with pytest.raises(CheckpointError, match="decoder.safetensors.*load_transparent_decoder"):
        load_transparent_encoder(_saved(tmp_path / "decoder.safetensors", state))
    broken = encoder_state_dict()
    broken.pop("blocks.8.bias")
    with pytest.raises(CheckpointError, match=r"enc\.safetensors.*missing keys 'blocks\.8\.bias'"):
        load_transparent_encoder(_saved(tmp_path / "enc.safetensors", broken))


def _saved(path, tensors):
    save_safetensors(tensors, path)
    return path


def test_tiny_files_round_trip_through_the_api(tmp_path):
    """Encode an RGBA picture to an offset, put it into a latent as each family's convention says, decode."""
    files = write_tiny_transparent_vaes(tmp_path)
    assert sorted(p.name for p in files.values()) == sorted(RELEASED_FILES.values())
    g = torch.Generator().manual_seed(4)
    rgb = torch.rand(1, 3, 64, 64, generator=g)  # [B, 3, H, W]
    alpha = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float().repeat_interleave(8, 2).repeat_interleave(8, 3)
    mean = torch.randn(1, 4, 8, 8, generator=g)  # [B, 4, h, w], the ordinary VAE's posterior (stand-in)
    std = torch.rand(1, 4, 8, 8, generator=g) * 0.1
    for family, expected_scale in (("sdxl", 1.0), ("sd15", 1.0), ("sdxl-diffusers", 300.0)):
        enc = load_transparent_encoder(files[RELEASED_FILES[("encoder", family)]])
        dec = load_transparent_decoder(files[RELEASED_FILES[("decoder", family)]])
        assert (enc.family, dec.family) == (family, family)
        assert enc.latent_space == dec.latent_space == FAMILIES[family].latent_space
        assert enc.offset_scale == expected_scale and dec.latent_scale == 1.0
        offset = enc.encode(rgb, alpha)  # [B, 4, h, w]
        assert offset.shape == (1, 4, 8, 8)
        raw = enc.offset_latent(mean, std, offset)  # raw VAE latent
        assert torch.allclose(raw, mean + std * offset * expected_scale)
        image = grey_composite(rgb, alpha)  # stand-in for the ordinary VAE decode of `raw`
        with_offset = dec.estimate(image, raw * dec.latent_scale, tta=False)
        without = dec.estimate(image, mean * dec.latent_scale, tta=False)
        assert with_offset.shape == (1, 4, 64, 64) and 0 <= with_offset.min() and with_offset.max() <= 1
        assert not torch.equal(with_offset, without)  # the offset reaches the decoder through the latent path


def test_family_from_name_and_default_dtype(tmp_path):
    assert family_from_name("models/vae_transparent_decoder.safetensors").name == "sdxl"
    assert family_from_name("layer_sd15_vae_transparent_encoder.safetensors").name == "sd15"
    assert family_from_name("ld_diffusers_sdxl_vae_transparent_decoder.safetensors").name == "sdxl-diffusers"
    assert family_from_name("mystery.safetensors") is None
    path = _saved(tmp_path / "mystery.safetensors", encoder_state_dict())
    assert load_transparent_encoder(path).offset_scale == 1.0
    assert load_transparent_encoder(path, offset_scale=300.0).offset_scale == 300.0
    half = load_transparent_encoder(path, dtype=torch.float16)
    assert half.dtype == torch.float16 and half(torch.rand(1, 4, 16, 16)).dtype == torch.float32


def test_pad_rgb_keeps_opaque_colour_and_bleeds_into_transparency():
    rgb = torch.zeros(1, 3, 32, 40)
    rgb[:, 0, :, :20] = 1.0  # red on the left, black (ignored) on the right
    alpha = torch.zeros(1, 1, 32, 40)
    alpha[..., :20] = 1.0
    padded = pad_rgb(rgb, alpha)
    assert torch.allclose(padded[..., :20], rgb[..., :20], atol=1e-6)
    assert padded[:, 0, :, 30:].min() > 0.99 and padded[:, 1:, :, 30:].abs().max() < 1e-6
    flat = torch.full((2, 3, 17, 23), 0.25)
    assert torch.allclose(pad_rgb(flat, torch.rand(2, 1, 17, 23)), flat, atol=1e-5)


def test_bad_inputs_are_refused(tiny_reference):
    dec = load_transparent_decoder(tiny_reference[1])
    image, latent = _inputs(64, 64, batch=2)
    with pytest.raises(ValueError, match="8x the latent size"):
        dec(image[:, :, :60], latent)
    with pytest.raises(ValueError, match="latent must be"):
        dec(image, latent[:, :3])
    with pytest.raises(ValueError, match="batch"):
        dec(image[:1], latent)
