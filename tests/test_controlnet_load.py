"""load_controlnet: every layout of the PixArt-δ ControlNet branch, dtypes, and the errors for bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import pixart_core
from pixart_core import CheckpointError, load_controlnet, load_transformer
from pixart_core.controlnet import PixArtControlNet
from pixart_core.testing.controlnet import CONTROLNET_NAMES, random_controlnet_state_dict, write_controlnet
from pixart_core.testing.controlnet import write_controlnet_testbed
from pixart_core.testing.files import save_safetensors, save_torch


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    return write_controlnet_testbed(tmp_path_factory.mktemp("controlnet_load"), depth=4, block_counts=(2,))


def test_every_layout_loads_the_same_branch(testbed):
    cfg, paths = testbed
    nets = {name: load_controlnet(paths[f"2-blocks/{name}"]) for name in CONTROLNET_NAMES}
    reference = nets["official.pth"].state_dict()
    assert all(k.startswith("controlnet.") for k in reference)
    assert "controlnet.0.before_proj.weight" in reference and "controlnet.1.before_proj.weight" not in reference
    for name, net in nets.items():
        assert isinstance(net, PixArtControlNet) and not net.training
        assert (net.num_blocks, net.hidden_size, net.num_heads) == (2, cfg.hidden_size, cfg.num_heads), name
        assert net.source == str(paths[f"2-blocks/{name}"])
        state = net.state_dict()
        assert state.keys() == reference.keys(), name
        assert all(torch.equal(state[k], reference[k]) for k in reference), name
        assert net.summary.startswith("PixArt ControlNet, 2 blocks, width 144, 2 heads ("), net.summary
    assert "official combined layout" in nets["official-combined.pth"].summary
    assert "diffusers layout" in nets["diffusers"].summary
    assert pixart_core.load_controlnet is pixart_core.controlnet.load_controlnet


def test_the_single_diffusers_file_inside_its_folder_reads_config_json(testbed):
    _, paths = testbed
    net = load_controlnet(paths["2-blocks/diffusers"] / "diffusion_pytorch_model.safetensors")
    assert net.num_blocks == 2 and "diffusers" in net.layout


def test_dtype_and_device(testbed, tmp_path):
    cfg, _ = testbed
    sd = {k: v.half() for k, v in random_controlnet_state_dict(cfg, 1, seed=3).items()}
    path = write_controlnet(sd, "official.safetensors", tmp_path / "half.safetensors")
    kept = load_controlnet(path)  # dtype=None keeps the file's dtype
    assert {p.dtype for p in kept.parameters()} == {torch.float16}
    as_float = load_controlnet(path, dtype=torch.float32, device="cpu")
    assert {p.dtype for p in as_float.parameters()} == {torch.float32}
    assert torch.equal(as_float.controlnet[0].after_proj.weight, sd["controlnet.0.after_proj.weight"].float())
    assert {p.device.type for p in as_float.parameters()} == {"cpu"}


def test_load_transformer_on_the_combined_file_keeps_returning_the_base(testbed):
    _, paths = testbed
    base = load_transformer(paths["base.pth"])
    combined = load_transformer(paths["2-blocks/official-combined.pth"])
    assert combined.detection.layout == "controlnet-official"
    assert "ControlNet official layout, base model only" in combined.detection.summary()
    state, expected = combined.state_dict(), base.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def test_load_transformer_on_a_branch_alone_points_to_load_controlnet(testbed):
    _, paths = testbed
    for name in ("official.safetensors", "diffusers.safetensors"):
        with pytest.raises(CheckpointError, match="load_controlnet"):
            load_transformer(paths[f"2-blocks/{name}"])


@pytest.mark.parametrize("base", ["base.pth", "base-diffusers"])
def test_a_base_only_file_is_named(testbed, base):
    _, paths = testbed
    with pytest.raises(CheckpointError, match="holds a PixArt transformer but no ControlNet branch") as err:
        load_controlnet(paths[base])
    assert str(paths[base]) in str(err.value)


def test_a_truncated_file_is_named(testbed, tmp_path):
    _, paths = testbed
    for name in ("official.safetensors", "diffusers.safetensors"):
        cut = tmp_path / name
        data = paths[f"2-blocks/{name}"].read_bytes()
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(CheckpointError, match="truncated") as err:
            load_controlnet(cut)
        assert str(cut) in str(err.value)
    cut = tmp_path / "official.pth"
    data = paths["2-blocks/official.pth"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(cut)):
        load_controlnet(cut)


def test_missing_blocks_and_keys_are_named(testbed, tmp_path):
    cfg, _ = testbed
    sd = random_controlnet_state_dict(cfg, 3, seed=4)
    gap = {k: v for k, v in sd.items() if not k.startswith("controlnet.1.")}
    save_safetensors(gap, tmp_path / "gap.safetensors")
    with pytest.raises(CheckpointError, match=r"blocks \[1\] are missing"):
        load_controlnet(tmp_path / "gap.safetensors")
    partial = {k: v for k, v in sd.items() if k != "controlnet.2.copied_block.mlp.fc2.weight"}
    save_torch({"state_dict": partial}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial\.pth.*missing 'controlnet\.2\.copied_block\.mlp\.fc2\.weight'"):
        load_controlnet(tmp_path / "partial.pth")
    no_before = {k: v for k, v in sd.items() if "before_proj" not in k}
    save_safetensors(no_before, tmp_path / "no_before.safetensors")
    with pytest.raises(CheckpointError, match="before_proj"):
        load_controlnet(tmp_path / "no_before.safetensors")


def test_a_diffusers_folder_with_fewer_blocks_than_its_config_is_truncated(testbed, tmp_path):
    _, paths = testbed
    folder = tmp_path / "diffusers"
    shutil.copytree(paths["2-blocks/diffusers"], folder)
    (folder / "config.json").write_text(json.dumps({"_class_name": "PixArtControlNetAdapterModel", "num_layers": 13}))
    with pytest.raises(CheckpointError, match="config.json says 13 ControlNet blocks but the weights hold 2"):
        load_controlnet(folder)


def test_unknown_keys_are_named(testbed, tmp_path):
    cfg, _ = testbed
    sd = random_controlnet_state_dict(cfg, 1, seed=5)
    save_safetensors({**sd, "controlnet.0.copied_block.attn.extra.weight": torch.zeros(2)}, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="extra"):
        load_controlnet(tmp_path / "a.safetensors")
    save_safetensors({**sd, "vae.decoder.conv_in.weight": torch.zeros(2)}, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match=r"unknown keys next to the ControlNet branch: 'vae\.decoder"):
        load_controlnet(tmp_path / "b.safetensors")
    save_safetensors({**sd, "controlnet.0.mystery.weight": torch.zeros(2)}, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="unknown keys in ControlNet block 0"):
        load_controlnet(tmp_path / "c.safetensors")


def test_other_models_are_not_controlnets(tmp_path):
    save_safetensors({"decoder.up_blocks.0.resnets.0.conv1.weight": torch.zeros(2)}, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="not a PixArt ControlNet.*VAE"):
        load_controlnet(tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_controlnet(tmp_path / "absent.pth")


def test_a_fresh_branch_is_zero_initialised_and_copies_the_base(testbed):
    _, paths = testbed
    base = load_transformer(paths["base.pth"])
    net = PixArtControlNet.from_transformer(base, num_blocks=3)
    assert net.num_blocks == 3 and net.controlnet[0].before_proj is not None and net.controlnet[1].before_proj is None
    for block in net.controlnet:
        assert not block.after_proj.weight.any() and not block.after_proj.bias.any()
    assert torch.equal(net.controlnet[2].copied_block.mlp.fc1.weight, base.blocks[2].mlp.fc1.weight)
    with pytest.raises(ValueError, match="between 1 and 3"):
        PixArtControlNet.from_transformer(base, num_blocks=4)
    with pytest.raises(TypeError, match="controls="):
        net(torch.zeros(1))
