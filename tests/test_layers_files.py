"""LayerStack: exact composite, replace, and PSD / ORA / folder round trips (ours and files made elsewhere)."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from pixart_core.layers import Layer, LayerStack, parse_layout
from pixart_core.layers.pixels import visible_difference

W, H = 96, 64


def make_stack(count: int = 2, seed: int = 0, width: int = W, height: int = H) -> LayerStack:
    """An opaque noisy background and `count` foregrounds with random colour and alpha inside their boxes."""
    rng = np.random.default_rng(seed)
    specs = []
    for index in range(count):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        x1, y1 = int(rng.integers(x0 + 4, width + 1)), int(rng.integers(y0 + 4, height + 1))
        specs.append({"name": f"part {index}", "prompt": f"thing {index}", "box": [x0, y0, x1, y1]})
    layout = parse_layout({"width": width, "height": height, "prompt": "scene", "layers": specs})
    background = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)  # [H, W, 4]
    background[..., 3] = 255
    layers = [Layer("background", Image.fromarray(background, "RGBA"), (0, 0, width, height), "scene")]
    for spec in layout.layers:
        x0, y0, x1, y1 = spec.box
        pixels = np.zeros((height, width, 4), dtype=np.uint8)  # [H, W, 4]
        pixels[y0:y1, x0:x1] = rng.integers(0, 256, (y1 - y0, x1 - x0, 4), dtype=np.uint8)
        pixels[y0:y1, x0:x0 + 2, 3] = 255  # some opaque and some fully transparent pixels
        pixels[y0:y0 + 2, x0:x1, 3] = 0
        layers.append(Layer(spec.name, Image.fromarray(pixels, "RGBA"), spec.box, spec.prompt))
    return LayerStack(layers, width, height, layout)


def hand_over(stack: LayerStack) -> np.ndarray:
    """General straight-alpha Porter-Duff over (any backdrop alpha), pixel maths written out, white backdrop."""
    color = np.ones((stack.height, stack.width, 3))  # [H, W, 3]
    alpha = np.ones((stack.height, stack.width, 1))  # [H, W, 1]
    for layer in stack.layers:
        pixels = np.asarray(layer.image, dtype=np.float64) / 255.0  # [H, W, 4]
        src_c, src_a = pixels[..., :3], pixels[..., 3:]
        out_a = src_a + alpha * (1 - src_a)
        color = (src_c * src_a + color * alpha * (1 - src_a)) / np.maximum(out_a, 1e-12)
        alpha = out_a
    return color * 255.0


def rgb_diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.float64)[..., :3] - np.asarray(b, dtype=np.float64)[..., :3])


def assert_same_stack(back: LayerStack, stack: LayerStack, with_prompts: bool = True) -> None:
    assert (back.width, back.height) == (stack.width, stack.height)
    assert [layer.name for layer in back.layers] == [layer.name for layer in stack.layers]
    for ours, theirs in zip(stack.layers, back.layers):
        assert theirs.image.mode == "RGBA" and theirs.image.size == (stack.width, stack.height)
        assert visible_difference(ours.image, theirs.image) <= 1.0
        if with_prompts:
            assert theirs.prompt == ours.prompt and theirs.box == ours.box
    assert rgb_diff(back.composite, stack.composite).mean() <= 1.0
    if with_prompts:
        assert back.layout == stack.layout


def test_composite_is_the_alpha_over_of_the_layers():
    stack = make_stack(3)
    composite = stack.composite
    assert composite.mode == "RGB" and composite.size == (W, H)
    assert rgb_diff(composite, hand_over(stack)).max() <= 0.5 + 1e-9  # rounded, not truncated
    pil = Image.new("RGBA", (W, H), (255, 255, 255, 255))
    for layer in stack.layers:
        pil = Image.alpha_composite(pil, layer.image)
    assert rgb_diff(composite, pil).max() <= 1.0


def test_layer_and_stack_validate():
    with pytest.raises(ValueError, match=r"^Layer 'x' image: must be a PIL image in mode RGBA, got RGB"):
        Layer("x", Image.new("RGB", (W, H)), (0, 0, 1, 1))
    with pytest.raises(ValueError, match=r"^Layer 'x' box: must be 4 numbers"):
        Layer("x", Image.new("RGBA", (W, H)), (0, 0, 1))
    with pytest.raises(ValueError, match=r"^layers\[1\] \('y'\) image: size 8x8 differs from the 96x64 canvas"):
        LayerStack([Layer("x", Image.new("RGBA", (W, H)), (0, 0, W, H)),
                    Layer("y", Image.new("RGBA", (8, 8)), (0, 0, 8, 8))], W, H)
    with pytest.raises(ValueError, match=r"^layers: empty"):
        LayerStack([], W, H)


def test_replace_keeps_other_layers_and_updates_composite_and_layout():
    stack = make_stack(3)
    before = [np.asarray(layer.image).copy() for layer in stack.layers]
    old_composite = np.asarray(stack.composite).copy()
    red = np.zeros((H, W, 4), dtype=np.uint8)
    red[10:30, 10:40] = (255, 0, 0, 255)
    new_layer = Layer("part 1", Image.fromarray(red, "RGBA"), (10, 10, 40, 30), "a red square")
    updated = stack.replace(2, new_layer)
    assert updated is not stack and len(updated) == len(stack)
    for index in (0, 1, 3):
        assert updated.layers[index] is stack.layers[index]
        assert np.array_equal(np.asarray(updated.layers[index].image), before[index])
    assert updated.layers[2] is new_layer
    assert np.array_equal(np.asarray(stack.composite), old_composite)  # the old stack is unchanged
    assert rgb_diff(updated.composite, hand_over(updated)).max() <= 0.5 + 1e-9
    assert updated.layout.layers[1].prompt == "a red square" and updated.layout.layers[1].box == (10, 10, 40, 30)
    assert updated.layout.layers[0] == stack.layout.layers[0]
    with pytest.raises(ValueError, match=r"^index: 4 is not a layer index; the stack has 4 layers"):
        stack.replace(4, new_layer)
    with pytest.raises(ValueError, match=r"does not fit the stack's layout .*duplicate"):
        stack.replace(2, Layer("part 0", new_layer.image, (10, 10, 40, 30), "x"))


@pytest.mark.parametrize("name", ["stack.psd", "stack.ora", "stack_folder"])
@pytest.mark.parametrize("count", [2, 8, 64])
def test_round_trip(tmp_path, name, count):
    stack = make_stack(count, seed=count)
    path = stack.save(tmp_path / name)
    assert path == tmp_path / name
    assert_same_stack(LayerStack.load(path), stack)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left behind
    assert_same_stack(LayerStack.load(stack.save(path)), stack)  # overwriting works too


def test_folder_contents(tmp_path):
    stack = make_stack(2)
    folder = stack.save(tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["000_background.png", "001_part-0.png", "002_part-1.png",
                                                        "composite.png", "layout.json"]
    manifest = json.loads((folder / "layout.json").read_text())
    assert parse_layout(manifest["layout"]) == stack.layout
    assert rgb_diff(Image.open(folder / "composite.png"), stack.composite).max() == 0


def test_psd_matches_psd_tools_composite_and_has_merged_image(tmp_path):
    from psd_tools import PSDImage

    stack = make_stack(4)
    psd = PSDImage.open(stack.save(tmp_path / "a.psd"))
    assert psd.depth == 8 and psd.color_mode.name == "RGB" and (psd.width, psd.height) == (W, H)
    assert [layer.name for layer in psd] == [layer.name for layer in stack.layers]
    for layer, ours in zip(psd, stack.layers):  # cropped to the alpha bounds, placed at the offset
        assert layer.kind == "pixel" and layer.bbox == ours.image.getchannel("A").getbbox()
    assert rgb_diff(psd.composite().convert("RGB"), stack.composite).mean() <= 1.0
    merged = psd.topil()  # the stored merged image a viewer shows without compositing
    assert merged is not None and rgb_diff(merged.convert("RGB"), stack.composite).mean() <= 1.0


def test_psd_made_elsewhere_with_group_hidden_layer_and_offsets(tmp_path):
    from psd_tools import PSDImage
    from psd_tools.api.layers import Group, PixelLayer

    psd = PSDImage.new("RGB", (W, H), color=255, depth=8)
    background = np.zeros((H, W, 3), dtype=np.uint8)
    background[...] = (20, 120, 220)
    PixelLayer.fromarray(background, psd, name="Paper")  # no transparency channel: opaque
    square = np.zeros((10, 12, 4), dtype=np.uint8)
    square[...] = (250, 10, 10, 255)
    hidden = PixelLayer.fromarray(square, psd, name="Hidden", top=0, left=0)
    hidden.visible = False
    group = Group.new(psd, name="Group")
    PixelLayer.fromarray(square, group, name="Inner A", top=5, left=7)
    half = square.copy()
    half[..., :3] = (10, 200, 10)
    inner_b = PixelLayer.fromarray(half, group, name="Inner B", top=30, left=60)
    inner_b.opacity = 128
    edge = square.copy()
    edge[..., 3] = 200
    PixelLayer.fromarray(edge, psd, name="Edge", top=H - 6, left=W - 5)  # runs off the canvas
    path = tmp_path / "elsewhere.psd"
    psd.save(path)

    stack = LayerStack.load(path)
    assert [layer.name for layer in stack.layers] == ["Paper", "Inner A", "Inner B", "Edge"]
    assert stack.layout is None and all(layer.prompt == "" for layer in stack.layers)
    inner_a = np.asarray(stack.layers[1].image)
    assert inner_a[5, 7].tolist() == [250, 10, 10, 255] and inner_a[4, 7, 3] == 0 and inner_a[15, 19, 3] == 0
    assert stack.layers[1].box == (7, 5, 19, 15)
    assert np.asarray(stack.layers[2].image)[30, 60].tolist() == [10, 200, 10, 128]  # opacity in alpha
    assert stack.layers[3].box == (W - 5, H - 6, W, H)
    assert rgb_diff(stack.composite, PSDImage.open(path).composite().convert("RGB")).mean() <= 1.0


def test_ora_layout_per_spec(tmp_path):
    stack = make_stack(3, width=520, height=40)
    path = stack.save(tmp_path / "a.ora")
    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert archive.read("mimetype") == b"image/openraster"
        with open(path, "rb") as handle:  # readable at a fixed offset, as the spec intends
            assert handle.read(38 + len("image/openraster"))[30:38] == b"mimetype"
        names = archive.namelist()
        assert names[1] == "stack.xml"
        for required in ("mergedimage.png", "Thumbnails/thumbnail.png"):
            assert required in names
        import xml.etree.ElementTree as ElementTree

        root = ElementTree.fromstring(archive.read("stack.xml"))
        assert (root.get("w"), root.get("h")) == ("520", "40")
        layers = root.find("stack").findall("layer")
        assert [layer.get("name") for layer in layers] == ["part 2", "part 1", "part 0", "background"]  # top first
        assert all(layer.get("src").startswith("data/") and layer.get("src") in names for layer in layers)
        thumbnail = Image.open(io.BytesIO(archive.read("Thumbnails/thumbnail.png")))
        assert max(thumbnail.size) <= 256 and thumbnail.info.get("interlace", 0) == 0
        merged = Image.open(io.BytesIO(archive.read("mergedimage.png")))
        assert merged.size == (520, 40) and rgb_diff(merged.convert("RGB"), stack.composite).max() == 0


def test_ora_made_elsewhere_with_nested_stack_hidden_layer_and_offsets(tmp_path):
    def png(color, size):
        buffer = io.BytesIO()
        Image.new("RGBA", size, color).save(buffer, format="PNG")
        return buffer.getvalue()

    xml = ('<?xml version="1.0" encoding="UTF-8"?><image w="96" h="64" version="0.0.3"><stack>'
           '<layer name="Top" src="data/top.png" x="80" y="50" opacity="0.5"/>'
           '<stack name="Group" opacity="0.5"><layer name="In group" src="data/mid.png" x="3" y="4"/></stack>'
           '<layer name="Secret" src="data/top.png" visibility="hidden"/>'
           '<layer name="Back" src="data/back.png"/></stack></image>')
    path = tmp_path / "krita_made.ora"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "image/openraster", compress_type=zipfile.ZIP_STORED)
        archive.writestr("stack.xml", xml)
        archive.writestr("data/top.png", png((255, 0, 0, 255), (30, 30)))
        archive.writestr("data/mid.png", png((0, 255, 0, 200), (10, 10)))
        archive.writestr("data/back.png", png((0, 0, 255, 255), (96, 64)))
    stack = LayerStack.load(path)
    assert [layer.name for layer in stack.layers] == ["Back", "In group", "Top"]
    assert np.asarray(stack.layers[1].image)[4, 3].tolist() == [0, 255, 0, 100]
    assert stack.layers[1].box == (3, 4, 13, 14)
    assert np.asarray(stack.layers[2].image)[63, 95].tolist() == [255, 0, 0, 128]
    assert stack.layers[2].box == (80, 50, 96, 64)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    stack = make_stack(2)
    blocked = tmp_path / "taken.psd"
    blocked.mkdir()  # an unwritable target: a folder where the file should go
    with pytest.raises(OSError, match=r"^path .*taken\.psd: could not write the PSD file .*nothing written"):
        stack.save(blocked)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.psd"] and not any(blocked.iterdir())

    existing = stack.save(tmp_path / "keep.ora")
    original = existing.read_bytes()
    import pixart_core.layers.ora_file as ora_file

    def broken(image):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ora_file, "_png_bytes", broken)
    with pytest.raises(OSError, match=r"keep\.ora: could not write the OpenRaster file \(No space left"):
        make_stack(3).save(existing)
    assert existing.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.ora", "taken.psd"]


def test_failed_folder_write_keeps_old_folder(tmp_path, monkeypatch):
    folder = make_stack(2).save(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        if str(fp).endswith("002_part-1.png"):
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match=r"could not write the layer folder"):
        make_stack(2, seed=5).save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"photos: folder holds files other than a saved layer stack"):
        make_stack(1).save(folder)
    assert [p.name for p in folder.iterdir()] == ["holiday.jpg"]


def test_bad_files_are_named(tmp_path):
    import pickle

    stack = make_stack(1)
    with pytest.raises(ValueError, match=r"^path .*x\.png: unknown extension '\.png'"):
        stack.save(tmp_path / "x.png")
    cases = {
        "notes.txt": b"hello",
        "model.pkl": pickle.dumps({"a": 1}),  # refused by content, never unpickled
        "fake.psd": b"8BPS" + b"\x00" * 10,
        "plain.zip": b"",
        "broken.ora": b"PK\x03\x04garbage",
    }
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as archive:
        archive.writestr("readme.txt", "not an image")
    for name, data in cases.items():
        if data:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"^path .*{name.replace('.', '[.]')}: ") as info:
            LayerStack.load(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(OSError, match=r"^path .*missing\.psd: cannot read"):
        LayerStack.load(tmp_path / "missing.psd")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty_folder: folder has no layout\.json"):
        LayerStack.load(empty)


def test_folder_manifest_cannot_point_outside(tmp_path):
    folder = make_stack(1).save(tmp_path / "out")
    manifest = json.loads((folder / "layout.json").read_text())
    manifest["layers"][1]["file"] = "../../etc/passwd"
    (folder / "layout.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"layout\.json: layers\[1\]\.file must be a file name"):
        LayerStack.load(folder)
    os.remove(folder / "layout.json")
