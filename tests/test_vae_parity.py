"""pixart_core.vae numerics against diffusers' AutoencoderKL on tiny random VAEs, in every file layout."""

from __future__ import annotations

import pytest
import torch

from pixart_core.testing.vae import write_tiny_vaes
from pixart_core.vae import SD_SCALING_FACTOR, SDXL_SCALING_FACTOR, load_vae

diffusers = pytest.importorskip("diffusers")
FP32_TOL = 1e-4  # max abs diff allowed against diffusers at float32 (measured ~1e-6 to 1e-5)

SD_FILES = ["sd_diffusers", "sd_legacy_diffusers", "sd_ldm_safetensors", "sd_ldm_pt", "sd_vae_prefixed",
            "sd_full_checkpoint"]
SDXL_FILES = ["sdxl_diffusers", "sdxl_ldm_safetensors", "sdxl_diffusers_single"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_vaes(tmp_path_factory.mktemp("vae_tiny"))


@pytest.fixture(scope="module")
def references(tiny):
    """diffusers models loaded from the diffusers folders (the same weights every other file holds)."""
    return {family: diffusers.AutoencoderKL.from_pretrained(tiny[f"{family}_diffusers"],
                                                            torch_dtype=torch.float32).eval()
            for family in ("sd", "sdxl")}


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(11)
    image = torch.rand(2, 3, 32, 48, generator=g) * 2 - 1  # [B, 3, H, W], non-square, batch 2
    latent = torch.randn(2, 4, 4, 5, generator=g)  # [B, 4, h, w], non-square
    return image, latent


@pytest.fixture(scope="module")
def expected(references, inputs):
    image, latent = inputs
    out = {}
    with torch.no_grad():
        for family, ref in references.items():
            out[family] = (ref.encode(image).latent_dist.mean, ref.decode(latent).sample)
    return out


@pytest.fixture(scope="module")
def sd_single(tiny):
    return load_vae(tiny["sd_ldm_safetensors"])


@pytest.mark.parametrize("name", ["sd_diffusers", "sd_ldm_safetensors", "sdxl_ldm_safetensors"])
def test_encode_decode_match_diffusers(tiny, inputs, expected, name):
    """Our loader (folder or LDM single file) vs diffusers loading the diffusers folder of the same weights."""
    family = "sdxl" if name.startswith("sdxl") else "sd"
    image, latent = inputs
    want_latent, want_image = expected[family]
    vae = load_vae(tiny[name])
    with torch.no_grad():
        got_latent = vae.encode(image)  # [2, 4, 4, 6]
        got_image = vae.decode(latent)  # [2, 3, 32, 40]
    assert got_latent.shape == (2, 4, 4, 6) and got_image.shape == (2, 3, 32, 40)
    assert (got_latent - want_latent).abs().max().item() <= FP32_TOL
    assert (got_image - want_image).abs().max().item() <= FP32_TOL
    assert want_image.abs().max() > 0.5 and want_latent.abs().max() > 0.5  # not near-zero tensors


@pytest.mark.parametrize("name", SD_FILES + SDXL_FILES)
def test_every_layout_loads_the_diffusers_weights(tiny, references, name):
    """Each layout (LDM, prefixed, full checkpoint, legacy names, .pt/.bin) yields exactly diffusers' parameters."""
    family = "sdxl" if name.startswith("sdxl") else "sd"
    ours = load_vae(tiny[name]).state_dict()
    theirs = references[family].state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_tiny_ldm_files_match_diffusers_single_file_converter(tiny, references):
    """diffusers' own LDM converter reads our tiny LDM files to the diffusers-folder weights (layout is real)."""
    want = references["sd"].state_dict()
    for name in ("sd_ldm_safetensors", "sd_full_checkpoint", "sd_vae_prefixed"):
        converted = diffusers.AutoencoderKL.from_single_file(
            str(tiny[name]), config=str(tiny["sd_diffusers"]), torch_dtype=torch.float32).state_dict()
        assert converted.keys() == want.keys()
        assert max((converted[k] - want[k]).abs().max().item() for k in want) == 0.0


def test_sample_uses_generator_like_diffusers(sd_single, references, inputs, expected):
    image, _ = inputs
    with torch.no_grad():
        a = sd_single.encode(image, sample=True, generator=torch.Generator().manual_seed(5))
        b = sd_single.encode(image, sample=True, generator=torch.Generator().manual_seed(5))
        want = references["sd"].encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert (a - expected["sd"][0]).abs().max() > 1e-2  # a sample, not the mean
    assert (a - want).abs().max().item() <= FP32_TOL


def test_config_and_scaling_factor(tiny):
    sd = load_vae(tiny["sd_diffusers"])
    assert sd.config.block_out_channels == (32, 32, 64, 64) and sd.config.layers_per_block == 1
    assert sd.config.latent_channels == 4 and sd.config.norm_num_groups == 32
    assert sd.config.in_channels == sd.config.out_channels == 3 and sd.config.shift_factor is None
    assert sd.scaling_factor == SD_SCALING_FACTOR and not sd.config.force_upcast
    assert load_vae(tiny["sdxl_diffusers"]).scaling_factor == SDXL_SCALING_FACTOR
    bare = load_vae(tiny["sd_ldm_safetensors"])
    assert bare.scaling_factor is None  # nothing in a bare single file names its family
    assert bare.config.block_out_channels == (32, 32, 64, 64) and bare.config.layers_per_block == 1
    assert load_vae(tiny["sd_full_checkpoint"]).scaling_factor == SD_SCALING_FACTOR  # cond_stage_model.* -> SD
    assert load_vae(tiny["sd_ldm_safetensors"], scaling_factor=0.13025).scaling_factor == SDXL_SCALING_FACTOR


def test_bf16_load_runs_in_bf16(tiny, sd_single, inputs):
    image, latent = inputs
    vae32 = sd_single
    vae16 = load_vae(tiny["sd_ldm_safetensors"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in vae16.parameters())
    with torch.no_grad():
        want = vae32.decode(latent)
        got = vae16.decode(latent.bfloat16())
    assert got.dtype == torch.bfloat16
    rel = (got.float() - want).abs().mean() / want.abs().mean()
    assert rel < 0.05, f"bf16 decode differs from fp32 by {rel:.3f} (relative mean abs)"


def test_fp16_keeps_fp32_weights_when_force_upcast(tiny, inputs):
    _, latent = inputs
    sdxl = load_vae(tiny["sdxl_diffusers"], dtype=torch.float16)  # force_upcast true in its config.json
    assert all(p.dtype == torch.float32 for p in sdxl.parameters())
    with torch.no_grad():
        out = sdxl.decode(latent.half())
    assert out.dtype == torch.float16
    sd = load_vae(tiny["sd_diffusers"], dtype=torch.float16)  # force_upcast false in its config.json
    assert all(p.dtype == torch.float16 for p in sd.parameters())
    assert load_vae(tiny["sd_ldm_safetensors"], dtype=torch.float16, force_upcast=False).dtype == torch.float16
