"""The transparency nodes (#9) called directly on tiny checkpoints, against the library they wrap: Transparent
Sampler (Alfie steering), Transparent Decode (attention matte, LayerDiffuse decoder), Transparent Encode (offset
latent) and Save RGBA (PNG as core Join Image with Alpha + Save Image would write it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

TRANSPARENT_NODES = ["AtelierTransparentSampler", "AtelierTransparentDecode", "AtelierTransparentEncode",
                     "AtelierSaveRGBA"]
DECODER, ENCODER = "vae_transparent_decoder.safetensors", "vae_transparent_encoder.safetensors"


def test_metadata_is_complete(pack):
    for node_id in TRANSPARENT_NODES:
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("PixArt ")
        assert cls.CATEGORY.startswith("PixArt Atelier/") and cls.DESCRIPTION and hasattr(cls, cls.FUNCTION)
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (kind, *opts) in spec.get(section, {}).items():
                assert opts and opts[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert pack.NODE_CLASS_MAPPINGS["AtelierSaveRGBA"].OUTPUT_NODE


def test_layer_model_files_are_listed(nodes):
    decode = nodes["AtelierTransparentDecode"].INPUT_TYPES()["required"]["engine"][0]
    encode = nodes["AtelierTransparentEncode"].INPUT_TYPES()["required"]["encoder_name"][0]
    assert decode[0] == "attention matte" and DECODER in decode and ENCODER not in decode
    assert ENCODER in encode and DECODER not in encode


@pytest.fixture(scope="module")
def sticker(nodes, sigma):
    """Transparent Sampler output (latent, attention) for 2 images at 64x48, 4 steps."""
    model, t5, _, _ = sigma
    out = nodes["AtelierTransparentSampler"]().generate(model, t5, "a red fox", "blurry", 5, 4, 4.5, "dpmpp_2m",
                                                        64, 48, 2, 0.125, 1.0, 0.5)
    return out


def test_sampler_matches_the_library_and_is_seeded(nodes, sigma, sticker, tiny_suite):
    from pixart_atelier.pixart_core.pipeline import PixArtPipeline
    from pixart_atelier.pixart_core.rgba import alfie
    from pixart_atelier.pixart_core.sampling import cfg_eps_fn
    from pixart_atelier.pixart_core.t5 import load_t5_tokenizer

    model, t5, _, _ = sigma
    latent, attention = sticker["result"]
    assert latent["samples"].shape == (2, 4, 6, 8) and torch.isfinite(latent["samples"]).all()
    assert attention.hint.shape == (2, 1, 48, 64) and attention.grid_hw == (3, 4)
    assert 0 <= float(attention.hint.min()) and float(attention.hint.max()) == 1.0
    assert attention.background == alfie.PLAIN_BACKGROUND and "steered" in sticker["ui"]["text"][0]
    again = nodes["AtelierTransparentSampler"]().generate(model, t5, "a red fox", "blurry", 5, 4, 4.5, "dpmpp_2m",
                                                          64, 48, 2, 0.125, 1.0, 0.5)["result"]
    assert torch.equal(again[0]["samples"], latent["samples"]) and torch.equal(again[1].hint, attention.hint)
    # the library's own path with the same prompts, noise and plan
    tokenizer = load_t5_tokenizer(tiny_suite / "t5" / "t5_hf")
    pipe = PixArtPipeline(model.handle.module, t5.handle.module, tokenizer, None,
                          vae_scale_factor=model.config.vae_scale_factor)
    states, masks = pipe.encode_prompt([alfie.background_prompt(), alfie.subject_prompt("a red fox")])
    context, context_mask = alfie.stack_branches((states[:1], masks[:1]), (states[1:], masks[1:]), 2)
    negative, negative_mask = pipe.encode_prompt(["blurry"], max_length=context.shape[1])
    eps_fn = cfg_eps_fn(model.handle.module, context, context_mask, negative, negative_mask, 4.5)
    noise = torch.randn((2, 4, 6, 8), generator=torch.Generator().manual_seed(5))
    plan = alfie.TransparentPlan(steer_steps_fraction=1.0, capture_from_fraction=0.5, border_fraction=0.125)
    ref = alfie.steered_sample(model.handle.module, eps_fn, torch.cat([noise, noise]), plan=plan, steps=4)
    torch.testing.assert_close(latent["samples"] * model.config.vae_scale_factor, ref.latents, atol=1e-5, rtol=1e-5)
    positions = alfie.subject_token_positions(tokenizer, "a red fox", model.max_length)
    hint = alfie.subject_hint(ref.cross_attention, ref.grid_hw, [positions], (48, 64))
    torch.testing.assert_close(attention.hint, hint, atol=1e-5, rtol=1e-5)
    other = nodes["AtelierTransparentSampler"]().generate(model, t5, "a red fox", "blurry", 6, 4, 4.5, "dpmpp_2m",
                                                          64, 48, 2, 0.125, 1.0, 0.5)["result"]
    assert not torch.allclose(other[0]["samples"], latent["samples"])
    with pytest.raises(ValueError, match="multiples of 16"):
        nodes["AtelierTransparentSampler"]().generate(model, t5, "a fox", "", 0, 2, 4.5, "dpmpp_2m", 100, 64, 1)
    with pytest.raises(ValueError, match="prompt"):
        nodes["AtelierTransparentSampler"]().generate(model, t5, "  ", "", 0, 2, 4.5, "dpmpp_2m", 64, 64, 1)


@pytest.fixture(scope="module")
def vae(nodes):
    return nodes["AtelierVAELoader"]().load("sdxl_vae.safetensors")[0]


def _check_outputs(out, batch, height, width):
    image, mask, rgba, preview = out["result"]
    assert image.shape == (batch, height, width, 3) and mask.shape == (batch, height, width)
    assert rgba.shape == (batch, height, width, 4) and preview.shape == (batch, height, width, 3)
    assert torch.equal(rgba[..., :3], image) and torch.equal(rgba[..., 3], 1.0 - mask)  # what Join computes
    for tensor in (image, mask, rgba, preview):
        assert 0 <= float(tensor.min()) and float(tensor.max()) <= 1
    return image, mask, rgba, preview


def test_decode_with_the_attention_matte(nodes, vae, sticker):
    from pixart_atelier.pixart_core.rgba.matte import matte
    from pixart_atelier.pixart_core.rgba.rgba_io import checkerboard

    latent, attention = sticker["result"]
    decode = nodes["AtelierTransparentDecode"]()
    out = decode.decode(latent, vae, "attention matte", True, attention=attention)
    image, mask, rgba, preview = _check_outputs(out, 2, 48, 64)
    assert "attention matte" in out["ui"]["text"][0] and "attention" in out["ui"]["text"][0]
    rgb = nodes["AtelierVAEDecode"]().decode(latent, vae)[0].movedim(-1, 1)  # [B, 3, H, W]
    alpha, foreground = matte(rgb, attention.hint, attention.background)
    torch.testing.assert_close(mask, 1 - alpha[:, 0])
    torch.testing.assert_close(image, foreground.movedim(1, -1))
    torch.testing.assert_close(preview, checkerboard(rgba.movedim(-1, 1)).movedim(1, -1))
    # a user's subject mask replaces the attention; the background is then estimated
    user = torch.zeros(1, 48, 64)
    user[:, 12:36, 16:48] = 1.0
    out = decode.decode(latent, vae, "attention matte", True, hint=user)
    _check_outputs(out, 2, 48, 64)
    assert "hint mask" in out["ui"]["text"][0] and "estimated background" in out["ui"]["text"][0]
    with pytest.raises(ValueError, match="needs a hint"):
        decode.decode(latent, vae, "attention matte", True)


def test_decode_with_the_layerdiffuse_decoder(nodes, vae):
    from pixart_atelier.nodes import host
    from pixart_atelier.pixart_core.rgba import load_transparent_decoder

    latent = {"samples": torch.randn(1, 4, 6, 10, generator=torch.Generator().manual_seed(2))}
    out = nodes["AtelierTransparentDecode"]().decode(latent, vae, DECODER, False)
    image, mask, rgba, _ = _check_outputs(out, 1, 48, 80)
    assert DECODER in out["ui"]["text"][0] and "sdxl family" in out["ui"]["text"][0]
    decoder = load_transparent_decoder(host.model_path("layer_model", DECODER), dtype=torch.float32)
    rgb = nodes["AtelierVAEDecode"]().decode(latent, vae)[0].movedim(-1, 1)  # [1, 3, H, W]
    expected = decoder.estimate(rgb, latent["samples"], tta=False)  # [1, 4, H, W] alpha, colour
    torch.testing.assert_close(mask, 1 - expected[:, 0])
    torch.testing.assert_close(image, expected[:, 1:].movedim(1, -1))
    with_tta = nodes["AtelierTransparentDecode"]().decode(latent, vae, DECODER, True)
    assert "TTA" in with_tta["ui"]["text"][0]
    torch.testing.assert_close(with_tta["result"][1], 1 - decoder.estimate(rgb, latent["samples"], tta=True)[:, 0])


def test_layerdiffuse_files_are_read_once_while_unchanged(nodes, vae, monkeypatch):
    """Decoding twice reads the decoder file once and hands ComfyUI the same module; a file changed on disk is
    read again."""
    import os

    from pixart_atelier.nodes import host, layer_model_cache

    reads = []
    original = layer_model_cache.load_transparent_decoder
    monkeypatch.setattr(layer_model_cache, "load_transparent_decoder",
                        lambda *args, **kwargs: reads.append(args[0]) or original(*args, **kwargs))
    monkeypatch.setattr(layer_model_cache, "_HELD", {})
    latent = {"samples": torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))}
    first = nodes["AtelierTransparentDecode"]().decode(latent, vae, DECODER, False)["result"]
    handle = layer_model_cache.transparent_decoder(host.model_path("layer_model", DECODER), torch.float32)
    second = nodes["AtelierTransparentDecode"]().decode(latent, vae, DECODER, False)["result"]
    assert len(reads) == 1 and handle is layer_model_cache.transparent_decoder(reads[0], torch.float32)
    torch.testing.assert_close(first[1], second[1])
    stat = os.stat(reads[0])
    os.utime(reads[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    nodes["AtelierTransparentDecode"]().decode(latent, vae, DECODER, False)
    assert len(reads) == 2


def _rgba_image(height=40, width=56, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, height, width, 4, generator=generator)  # [1, H, W, 4]
    image[..., 3] = 0.0
    image[:, 8:32, 12:44, 3] = 1.0
    image[:, 6:8, 12:44, 3] = 0.5
    return image


def test_encode_matches_the_library_and_reads_rgba_or_image_and_mask(nodes, vae):
    from pixart_atelier.nodes import host
    from pixart_atelier.nodes.transparency import posterior
    from pixart_atelier.pixart_core.rgba import grey_composite, load_transparent_encoder

    image = _rgba_image()
    encode = nodes["AtelierTransparentEncode"]()
    (latent,) = encode.encode(image, vae, ENCODER)
    assert latent["samples"].shape == (1, 4, 4, 6)  # centre-cropped to 32x48
    crop = image[:, 4:36, 4:52].movedim(-1, 1)  # [1, 4, 32, 48]
    rgb, alpha = crop[:, :3], crop[:, 3:]
    grey = grey_composite(rgb, alpha)  # [1, 3, 32, 48]
    with torch.no_grad():
        moments = vae.handle.module.encode_moments(grey * 2 - 1)  # [1, 8, 4, 6]
    mean, logvar = moments.chunk(2, dim=1)
    encoder = load_transparent_encoder(host.model_path("layer_model", ENCODER))
    expected = encoder.offset_latent(mean, torch.exp(0.5 * logvar), encoder.encode(rgb, alpha))
    torch.testing.assert_close(latent["samples"], expected, atol=1e-5, rtol=1e-5)
    assert (latent["samples"] - mean).abs().max() > 0  # the offset is there
    # the posterior mean is what VAE Encode gives
    torch.testing.assert_close(posterior(vae, grey.movedim(1, -1))[0],
                               nodes["AtelierVAEEncode"]().encode(grey.movedim(1, -1), vae)[0]["samples"])
    # IMAGE + MASK (1 - alpha, as Load Image gives it) is the same as RGBA
    (split,) = encode.encode(image[..., :3], vae, ENCODER, mask=1.0 - image[..., 3])
    torch.testing.assert_close(split["samples"], latent["samples"])
    # Load Image's all-zero 64x64 mask of an opaque file, and a plain RGB image: opaque
    opaque = image.clone()
    opaque[..., 3] = 1.0
    (reference,) = encode.encode(opaque, vae, ENCODER)
    for mask in (torch.zeros(1, 64, 64), None):
        torch.testing.assert_close(encode.encode(image[..., :3], vae, ENCODER, mask=mask)[0]["samples"],
                                   reference["samples"])
    with pytest.raises(ValueError, match="mask"):
        encode.encode(image[..., :3], vae, ENCODER, mask=torch.ones(1, 20, 20))
    with pytest.raises(ValueError, match="16x16"):
        encode.encode(torch.rand(1, 8, 8, 4), vae, ENCODER)


def test_encode_then_decode_round_trip_runs(nodes, vae):
    (latent,) = nodes["AtelierTransparentEncode"]().encode(_rgba_image(48, 64), vae, ENCODER)
    _check_outputs(nodes["AtelierTransparentDecode"]().decode(latent, vae, DECODER, False), 1, 48, 64)


def _png(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.mode, np.array(image), dict(image.text)


def test_save_rgba_writes_what_join_image_with_alpha_and_save_image_write(nodes, tmp_path, monkeypatch):
    from pixart_atelier.pixart_core.rgba.rgba_io import rgba_from

    monkeypatch.setenv("PIXART_ATELIER_OUTPUT", str(tmp_path))
    image = torch.rand(2, 24, 40, 3, generator=torch.Generator().manual_seed(3))  # IMAGE [B, H, W, 3]
    mask = torch.rand(2, 24, 40, generator=torch.Generator().manual_seed(4))  # MASK = 1 - alpha
    rgba = torch.cat([image, (1.0 - mask)[..., None]], dim=-1)  # as Transparent Decode builds it
    prompt, workflow = {"1": {"class_type": "X", "inputs": {}}}, {"nodes": [], "links": []}
    save = nodes["AtelierSaveRGBA"]()
    out = save.save(rgba, "stickers/fox", prompt=prompt, extra_pnginfo={"workflow": workflow})
    files = out["ui"]["images"]
    assert [f["filename"] for f in files] == ["fox_00001_.png", "fox_00002_.png"]
    assert {f["subfolder"] for f in files} == {"stickers"} and {f["type"] for f in files} == {"output"}
    joined = rgba_from(image, mask)  # core Join Image with Alpha
    for index, entry in enumerate(files):
        mode, pixels, text = _png(tmp_path / "stickers" / entry["filename"])
        core = np.clip(255.0 * joined[index].numpy(), 0, 255).astype(np.uint8)  # core Save Image's quantisation
        assert mode == "RGBA" and np.array_equal(pixels, core)
        assert json.loads(text["prompt"]) == prompt and json.loads(text["workflow"]) == workflow
    again = save.save(rgba[:1], "stickers/fox")["ui"]["images"]
    assert again[0]["filename"] == "fox_00003_.png"
    assert "prompt" not in _png(tmp_path / "stickers" / "fox_00003_.png")[2]
    opaque = save.save(image[:1], "rgb")["ui"]["images"][0]
    assert (_png(tmp_path / opaque["filename"])[1][..., 3] == 255).all()
    with pytest.raises(ValueError, match="outside the output folder"):
        save.save(rgba, "../escape")
    with pytest.raises(ValueError, match="channels"):
        save.save(torch.rand(1, 8, 8, 2), "bad")
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*"))
