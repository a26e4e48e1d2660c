"""The largest size PixArt samples at, and a check that refuses larger ones before any model work.

The largest released PixArt, Σ-2K (PixArt-Σ arXiv:2403.04692), is trained on 2048x2048-area aspect-ratio bins;
their 1:4 extremes reach 4096 on one side (bins.py, TRAINING_BINS_2048). Larger areas are beyond anything PixArt
was trained at, and self-attention cost grows with the square of the token count, so a run there would grind for
a long time to give a broken image: they are refused, and the answer is to generate smaller and upscale.
"""

from __future__ import annotations

MAX_SIDE = 4096  # pixels: the longest side of a trained bin (Σ-2K at ratio 0.25 or 4.0)
MAX_SAMPLED_AREA = 2048 * 2048  # pixels: the area of Σ-2K's bins, the largest trained PixArt


def check_sampled_size(height: int, width: int, argument: str = "--height/--width") -> None:
    """Raise ValueError naming `argument` when height x width, the size sampled at, is over MAX_SAMPLED_AREA."""
    if height * width > MAX_SAMPLED_AREA:
        raise ValueError(f"{argument}: {width} wide x {height} high ({height * width:,} pixels) is larger than the "
                         f"largest trained PixArt size (Σ-2K, 2048x2048 = {MAX_SAMPLED_AREA:,} pixels); "
                         "generate at most 2048x2048 in area and upscale the result")
