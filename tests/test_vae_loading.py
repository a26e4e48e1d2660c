"""pixart_core.vae loading: key conversion, config inference, determinism of the tiny files, and clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pixart_core.checkpoint_io import StateDictReader
from pixart_core.testing.files import save_safetensors, save_torch
from pixart_core.errors import CheckpointError
from pixart_core.testing.vae import random_vae_state_dict, tiny_vae_config, write_tiny_vaes
from pixart_core.vae import AutoencoderKL, VAEConfig, load_vae
from pixart_core.vae.convert import ldm_key, legacy_diffusers_key, to_ldm_state_dict


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_vaes(tmp_path_factory.mktemp("vae_tiny"))


@pytest.fixture(scope="module")
def ldm_state(tiny):
    with StateDictReader(tiny["sd_ldm_safetensors"]) as reader:
        return {k: reader.get(k) for k in reader.keys()}


def test_ldm_key_map_matches_known_names():
    assert ldm_key("decoder.up_blocks.0.upsamplers.0.conv.weight", 4) == "decoder.up.3.upsample.conv.weight"
    assert ldm_key("decoder.up_blocks.3.resnets.2.conv_shortcut.bias", 4) == "decoder.up.0.block.2.nin_shortcut.bias"
    assert ldm_key("encoder.down_blocks.1.downsamplers.0.conv.bias", 4) == "encoder.down.1.downsample.conv.bias"
    assert ldm_key("encoder.mid_block.resnets.1.norm2.weight", 4) == "encoder.mid.block_2.norm2.weight"
    assert ldm_key("decoder.mid_block.attentions.0.to_out.0.weight", 4) == "decoder.mid.attn_1.proj_out.weight"
    assert ldm_key("encoder.mid_block.attentions.0.group_norm.bias", 4) == "encoder.mid.attn_1.norm.bias"
    assert ldm_key("encoder.conv_norm_out.weight", 4) == "encoder.norm_out.weight"
    assert ldm_key("post_quant_conv.bias", 4) == "post_quant_conv.bias"
    assert legacy_diffusers_key("decoder.mid_block.attentions.0.to_k.bias") == "decoder.mid_block.attentions.0.key.bias"
    assert legacy_diffusers_key("decoder.mid_block.attentions.0.to_out.0.weight") == \
        "decoder.mid_block.attentions.0.proj_attn.weight"


def test_ldm_names_are_those_of_the_original_sd_vae():
    """Full-size SD config: the LDM names and shapes we expect for the real `vae-ft-mse` / `sdxl_vae` files."""
    with torch.device("meta"):
        state = AutoencoderKL(VAEConfig()).state_dict()
    ldm = to_ldm_state_dict(state, 4)
    assert len(ldm) == 248  # tensors in the original SD VAE checkpoint (encoder, decoder, quant convs)
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert ldm["decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    assert ldm["decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)
    assert ldm["encoder.down.3.block.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert "encoder.down.3.downsample.conv.weight" not in ldm and "decoder.up.0.upsample.conv.weight" not in ldm
    assert sum(t.numel() for t in state.values()) == 83_653_863  # the SD/SDXL VAE parameter count


def test_tiny_files_are_deterministic(tmp_path, tiny):
    again = write_tiny_vaes(tmp_path)
    for name in ("sd_ldm_safetensors", "sdxl_diffusers_single"):
        assert again[name].read_bytes() == tiny[name].read_bytes()
    a = random_vae_state_dict(tiny_vae_config(), 0)
    b = random_vae_state_dict(tiny_vae_config(), 1)
    assert all(torch.equal(a[k], a[k].half().float()) for k in a)  # float16-exact
    assert not torch.equal(a["encoder.conv_norm_out.weight"], torch.ones(64))  # norms are randomised too
    assert not torch.equal(a["decoder.conv_out.weight"], b["decoder.conv_out.weight"])


def test_pipeline_folder_with_vae_subfolder(tmp_path, tiny):
    shutil.copytree(tiny["sdxl_diffusers"], tmp_path / "vae")
    (tmp_path / "model_index.json").write_text("{}")
    assert load_vae(tmp_path).scaling_factor == 0.13025


def test_config_inference_from_shapes(tmp_path):
    cfg = VAEConfig(block_out_channels=(32, 64), layers_per_block=2, latent_channels=8, out_channels=4,
                    mid_block_add_attention=False)
    with torch.device("meta"):
        shapes = AutoencoderKL(cfg).state_dict()
    state = {k: torch.zeros(v.shape) for k, v in shapes.items()}
    save_safetensors(to_ldm_state_dict(state, 2), tmp_path / "two_level.safetensors")
    got = load_vae(tmp_path / "two_level.safetensors").config
    assert (got.block_out_channels, got.layers_per_block, got.latent_channels, got.out_channels) == \
        ((32, 64), 2, 8, 4)
    assert not got.mid_block_add_attention and got.downscale == 2 and got.scaling_factor is None


def test_modelspec_metadata_names_sdxl(tmp_path, ldm_state):
    path = tmp_path / "vae.safetensors"
    save_safetensors(ldm_state, path, metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base/vae"})
    assert load_vae(path).scaling_factor == 0.13025
    full = tmp_path / "sdxl_checkpoint.safetensors"
    save_safetensors({**{f"first_stage_model.{k}": v for k, v in ldm_state.items()},
                      "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(8)}, full)
    assert load_vae(full).scaling_factor == 0.13025  # SDXL checkpoints carry conditioner.embedders.*


@pytest.mark.parametrize("keys,message", [
    ({"x_embedder.proj.weight": (8, 4, 2, 2), "blocks.0.attn.qkv.weight": (24, 8)}, "PixArt"),
    ({"encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8), "shared.weight": (32, 8)}, "T5"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)}, "without VAE"),
    ({"foo.weight": (3,)}, "no VAE weights"),
])
def test_wrong_model_files_are_named(tmp_path, keys, message):
    path = tmp_path / "not_a_vae.safetensors"
    save_safetensors({k: torch.zeros(s) for k, s in keys.items()}, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_vae(path)
    assert str(path) in str(err.value)


def test_missing_unexpected_and_misshaped_keys(tmp_path, ldm_state):
    missing = dict(ldm_state)
    del missing["decoder.up.2.block.1.conv2.bias"]
    save_safetensors(missing, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"missing.*decoder\.up\.2\.block\.1\.conv2\.bias"):
        load_vae(tmp_path / "missing.safetensors")

    extra = {**ldm_state, "decoder.up.0.block.0.temb_proj.weight": torch.zeros(4, 4)}
    save_safetensors(extra, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match="unexpected.*temb_proj"):
        load_vae(tmp_path / "extra.safetensors")

    misshaped = {**ldm_state, "decoder.mid.attn_1.v.weight": torch.zeros(64, 32, 1, 1)}
    save_safetensors(misshaped, tmp_path / "misshaped.safetensors")
    with pytest.raises(CheckpointError, match=r"attn_1\.v\.weight.*shape"):
        load_vae(tmp_path / "misshaped.safetensors")


def test_truncated_and_missing_files(tmp_path, tiny):
    data = tiny["sd_ldm_safetensors"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(tmp_path / "cut.safetensors")
    pt = tiny["sd_ldm_pt"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(pt[: len(pt) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_vae(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_vae(tmp_path / "nope.safetensors")


def test_pickles_with_python_objects_are_refused(tmp_path, ldm_state):
    save_torch({"state_dict": ldm_state, "optimizer": {"lr": torch.optim.SGD}}, tmp_path / "objects.ckpt")
    with pytest.raises(CheckpointError, match="objects.ckpt"):
        load_vae(tmp_path / "objects.ckpt")


def test_bad_diffusers_folders(tmp_path, tiny):
    folder = tmp_path / "transformer"
    shutil.copytree(tiny["sd_diffusers"], folder)
    (folder / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    with pytest.raises(CheckpointError, match="PixArtTransformer2DModel"):
        load_vae(folder)

    wider = tmp_path / "wider"
    shutil.copytree(tiny["sd_diffusers"], wider)
    config = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**config, "block_out_channels": [32, 32, 64, 96]}))
    with pytest.raises(CheckpointError, match="do not match.*missing.*conv_shortcut"):
        load_vae(wider)
    (wider / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(CheckpointError, match=r"conv_out\.weight' has shape \(8, 64, 3, 3\), expected \(16"):
        load_vae(wider)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_vae(empty)
