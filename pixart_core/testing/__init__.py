"""Test fixtures: tiny random-weight checkpoints in every layout the loaders read (like `torch.testing`).

Nothing in the runtime library imports this package; only `python -m pixart_core make-tiny` (inside the
command), the tests and the benchmarks do. Shapes come from the real modules built on the meta device, so the
fixtures follow the models. Modules:
    transformers  tiny PixArt DiTs (official, diffusers, ComfyUI and ControlNet files)
    t5            tiny T5 encoders (Hugging Face folders, ComfyUI single files down to fp8)
    vae           tiny VAEs (diffusers folders, LDM single files, full-checkpoint style)
    suite         all of the above plus diffusers pipeline roots and a ComfyUI models folder
    shapes_data   procedural scenes (shapes, colours, places, backgrounds) with masks, boxes and edge maps
    shapes_judge  colour-mask judge of placement and background in a generated image
    shapes_training, ddpm_loss, shapes_world_files   training the shapes world (tools/train_shapes_world.py)
    shapes_world, shapes_world_eval   the trained fixture (tests/fixtures/shapes_world) and its figures
    transparent_vae, rgba_scenes   tiny LayerDiffuse files; procedural RGBA subjects for the matte
"""
