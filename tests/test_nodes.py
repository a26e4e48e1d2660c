"""Every node class called directly on tiny checkpoints (outside ComfyUI: the host adapter's fallbacks)."""

from __future__ import annotations

import pytest
import torch

NODE_IDS = ["AtelierModelLoader", "AtelierT5Loader", "AtelierVAELoader", "AtelierT5TextEncode",
            "AtelierResolutionSelect", "AtelierSampler", "AtelierVAEDecode", "AtelierVAEEncode",
            "AtelierControlNetLoader", "AtelierApplyControlNet", "AtelierHEDPreprocessor", "AtelierCannyPreprocessor",
            "AtelierTransparentSampler", "AtelierTransparentDecode", "AtelierTransparentEncode", "AtelierSaveRGBA",
            "AtelierLayout", "AtelierGenerateLayers", "AtelierRegenerateLayer", "AtelierLayerSelect",
            "AtelierSaveLayers", "AtelierLoadLayers"]


def test_node_metadata_is_complete(pack):
    assert sorted(pack.NODE_CLASS_MAPPINGS) == sorted(NODE_IDS)
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("Atelier") and node_id in pack.NODE_DISPLAY_NAME_MAPPINGS
        assert cls.CATEGORY.startswith("PixArt Atelier/") and cls.DESCRIPTION and hasattr(cls, cls.FUNCTION)
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        spec = cls.INPUT_TYPES()
        for section_name, section in spec.items():
            if section_name == "hidden":  # PROMPT / EXTRA_PNGINFO: filled in by ComfyUI, never shown
                continue
            for name, (kind, *opts) in section.items():
                assert opts and opts[0].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_model_loader_reports_detected_variant(nodes):
    loader = nodes["AtelierModelLoader"]()
    for name, family, micro, tokens in [("PixArt-Sigma-XL-2-1024-MS.pth", "sigma", False, 300),
                                        ("PixArt-XL-2-1024-MS.pth", "alpha", True, 120),
                                        ("PixArt-Sigma-XL-2-256x256.pth", "sigma", False, 300)]:
        out = loader.load(name)
        model, summary = out["result"]
        assert out["ui"]["text"] == [summary]
        assert model.config.family == family and model.config.micro_condition == micro
        assert model.max_length == tokens and ("Σ" if family == "sigma" else "α") in summary
    # the node's model is the library's: same detection, same weights
    from pixart_atelier.nodes import host
    from pixart_atelier.pixart_core.pixart.load import load_transformer

    path = host.model_path("diffusion_models", "PixArt-Sigma-XL-2-1024-MS.pth")
    model, summary = loader.load("PixArt-Sigma-XL-2-1024-MS.pth")["result"]  # dtype auto: the CPU's default
    reference = load_transformer(path, dtype=host.default_dtype(torch.device("cpu")))
    assert summary == reference.detection.summary() and model.config == reference.config
    ours = model.handle.module.state_dict()
    assert ours.keys() == reference.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in reference.state_dict().items())
    with pytest.raises(FileNotFoundError, match="models/diffusion_models"):
        loader.load("missing.pth")


def test_text_encode_pads_to_model_tokens(nodes, sigma):
    model, t5, positive, negative = sigma
    assert positive.hidden.shape == (1, 300, 32) and positive.mask.shape == (1, 300)
    assert 1 < int(positive.mask.sum()) < 20 and int(negative.mask.sum()) == 1  # "" is just </s>
    alpha, _ = nodes["AtelierModelLoader"]().load("PixArt-XL-2-1024-MS.pth")["result"]
    pos, _ = nodes["AtelierT5TextEncode"]().encode(t5, alpha, "a red fox in snow", "")
    assert pos.hidden.shape == (1, 120, 32)
    torch.testing.assert_close(pos.hidden[:, :10], positive.hidden[:, :10])  # lower-cased like the reference
    # the node's conditioning is the library's encode_prompts on the same T5 file
    from pixart_atelier.nodes import host
    from pixart_atelier.pixart_core.pipeline import encode_prompts
    from pixart_atelier.pixart_core.t5 import load_t5_encoder

    encoder = load_t5_encoder(host.model_path("text_encoders", "t5xxl_fp16.safetensors"), dtype=torch.float32)
    hidden, mask = encode_prompts(encoder, t5.tokenizer, ["A Red Fox in snow", ""], 300)  # [2, 300, C], [2, 300]
    assert torch.equal(positive.hidden, hidden[:1]) and torch.equal(positive.mask, mask[:1])
    assert torch.equal(negative.hidden, hidden[1:]) and torch.equal(negative.mask, mask[1:])


def test_t5_loader_lists_files_and_folders(nodes):
    names = nodes["AtelierT5Loader"].INPUT_TYPES()["required"]["t5_name"][0]
    assert "t5xxl_fp16.safetensors" in names and "t5-v1_1-xxl" in names
    t5 = nodes["AtelierT5Loader"]().load("t5-v1_1-xxl", "fp8_e4m3fn", "cpu")[0]
    assert t5.tokenizer is not None


def test_resolution_select_uses_the_models_bins(nodes):
    select = nodes["AtelierResolutionSelect"]()
    big, _ = nodes["AtelierModelLoader"]().load("PixArt-Sigma-XL-2-1024-MS.pth")["result"]
    small, _ = nodes["AtelierModelLoader"]().load("PixArt-Sigma-XL-2-256x256.pth")["result"]
    assert select.select(big, "1.0") == (1024, 1024)
    assert select.select(big, "0.57") == (1344, 768)  # ratio = height / width
    assert select.select(small, "1.0") == (256, 256)


def test_sampler_matches_the_pipeline_and_is_seeded(nodes, sigma, tiny_suite):
    from pixart_atelier.pixart_core.pipeline import PixArtPipeline
    from pixart_atelier.pixart_core.t5 import load_t5_tokenizer

    model, t5, positive, negative = sigma
    sampler = nodes["AtelierSampler"]()
    (latent,) = sampler.generate(model, positive, negative, 5, 3, 4.5, "dpmpp_2m", 64, 48, 2)
    assert latent["samples"].shape == (2, 4, 6, 8)
    (again,) = sampler.generate(model, positive, negative, 5, 3, 4.5, "dpmpp_2m", 64, 48, 2)
    (other,) = sampler.generate(model, positive, negative, 6, 3, 4.5, "dpmpp_2m", 64, 48, 2)
    assert torch.equal(latent["samples"], again["samples"])
    assert not torch.allclose(latent["samples"], other["samples"])

    pipe = PixArtPipeline(model.handle.module, t5.handle.module, load_t5_tokenizer(tiny_suite / "t5" / "t5_hf"),
                          None, vae_scale_factor=model.config.vae_scale_factor)
    noise = torch.randn((2, 4, 6, 8), generator=torch.Generator().manual_seed(5))
    ref = pipe("A Red Fox in snow", height=48, width=64, num_inference_steps=3, guidance_scale=4.5,
               latents=noise, use_resolution_binning=False, output_type="latent", num_images_per_prompt=2)
    torch.testing.assert_close(latent["samples"] * model.config.vae_scale_factor, ref, atol=1e-5, rtol=1e-5)


def test_lcm_and_every_sampler_run(nodes, sigma):
    model, t5, positive, negative = sigma
    for name in ("lcm", "sa_solver", "euler", "euler_ancestral", "ddim"):
        (latent,) = nodes["AtelierSampler"]().generate(model, positive, negative, 1, 4, 1.0 if name == "lcm" else 3.0,
                                                       name, 32, 32, 1)
        assert latent["samples"].shape == (1, 4, 4, 4) and torch.isfinite(latent["samples"]).all()


def test_256_square_works(nodes):
    model, _ = nodes["AtelierModelLoader"]().load("PixArt-Sigma-XL-2-256x256.pth")["result"]
    t5 = nodes["AtelierT5Loader"]().load("t5xxl_fp16.safetensors", "fp32", "cpu")[0]
    pos, neg = nodes["AtelierT5TextEncode"]().encode(t5, model, "a cat", "")
    (latent,) = nodes["AtelierSampler"]().generate(model, pos, neg, 0, 2, 4.5, "dpmpp_2m", 256, 256, 1)
    assert latent["samples"].shape == (1, 4, 32, 32) and torch.isfinite(latent["samples"]).all()


def test_vae_decode_encode_and_image_to_image(nodes, sigma):
    model, t5, positive, negative = sigma
    vae = nodes["AtelierVAELoader"]().load("sdxl_vae.safetensors")[0]
    (latent,) = nodes["AtelierSampler"]().generate(model, positive, negative, 3, 2, 4.5, "dpmpp_2m", 64, 64, 1)
    (image,) = nodes["AtelierVAEDecode"]().decode(latent, vae)
    assert image.shape == (1, 64, 64, 3) and 0 <= float(image.min()) and float(image.max()) <= 1
    pixels = torch.rand(1, 70, 90, 3, generator=torch.Generator().manual_seed(0))  # [B, H, W, C]
    (encoded,) = nodes["AtelierVAEEncode"]().encode(pixels, vae)
    assert encoded["samples"].shape == (1, 4, 8, 10)  # cropped to 64x80
    # both nodes equal the library's VAE on the same file (images in 0..1 <-> -1..1, centre crop 3/5 px)
    from pixart_atelier.nodes import host
    from pixart_atelier.pixart_core.vae import load_vae

    core = load_vae(host.model_path("vae", "sdxl_vae.safetensors"))
    with torch.no_grad():
        decoded = ((core.decode(latent["samples"]) + 1) / 2).clamp(0, 1).movedim(1, -1)  # [1, 64, 64, 3]
        latent_ref = core.encode(pixels[:, 3:67, 5:85].movedim(-1, 1) * 2 - 1)  # [1, 4, 8, 10]
    torch.testing.assert_close(image, decoded, atol=1e-6, rtol=0)
    torch.testing.assert_close(encoded["samples"], latent_ref, atol=1e-6, rtol=0)
    (img2img,) = nodes["AtelierSampler"]().generate(model, positive, negative, 3, 4, 4.5, "dpmpp_2m", 1024, 1024,
                                                    1, denoise=0.5, latent=encoded)
    assert img2img["samples"].shape == (1, 4, 8, 10)
    # at low denoise the result stays close to the input latent; at full denoise it does not
    (full,) = nodes["AtelierSampler"]().generate(model, positive, negative, 3, 4, 4.5, "dpmpp_2m", 1024, 1024,
                                                 1, denoise=1.0, latent=encoded)
    near = (img2img["samples"] - encoded["samples"]).abs().mean()
    far = (full["samples"] - encoded["samples"]).abs().mean()
    assert near < far


def test_bad_sizes_give_clear_errors(nodes, sigma):
    model, t5, positive, negative = sigma
    with pytest.raises(ValueError, match="multiples of 16"):
        nodes["AtelierSampler"]().generate(model, positive, negative, 0, 2, 4.5, "dpmpp_2m", 100, 64, 1)
    with pytest.raises(ValueError, match="16x16"):
        nodes["AtelierVAEEncode"]().encode(torch.rand(1, 8, 8, 3), None)


def test_controlnet_apply_and_sampler_match_the_pipeline(nodes, tiny_suite):
    from pixart_atelier.pixart_core.pipeline import PixArtPipeline
    from pixart_atelier.pixart_core.t5 import load_t5_tokenizer

    model, _ = nodes["AtelierModelLoader"]().load("PixArt-XL-2-1024-MS.pth", "fp32")["result"]
    t5 = nodes["AtelierT5Loader"]().load("t5xxl_fp16.safetensors", "fp32", "cpu")[0]
    positive, negative = nodes["AtelierT5TextEncode"]().encode(t5, model, "a stone cottage", "")
    (controlnet,) = nodes["AtelierControlNetLoader"]().load("PixArt-XL-2-1024-ControlNet.pth", "fp32")
    assert "ControlNet" in controlnet.summary
    vae = nodes["AtelierVAELoader"]().load("sd-vae-ft-ema.safetensors")[0]
    image = torch.rand(1, 40, 70, 3, generator=torch.Generator().manual_seed(0))  # IMAGE [B, H, W, C]
    apply = nodes["AtelierApplyControlNet"]()
    pos, neg = apply.apply(positive, negative, controlnet, image, vae, 0.6, 0.0, 1.0)
    assert positive.controls == () and negative.controls == ()  # the inputs are not changed
    assert pos.controls == neg.controls and len(pos.controls) == 1 and torch.equal(pos.hidden, positive.hidden)
    off = apply.apply(positive, negative, controlnet, image, vae, 0.0, 0.0, 1.0)  # strength 0: nothing attached
    assert off[0] is positive and off[1] is negative
    with pytest.raises(ValueError, match="start_percent"):
        apply.apply(positive, negative, controlnet, image, vae, 1.0, 0.7, 0.2)

    sampler = nodes["AtelierSampler"]()
    (latent,) = sampler.generate(model, pos, neg, 5, 3, 4.5, "dpmpp_2m", 64, 48, 1)
    (plain,) = sampler.generate(model, positive, negative, 5, 3, 4.5, "dpmpp_2m", 64, 48, 1)
    assert (latent["samples"] - plain["samples"]).abs().max() > 1e-4
    # the library with the same control image, ControlNet weights and VAE (its posterior mean)
    pipe = PixArtPipeline(model.handle.module, t5.handle.module, load_t5_tokenizer(tiny_suite / "t5" / "t5_hf"),
                          vae.handle.module, vae_scale_factor=model.config.vae_scale_factor)
    noise = torch.randn((1, 4, 6, 8), generator=torch.Generator().manual_seed(5))
    ref = pipe("a stone cottage", height=48, width=64, num_inference_steps=3, guidance_scale=4.5, latents=noise,
               use_resolution_binning=False, output_type="latent", control_image=image.movedim(-1, 1),
               controlnet=controlnet.handle.module, controlnet_conditioning_scale=0.6)
    # the node's VAE sees the image channels-last (IMAGE is [B, H, W, C]), the pipeline's contiguous: the
    # convolutions round differently (~1e-6 of the latent), which the random tiny DiT amplifies over the steps
    torch.testing.assert_close(latent["samples"] * model.config.vae_scale_factor, ref, atol=1e-4, rtol=1e-4)
    # a window outside the run (start = end = 1) is the plain result
    late_pos, late_neg = apply.apply(positive, negative, controlnet, image, vae, 0.6, 1.0, 1.0)
    (late,) = sampler.generate(model, late_pos, late_neg, 5, 3, 4.5, "dpmpp_2m", 64, 48, 1)
    assert torch.equal(late["samples"], plain["samples"])


def test_preprocessors_match_the_library(nodes):
    from pixart_atelier.nodes import host
    from pixart_atelier.pixart_core.controlnet.canny import canny_edges
    from pixart_atelier.pixart_core.controlnet.hed import hed_edges, load_hed

    assert "ControlNetHED.pth" in nodes["AtelierHEDPreprocessor"].INPUT_TYPES()["required"]["hed_name"][0]
    image = torch.rand(2, 48, 40, 3, generator=torch.Generator().manual_seed(1))  # IMAGE [B, H, W, C]
    rgb = image.movedim(-1, 1)  # [B, 3, H, W]
    (hed,) = nodes["AtelierHEDPreprocessor"]().detect(image, "ControlNetHED.pth")
    expected = hed_edges(load_hed(host.model_path("annotators", "ControlNetHED.pth")), rgb)  # [B, 1, H, W]
    assert hed.shape == (2, 48, 40, 3) and torch.equal(hed, expected.expand(-1, 3, -1, -1).movedim(1, -1))
    (canny,) = nodes["AtelierCannyPreprocessor"]().detect(image, 50, 120)
    expected = canny_edges(rgb, 50, 120)  # [B, 1, H, W]
    assert canny.shape == (2, 48, 40, 3) and torch.equal(canny, expected.expand(-1, 3, -1, -1).movedim(1, -1))
