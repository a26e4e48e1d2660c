"""Training checkpoints hold raw and EMA weights: the EMA weights are loaded and the summary says so."""

from __future__ import annotations

import torch

from pixart_core.pixart.config import PRESETS
from pixart_core.pixart.load import load_transformer
from pixart_core.pixart.model import PixArtTransformer

CONFIG = PRESETS["sigma-512"].with_(hidden_size=144, num_heads=2, depth=1, caption_channels=32, has_null_caption=True)


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    """A full official-layout state dict of CONFIG with every tensor drawn from `seed`."""
    torch.manual_seed(seed)
    model = PixArtTransformer(CONFIG)
    return {k: torch.randn_like(v) * 0.02 for k, v in model.state_dict().items()}


def test_ema_weights_are_preferred_and_reported(tmp_path):
    raw, ema = random_weights(1), random_weights(2)
    path = tmp_path / "epoch_10_step_5000.pth"
    torch.save({"state_dict": raw, "state_dict_ema": ema, "optimizer": {"lr": torch.tensor(1e-4)}}, path)
    model = load_transformer(path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)
    summary = model.detection.summary()
    assert "EMA weights (state_dict_ema; state_dict not used)" in summary, summary
    assert any("EMA" in line for line in model.detection.evidence)


def test_plain_and_single_wrapper_files_say_nothing_about_ema(tmp_path):
    weights = random_weights(3)
    only_raw = tmp_path / "raw.pth"
    torch.save({"state_dict": weights}, only_raw)
    plain = tmp_path / "plain.pth"
    torch.save(weights, plain)
    for path in (only_raw, plain):
        model = load_transformer(path)
        assert "EMA" not in model.detection.summary() and "state_dict" not in model.detection.summary()
        assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)
    only_ema = tmp_path / "ema.pth"
    torch.save({"state_dict_ema": weights}, only_ema)
    assert "EMA weights (state_dict_ema)" in load_transformer(only_ema).detection.summary()
