"""HED and Canny preprocessors of pixart_core.controlnet.

HED parity is checked on random weights against the reference `ControlNetHED_Apache2` of controlnet-aux 0.0.10
(`controlnet_aux/hed/__init__.py`, test-only, installed with `--no-deps`; see .ci/run), and the edge-map math
against PixArt-alpha's `diffusion/model/hed.py` (`HEDdetector.forward`), re-stated here from the reference blocks.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pixart_core.controlnet import HEDNetwork, canny_edges, hed_edges, load_hed
from pixart_core.errors import CheckpointError

REL_TOL = 1e-5  # max |ours - reference| / max |reference| at float32 (measured: 0 for side outputs, 6e-7 for edge maps)
INSTALL_HINT = "pip install --no-deps controlnet-aux==0.0.10 (test-only reference; see .ci/run)"


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.fixture(scope="module")
def reference_hed():
    """`controlnet_aux.hed` imported without the package __init__ (which pulls in torchvision/timm detectors)."""
    spec = importlib.util.find_spec("controlnet_aux")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"controlnet-aux is not installed: {INSTALL_HINT}")
    for name in ("cv2", "einops", "huggingface_hub", "PIL"):  # what controlnet_aux/hed and util.py import
        pytest.importorskip(name, reason=f"controlnet_aux.hed needs {name}")
    before = set(sys.modules)
    if "controlnet_aux" not in sys.modules:
        package = types.ModuleType("controlnet_aux")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["controlnet_aux"] = package
    module = importlib.import_module("controlnet_aux.hed")
    yield module
    for name in set(sys.modules) - before:
        if name.split(".")[0] == "controlnet_aux":
            del sys.modules[name]


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """He-scaled random weights that keep side outputs O(1), so the sigmoid is not saturated."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "norm":
                p.copy_(torch.rand(p.shape, generator=g) * 255)  # [1, 3, 1, 1]
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                fan_in = p[0].numel()
                std = (1.0 if "projection" in name else math.sqrt(2.0)) / math.sqrt(fan_in)
                std /= 128.0 if name.startswith("block1.convs.0") else 1.0  # inputs are on the 0..255 scale
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


@pytest.fixture(scope="module")
def reference_net(reference_hed):
    return _randomize(reference_hed.ControlNetHED_Apache2(), seed=7)


@pytest.fixture(scope="module")
def reference_file(reference_net, tmp_path_factory):
    """The reference network's random weights, saved as `ControlNetHED.pth` is (a plain state dict)."""
    path = tmp_path_factory.mktemp("hed_reference") / "ControlNetHED.pth"
    torch.save(reference_net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def hed_file(tmp_path_factory):
    """Random weights in the same layout, for the tests that do not need the reference installed."""
    path = tmp_path_factory.mktemp("hed") / "ControlNetHED.pth"
    torch.save(_randomize(HEDNetwork(), seed=7).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 3, 45, 62, generator=g)  # [B, 3, H, W]: odd, non-square, so pooling floors


def test_state_dict_layout_is_the_reference_one(reference_net):
    ours = {k: tuple(v.shape) for k, v in HEDNetwork().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference_net.state_dict().items()}
    assert ours == theirs
    assert len(ours) == 1 + 2 * (13 + 5)  # norm, 13 convs and 5 projections with biases


def test_side_outputs_match_reference(reference_net, reference_file, images):
    model = load_hed(reference_file)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        ours = model(images * 255.0)  # 5 x [B, 1, h, w]
        theirs = reference_net(images * 255.0)
    assert [tuple(o.shape) for o in ours] == [tuple(t.shape) for t in theirs]
    assert [o.shape[-2:] for o in ours] == [(45, 62), (22, 31), (11, 15), (5, 7), (2, 3)]
    for o, t in zip(ours, theirs):
        assert _relative_error(o, t) <= REL_TOL


def _pixart_detector(net: torch.nn.Module, images: torch.Tensor, antialias: bool) -> torch.Tensor:
    """PixArt-alpha `diffusion/model/hed.py` `HEDdetector.forward` (feature=False), re-stated: torchvision
    `TF.resize` of a tensor is `interpolate(bilinear, align_corners=False)`, with antialias on from
    torchvision 0.17 and off before, so both are checked."""
    _, _, height, width = images.shape
    with torch.no_grad():
        sides = net(images * 255.0)  # 5 x [B, 1, h, w]
        sides = torch.cat([F.interpolate(s, size=[height, width], mode="bilinear", align_corners=False,
                                         antialias=antialias) for s in sides], dim=1)  # [B, 5, H, W]
        edge = 1 / (1 + torch.exp(-torch.mean(sides, dim=1, keepdim=True)))  # [B, 1, H, W]
    return edge.clip_(0, 1)


@pytest.mark.parametrize("antialias", [False, True])
def test_edges_match_pixart_detector(reference_net, reference_file, images, antialias):
    ours = hed_edges(load_hed(reference_file), images)  # [B, 1, H, W]
    ref = _pixart_detector(reference_net, images, antialias)
    assert ours.shape == (2, 1, 45, 62) and ours.dtype == torch.float32
    assert _relative_error(ours, ref) <= REL_TOL
    assert 0.0 <= ours.min() and ours.max() <= 1.0 and ours.std() > 0.02  # not saturated: the check means something


def test_edges_match_controlnet_aux_detector(reference_hed, reference_net, reference_file):
    """End to end against controlnet-aux's own `HEDdetector` (cv2 INTER_LINEAR resize, float64 sigmoid, uint8
    output), at a size its 64-multiple rounding leaves unchanged."""
    g = torch.Generator().manual_seed(5)
    rgb8 = torch.randint(0, 256, (64, 128, 3), generator=g, dtype=torch.uint8).numpy()  # [H, W, 3]
    theirs = reference_hed.HEDdetector(reference_net)(rgb8, detect_resolution=64, image_resolution=64,
                                                      output_type="np")  # [H, W, 3] uint8
    images = torch.from_numpy(rgb8).permute(2, 0, 1)[None].float() / 255.0  # [1, 3, H, W]
    ours = hed_edges(load_hed(reference_file), images)[0, 0]  # [H, W]
    ours8 = (ours.double().numpy() * 255.0).clip(0, 255).astype(np.uint8)  # their quantisation (truncation)
    diff = np.abs(ours8.astype(int) - theirs[..., 0].astype(int))
    assert theirs.shape == (64, 128, 3) and diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_dtypes_devices_and_input_checks(hed_file, images):
    model = load_hed(hed_file)
    reference = hed_edges(model, images)  # [B, 1, H, W]
    half_input = hed_edges(model, images.half())
    assert half_input.dtype == torch.float16 and (half_input.float() - reference).abs().max() < 2e-3
    bf16 = load_hed(hed_file, dtype=torch.bfloat16, device="cpu")
    assert bf16.norm.dtype == torch.bfloat16
    assert (hed_edges(bf16, images) - reference).abs().max() < 0.05
    with pytest.raises(ValueError, match="images: expected RGB"):
        hed_edges(model, images[:, :1])
    with pytest.raises(ValueError, match="images: expected floating point"):
        hed_edges(model, (images * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="at least 16x16"):
        hed_edges(model, images[..., :15, :])


def test_safetensors_file_loads(hed_file, images, tmp_path):
    path = tmp_path / "ControlNetHED.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(hed_file, weights_only=True).items()}, path)
    assert torch.equal(hed_edges(load_hed(path), images), hed_edges(load_hed(hed_file), images))


def test_bad_files_raise_clear_errors(hed_file, tmp_path):
    state = torch.load(hed_file, weights_only=True)
    cases = {
        "missing.pth": ({k: v for k, v in state.items() if k != "block3.convs.2.bias"},
                        "missing 'block3.convs.2.bias'"),
        "extra.pth": ({**state, "block6.projection.weight": torch.zeros(1, 512, 1, 1)},
                      "unexpected 'block6.projection.weight'"),
        "shape.pth": ({**state, "norm": torch.zeros(1, 1, 1, 1)}, "norm"),
        "other_model.pth": ({"pos_embed": torch.zeros(1, 4, 8)}, "not a HED edge detector"),
        "network-bsds500.pth": ({"moduleVggOne.0.weight": torch.zeros(64, 3, 3, 3)}, "network-bsds500"),
    }
    for name, (tensors, message) in cases.items():
        path = tmp_path / name
        torch.save(tensors, path)
        with pytest.raises(CheckpointError, match=message) as err:
            load_hed(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(hed_file.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="truncated"):
        load_hed(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_hed(tmp_path / "absent.pth")


def _square(size: int = 32, low: int = 8, high: int = 24, colour=(0.9, 0.2, 0.4)) -> torch.Tensor:
    image = torch.full((1, 3, size, size), 0.1)  # [1, 3, H, W] flat background
    image[0, :, low:high, low:high] = torch.tensor(colour)[:, None, None]
    return image


def test_canny_finds_the_square_border_only():
    edges = canny_edges(_square().repeat(2, 1, 1, 1), 100, 200)  # [B, 1, H, W]
    assert edges.shape == (2, 1, 32, 32) and edges.dtype == torch.float32
    assert set(edges.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(edges[0], edges[1])
    mask = edges[0, 0].bool()  # [H, W]
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[6:26, 6:26] = True
    ring[10:22, 10:22] = False  # a band of two pixels either side of the border
    assert mask.sum() > 40 and not (mask & ~ring).any()  # edges all round the border, none in flat regions
    for side in (mask[6:10, 8:24], mask[22:26, 8:24], mask[8:24, 6:10], mask[8:24, 22:26]):
        assert side.any()


def test_canny_dtype_device_and_thresholds():
    image = _square().half()
    assert canny_edges(image, 50, 50).dtype == torch.float16
    assert not canny_edges(torch.full((1, 3, 16, 16), 0.5), 0, 0).any()  # flat image: no edges at all
    assert canny_edges(_square(), 100, 255).sum() <= canny_edges(_square(), 10, 50).sum()
    for low, high, message in [(-1, 100, "low_threshold"), (10, 256, "high_threshold"),
                               (200, 100, "low_threshold: 200 is above"), (True, 100, "low_threshold"),
                               ("10", 100, "low_threshold")]:
        with pytest.raises(ValueError, match=message):
            canny_edges(image, low, high)
    with pytest.raises(ValueError, match="images: expected RGB"):
        canny_edges(torch.rand(1, 32, 32, 3), 100, 200)
    with pytest.raises(ValueError, match="images: expected floating point"):
        canny_edges(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 100, 200)
