"""Training-free transparent images from a frozen PixArt, after Alfie (Quattrini et al., arXiv 2408.14826;
upstream aimagelab/Alfie `alfie/pipeline_pixart_sigma.py` and `generate_prompt.py`), at any size and aspect ratio.

1. Two branches are sampled in one batch [backgrounds (B); subjects (B)], both from the same starting noise: the
   background branch is prompted with `background_prompt()`, the subject branch with `subject_prompt(prompt)`.
2. Centring: after each of the first `steer_steps_fraction` of the steps, the latent becomes the background
   branch's outside a centred box (a border of 1/8 of each side) and the subject branch's inside it, and both
   branches go on from that blend (as upstream, which blends after every step). The subject so lands whole
   inside the box on the flat background.
3. The subject row's cross-attention is captured over the last steps (`capture_from_fraction` on), averaged over
   the subject's caption tokens, normalised and scaled like upstream's soft alpha clip((1 + k) a_hat), k = 0.5:
   the hint (`subject_hint`).
4. `pixart_core.rgba.matte.matte(image, hint, background=PLAIN_BACKGROUND)` turns image and hint into alpha and
   the straight foreground colour (upstream uses GrabCut or ViTMatte there).
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..bins import resize_and_crop
from ..limits import check_sampled_size
from ..memory import check_fits
from ..sampling import DEFAULT_SAMPLER, cfg_eps_fn, linear_schedule, plan_for, sample, sampler_spec

log = logging.getLogger(__name__)

PLAIN_BACKGROUND = (1.0, 1.0, 1.0)  # the flat background colour steered to (white), RGB 0..1
BACKGROUND_PROMPT = "a plain white background"  # upstream: "A white background"
SUBJECT_SUFFIX = " on a plain white background"  # upstream's optional suffix: " on a white background"
DEFAULT_NEGATIVE = "blurry, shadow, low-resolution, low-quality"  # upstream's negative prompt
HINT_GAIN = 1.5  # upstream generate_prompt.py: a_hat + k * a_hat with k = 0.5, clipped to 0..1
# words whose attention does not mark the subject (upstream excludes generic nouns with an NLTK tagger)
STOP_WORDS = frozenset(
    "a an the of on in at to for with and or by from as is are be its it this that these those very some into "
    "over under near next onto up".split())
GENERIC_WORDS = frozenset(
    "image photo photograph picture illustration drawing painting render rendering sticker clipart clip-art "
    "background backdrop plain white isolated".split())


def background_prompt() -> str:
    """The background branch's prompt: a plain white background."""
    return BACKGROUND_PROMPT


def subject_prompt(prompt: str) -> str:
    """The subject branch's prompt: the user's prompt with a plain-background suffix (none when the prompt
    already names a background)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: empty; describe the subject, e.g. 'a red fox sitting'")
    text = prompt.strip()
    return text if "background" in text.lower() else text + SUBJECT_SUFFIX


def centre_mask(height: int, width: int, border_fraction: float = 1 / 8) -> torch.Tensor:
    """[1, 1, h, w] float32 latent mask: 1 inside a centred box, 0 in a border of `border_fraction` of each side
    (rounded down, as upstream's `latent_h // 8`); 1 marks where the subject may go."""
    if not (isinstance(height, numbers.Integral) and isinstance(width, numbers.Integral)) or height < 1 or width < 1:
        raise ValueError(f"centre_mask: height and width must be positive integers, got {height}x{width}")
    if not 0.0 <= border_fraction < 0.5:
        raise ValueError(f"border_fraction: {border_fraction} is out of range; pass 0 to below 0.5 (default 1/8)")
    border_h = math.floor(height * border_fraction + 1e-9)
    border_w = math.floor(width * border_fraction + 1e-9)
    mask = torch.zeros(1, 1, height, width, dtype=torch.float32)  # [1, 1, h, w]
    mask[..., border_h:height - border_h, border_w:width - border_w] = 1.0
    return mask


@dataclass(frozen=True)
class TransparentPlan:
    """How transparent generation steers and reads the sampler.

    steer_steps_fraction: share of the steps (the first ones) after which the border is set to the background
        branch's; 1.0 (every step) as upstream. Fewer leaves the last steps free to refine the border.
    capture_from_fraction: cross-attention is captured from this share of the steps on (0.5: the second half,
        where the maps have settled; upstream sums nearly all steps). The last step is always captured.
    blocks: DiT block indices captured (None: all, as upstream).
    border_fraction: the steered border's width per side, as a share of the side (1/8 as upstream).
    hint_gain: the normalised attention is multiplied by this and clipped to 0..1 (upstream 1 + k, k = 0.5).
    background: the flat colour the matte removes (RGB 0..1), or None to fit it to the image's border.
    """

    steer_steps_fraction: float = 1.0
    capture_from_fraction: float = 0.5
    blocks: tuple[int, ...] | None = None
    border_fraction: float = 1 / 8
    hint_gain: float = HINT_GAIN
    background: tuple[float, float, float] | None = PLAIN_BACKGROUND

    def __post_init__(self):
        for name in ("steer_steps_fraction", "capture_from_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # False for NaN too
                raise ValueError(f"{name}: {value} is out of range; pass a share of the steps from 0 to 1")
        if not 0.0 <= self.border_fraction < 0.5:
            raise ValueError(f"border_fraction: {self.border_fraction} is out of range; pass 0 to below 0.5")
        if not self.hint_gain > 0.0:
            raise ValueError(f"hint_gain: {self.hint_gain} must be above 0 (default {HINT_GAIN})")
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))

    def steered_steps(self, total: int) -> int:
        """How many of `total` steps are followed by border steering."""
        return round(self.steer_steps_fraction * total)

    def first_captured_step(self, total: int) -> int:
        """Index of the first step whose model call is captured (at most the last step)."""
        return min(total - 1, math.floor(self.capture_from_fraction * total))


def core_pieces(tokenizer, pieces: list[int], core: str) -> tuple[int, int]:
    """(offset, count) of the word's own pieces within `pieces`, the pieces of the word with its punctuation:
    "centre," is ["▁centre", ","], and a comma or full stop draws attention from every image token alike (an
    attention sink), which would flatten or even invert the subject's map. All pieces when the core's own
    pieces are not a run of them."""
    own = tokenizer.encode(core)[:-1]
    for offset in range(len(pieces) - len(own) + 1):
        if own and pieces[offset:offset + len(own)] == own:
            return offset, len(own)
    return 0, len(pieces)


def content_word_positions(tokenizer, text: str, pieces: list[int]) -> list[int]:
    """Positions in `pieces` (the token ids of a caption that starts with `text`, lower-cased as encoded) of
    `text`'s content words without their punctuation (not stop words, not generic words); [] when none is left
    or the tokeniser merged pieces across words."""
    positions, start = [], 0
    for word in text.split():
        word_pieces = tokenizer.encode(word)[:-1]
        if pieces[start:start + len(word_pieces)] != word_pieces:
            return []
        core = word.strip(".,;:!?\"'()[]")
        if core and core not in STOP_WORDS and core not in GENERIC_WORDS and any(ch.isalnum() for ch in core):
            first, count = core_pieces(tokenizer, word_pieces, core)  # not its punctuation (an attention sink)
            positions.extend(range(start + first, start + first + count))
        start += len(word_pieces)
    return positions


def subject_token_positions(tokenizer, prompt: str, max_length: int | None = None) -> list[int]:
    """Caption columns of the user's words in the tokenised `subject_prompt(prompt)` (lower-cased and stripped
    as the pipeline encodes it): not the suffix, not `</s>`, not punctuation, not stop words or generic words
    such as "photo" (all the prompt's tokens when nothing else is left). Needs `tokenizer.encode(text)` (ids
    ending in `</s>`)."""
    text = prompt.lower().strip()
    full = tokenizer.encode(subject_prompt(prompt).lower().strip())[:-1]  # pieces without </s>
    limit = len(full) if max_length is None else min(len(full), max_length - 1)  # the pipeline keeps L - 1 pieces
    positions = content_word_positions(tokenizer, text, full)
    if not positions:  # the tokeniser merged across words, or no content word: the prompt's own pieces
        own = tokenizer.encode(text)[:-1]
        positions = list(range(min(len(own), len(full))))
    positions = [p for p in positions if p < limit]
    if not positions:
        raise ValueError("prompt: no caption tokens left for the subject; write a shorter prompt naming it")
    return positions


def subject_hint(cross_attention: torch.Tensor, grid_hw: tuple[int, int], positions: Sequence[Sequence[int]],
                 size: tuple[int, int], gain: float = HINT_GAIN) -> torch.Tensor:
    """[B, 1, H, W] float32 in 0..1: the subject's coverage hint from captured cross-attention.

    cross_attention [B, h*w, L] (`AttentionCapture.cross_attention()`, subject rows), grid_hw (h, w),
    positions[b] the caption columns of image b's subject (one list serves all). Mean over those columns,
    bicubic-upsampled to `size`, min-max normalised per image, then clip(gain * a, 0, 1) so the core reaches 1.
    """
    if not isinstance(cross_attention, torch.Tensor) or cross_attention.ndim != 3:
        shape = tuple(cross_attention.shape) if isinstance(cross_attention, torch.Tensor) else type(cross_attention)
        raise ValueError(f"cross_attention: expected a tensor [B, h*w, L], got {shape}")
    batch, tokens, length = cross_attention.shape
    height, width = grid_hw
    if height * width != tokens:
        raise ValueError(f"grid_hw: {height}x{width} does not match the {tokens} image tokens of cross_attention")
    if len(positions) not in (1, batch):
        raise ValueError(f"positions: {len(positions)} lists for a batch of {batch}; pass 1 or {batch}")
    maps = []
    for index in range(batch):
        columns = list(positions[index if len(positions) > 1 else 0])
        if not columns or any(not -length <= c < length for c in columns):
            raise ValueError(f"positions: {columns} must be non-empty caption columns below {length}")
        picked = cross_attention[index, :, torch.tensor(columns) % length].float().mean(dim=-1)  # [h*w]
        maps.append(picked.reshape(height, width))
    grid = torch.stack(maps)[:, None]  # [B, 1, h, w]
    hint = F.interpolate(grid, size=tuple(size), mode="bicubic", align_corners=False)  # [B, 1, H, W]
    low = hint.amin(dim=(2, 3), keepdim=True)  # [B, 1, 1, 1]
    high = hint.amax(dim=(2, 3), keepdim=True)  # [B, 1, 1, 1]
    hint = (hint - low) / (high - low).clamp_min(1e-12)  # [B, 1, H, W] 0..1
    return (gain * hint).clamp(0.0, 1.0)  # [B, 1, H, W]


def stack_branches(background: tuple[torch.Tensor, torch.Tensor], subject: tuple[torch.Tensor, torch.Tensor],
                   batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Contexts [2B, L, C] and masks [2B, L] ordered [backgrounds (B); subjects (B)] from one background and one
    subject (T5 states [1, L, C], mask [1, L]; the shorter is zero-padded and masked to the longer)."""
    (bg, bg_mask), (fg, fg_mask) = background, subject
    length = max(bg.shape[1], fg.shape[1])
    bg, fg = (F.pad(t, (0, 0, 0, length - t.shape[1])) for t in (bg, fg))  # [1, L, C]
    bg_mask, fg_mask = (F.pad(m, (0, length - m.shape[1])) for m in (bg_mask, fg_mask))  # [1, L]
    context = torch.cat([bg.expand(batch, -1, -1), fg.expand(batch, -1, -1)])  # [2B, L, C]
    mask = torch.cat([bg_mask.expand(batch, -1), fg_mask.expand(batch, -1)])  # [2B, L]
    return context, mask


class BorderSteering:
    """`sample(..., step_hook=...)` for a batch [backgrounds (B); subjects (B)]: after each of the plan's steered
    steps both halves become background * (1 - mask) + subject * mask (upstream blends after every step)."""

    def __init__(self, mask: torch.Tensor, plan: TransparentPlan):
        self.mask = mask  # [1, 1, h, w]
        self.plan = plan

    def __call__(self, step: int, total: int, x: torch.Tensor) -> torch.Tensor | None:
        if step >= self.plan.steered_steps(total):
            return None
        background, subject = x.chunk(2)  # [B, C, h, w] each
        mask = self.mask.to(device=x.device, dtype=x.dtype)  # [1, 1, h, w]
        blended = background * (1.0 - mask) + subject * mask  # [B, C, h, w]
        return torch.cat([blended, blended])  # [2B, C, h, w]


@dataclass
class SteeredSample:
    """latents [B, C, h, w] (subject rows, VP space); cross_attention [B, h*w, L] of the conditional subject rows;
    grid_hw the DiT token grid."""

    latents: torch.Tensor
    cross_attention: torch.Tensor
    grid_hw: tuple[int, int]


def steered_sample(model, eps_fn, noise: torch.Tensor, *, plan: TransparentPlan | None = None,
                   sampler: str = DEFAULT_SAMPLER, steps: int | None = None, generator: torch.Generator | None = None,
                   callback: Callable | None = None, should_stop: Callable[[], bool] | None = None) -> SteeredSample:
    """Sample the two branches with border steering and attention capture (the call a sampler node makes).

    eps_fn: `cfg_eps_fn(model, context, mask, neg, neg_mask, cfg)` over contexts from `stack_branches`, so the
    model batch is [uncond bg, uncond subject, cond bg, cond subject] (cfg_eps_fn puts uncond first) or [bg,
    subject] without CFG: the last B rows are the conditional subject. noise [2B, C, h, w] (use one draw [B]
    twice, as upstream starts both branches from the same latent). callback(step, total, x, denoised) sees the
    subject rows only.
    """
    plan = plan or TransparentPlan()
    if noise.ndim != 4 or noise.shape[0] % 2:
        raise ValueError(f"noise: expected [2B, C, h, w] (backgrounds then subjects), got {tuple(noise.shape)}")
    batch = noise.shape[0] // 2
    steps = sampler_spec(sampler).default_steps if steps is None else steps
    total = len(plan_for(linear_schedule(), sampler, steps).sigmas) - 1
    steering = BorderSteering(centre_mask(noise.shape[2], noise.shape[3], plan.border_fraction), plan)
    capture = model.capture_attention(plan.blocks)
    first_captured = plan.first_captured_step(total)
    with contextlib.ExitStack() as stack:
        if first_captured == 0:
            stack.enter_context(capture)

        def hook(step: int, total_steps: int, x: torch.Tensor) -> torch.Tensor | None:
            if step + 1 == first_captured:
                stack.enter_context(capture)  # before the model call of step `first_captured`
            return steering(step, total_steps, x)

        def report(step: int, total_steps: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            callback(step, total_steps, x[batch:], denoised[batch:])

        out = sample(eps_fn, noise, sampler=sampler, steps=steps, generator=generator, step_hook=hook,
                     callback=report if callback is not None else None, should_stop=should_stop)  # [2B, C, h, w]
    attention = capture.cross_attention()  # [n, h*w, L], n = 2B or 4B
    log.debug("transparent: %d of %d steps steered, %d model calls captured", plan.steered_steps(total), total,
              capture.calls)
    return SteeredSample(out[batch:], attention[-batch:], capture.grid_hw)


@dataclass
class TransparentResult:
    """rgba [B, 4, H, W] (straight colour + alpha), image [B, 3, H, W] (the generated composite), alpha
    [B, 1, H, W], foreground [B, 3, H, W] (straight colour), hint [B, 1, H, W]; all float32 0..1 on the CPU."""

    rgba: torch.Tensor
    image: torch.Tensor
    alpha: torch.Tensor
    foreground: torch.Tensor
    hint: torch.Tensor


@torch.inference_mode()
def generate_transparent(pipe, prompt: str, *, negative_prompt: str | None = None, height: int = 1024,
                         width: int = 1024, num_inference_steps: int | None = None,
                         guidance_scale: float | None = None, sampler: str | None = None, seed: int | None = None,
                         generator: torch.Generator | None = None, num_images_per_prompt: int = 1,
                         use_resolution_binning: bool = True, plan: TransparentPlan | None = None,
                         callback: Callable | None = None,
                         should_stop: Callable[[], bool] | None = None) -> TransparentResult:
    """Generate `num_images_per_prompt` RGBA images of `prompt` with a `PixArtPipeline` (see the module doc).

    negative_prompt None uses upstream's "blurry, shadow, low-resolution, low-quality". Other arguments as
    `PixArtPipeline.__call__`; the image is sampled at the bin (or the exact size unbinned) and resized with
    its hint to height x width before matting.
    """
    from .matte import matte

    plan = plan or TransparentPlan()
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected one string, got {type(prompt).__name__}; use num_images_per_prompt")
    subject = subject_prompt(prompt)
    if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, numbers.Integral) \
            or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt: expected a whole number >= 1, got {num_images_per_prompt!r}")
    sampler = sampler or pipe.defaults["sampler"]
    spec = sampler_spec(sampler)
    if num_inference_steps is not None and (isinstance(num_inference_steps, bool) or not isinstance(
            num_inference_steps, numbers.Integral) or num_inference_steps < 1):
        raise ValueError(f"num_inference_steps must be an integer >= 1 (or None), got {num_inference_steps!r}")
    steps = num_inference_steps or spec.default_steps
    cfg = pipe.defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    if spec.distilled_guidance and guidance_scale is None:
        cfg = 0.0
    if not math.isfinite(cfg):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    batch = num_images_per_prompt
    gen_h, gen_w = pipe.generation_size(height, width, use_resolution_binning)
    check_sampled_size(gen_h, gen_w)
    check_fits(gen_h, gen_w, height, width, 2 * batch, pipe.device, hidden_size=pipe.transformer.config.hidden_size,
               dtype_bytes=pipe.dtype.itemsize, guidance=cfg > 1.0)  # two branches per image

    states, masks = pipe.encode_prompt([background_prompt(), subject])  # [2, L, C], [2, L]
    context, context_mask = stack_branches((states[:1], masks[:1]), (states[1:], masks[1:]), batch)
    negative = negative_mask = None
    if cfg > 1.0:
        text = DEFAULT_NEGATIVE if negative_prompt is None else negative_prompt
        negative, negative_mask = pipe.encode_prompt([text], max_length=context.shape[1])  # [1, L, C], [1, L]
    if generator is None and seed is not None:
        generator = torch.Generator("cpu").manual_seed(seed)
    config = pipe.transformer.config
    noise = torch.randn((batch, config.in_channels, gen_h // 8, gen_w // 8), generator=generator,
                        dtype=torch.float32)  # [B, 4, h, w]
    noise = torch.cat([noise, noise]).to(pipe.device, pipe.dtype)  # [2B, 4, h, w] both branches start alike
    eps_fn = cfg_eps_fn(pipe.transformer, context, context_mask, negative, negative_mask, cfg)
    steered = steered_sample(pipe.transformer, eps_fn, noise, plan=plan, sampler=sampler, steps=steps,
                             generator=generator, callback=callback, should_stop=should_stop)

    pixels = pipe.decode(steered.latents)  # [B, 3, gh, gw] in -1..1
    positions = subject_token_positions(pipe.tokenizer, prompt, pipe.max_sequence_length)
    hint = subject_hint(steered.cross_attention, steered.grid_hw, [positions], (gen_h, gen_w), plan.hint_gain)
    if (gen_h, gen_w) != (height, width):  # as the pipeline: resize-and-crop back to the requested size
        pixels = resize_and_crop(pixels, width, height)  # [B, 3, H, W]
        hint = resize_and_crop(hint, width, height).clamp(0, 1)  # [B, 1, H, W]
    image = (pixels / 2 + 0.5).clamp(0, 1).float().cpu()  # [B, 3, H, W] in 0..1
    hint = hint.float().cpu()  # [B, 1, H, W]
    alpha, foreground = matte(image, hint, background=plan.background)  # [B, 1, H, W], [B, 3, H, W]
    rgba = torch.cat([foreground, alpha], dim=1)  # [B, 4, H, W]
    return TransparentResult(rgba=rgba, image=image, alpha=alpha, foreground=foreground, hint=hint)
