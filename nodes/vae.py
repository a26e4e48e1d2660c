"""VAE decode and encode through core VAE objects (any VAE loader's output, or ours)."""

from __future__ import annotations

from .types import CATEGORY, check_image, check_latent


class AtelierVAEDecode:
    """Decode PixArt latents to an image with a core VAE."""

    DESCRIPTION = ("Decodes latents from the PixArt sampler with a VAE (SD-1.x for PixArt-α, SDXL for "
                   "PixArt-Σ). Large images are decoded in tiles when memory runs short.")
    CATEGORY = f"{CATEGORY}/latent"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("Decoded images [B, H, W, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": ("LATENT", {"tooltip": "Unscaled latents from the PixArt sampler."}),
            "vae": ("VAE", {"tooltip": "The VAE of the model's latent space."}),
        }}

    def decode(self, latent, vae):
        check_latent(latent["samples"], "latent", video=True)  # a ComfyUI video VAE takes [B, C, T, h, w]
        images = vae.decode(latent["samples"])
        if images.ndim == 5:  # video VAEs return [B, T, H, W, C]
            images = images.reshape(-1, *images.shape[-3:])
        return (images,)


class AtelierVAEEncode:
    """Encode an image to latents for PixArt image-to-image."""

    DESCRIPTION = "Encodes an image with a VAE into unscaled latents for the PixArt sampler's latent input."
    CATEGORY = f"{CATEGORY}/latent"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Unscaled latents [B, 4, H/8, W/8].",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Images [B, H, W, C] in 0..1; cropped to multiples of 16 pixels."}),
            "vae": ("VAE", {"tooltip": "The VAE of the model's latent space."}),
        }}

    def encode(self, image, vae):
        check_image(image, "image")
        height, width = image.shape[1] // 16 * 16, image.shape[2] // 16 * 16
        if height == 0 or width == 0:
            raise ValueError(f"the image is {image.shape[2]}x{image.shape[1]}; PixArt needs at least 16x16 pixels")
        top, left = (image.shape[1] - height) // 2, (image.shape[2] - width) // 2
        pixels = image[:, top:top + height, left:left + width, :3]  # [B, H, W, 3]
        return ({"samples": vae.encode(pixels)},)
