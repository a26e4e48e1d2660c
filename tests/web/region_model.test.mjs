// node --test tests/web/  (also run by tests/test_web.py): the region editor's pure logic (web/region_model.js)
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  EDITOR_WIDGET, LAYOUT_CLASS, boxFromPoints, dragBox, fitRect, hitTest, moveLayer, parseLayoutText, scaleLayers,
  serializeLayout, thumbQuery, thumbsForLayers, uniqueName,
} from "../../web/region_model.js";

const TWO = [{ name: "sun", prompt: "a sun", box: [100, 100, 400, 500] },
  { name: "tree", prompt: "a tree", box: [300, 200, 900, 700] }];

test("names match the node class", () => {
  assert.equal(LAYOUT_CLASS, "AtelierLayout");
  assert.equal(EDITOR_WIDGET, "region editor");
});

test("the widget JSON round-trips, keeping other keys", () => {
  const text = serializeLayout(TWO, { negative: "blurry" });
  const parsed = parseLayoutText(text);
  assert.equal(parsed.error, null);
  assert.deepEqual(parsed.layers, TWO);
  assert.deepEqual(parsed.extra, { negative: "blurry" });
  assert.equal(serializeLayout(parsed.layers, parsed.extra), text);
  assert.deepEqual(parseLayoutText(JSON.stringify(TWO)).layers, TWO); // a bare list
  assert.deepEqual(parseLayoutText("  ").layers, []);
});

test("broken JSON gives one line naming the field, and no layers", () => {
  for (const [text, start] of [["{\"layers\": [", "layout: invalid JSON"], ["{\"layers\": 3}", "layout.layers:"],
    ["[{\"box\": [1, 2, 3]}]", "layout.layers[0].box:"], ["[7]", "layout.layers[0]:"], ["42", "layout:"]]) {
    const parsed = parseLayoutText(text);
    assert.equal(parsed.layers, null, text);
    assert.ok(parsed.error.startsWith(start) && !parsed.error.includes("\n"), parsed.error);
  }
});

test("a drag makes a clamped whole-pixel box; a click makes none", () => {
  assert.deepEqual(boxFromPoints(400.4, 500.6, 100.2, -20, 1024, 768), [100, 0, 400, 501]);
  assert.equal(boxFromPoints(10, 10, 14, 300, 1024, 768), null);
});

test("moving stays inside the canvas; handles resize and keep a minimum size", () => {
  assert.deepEqual(dragBox([100, 100, 400, 500], "move", 200, 50, 1024, 768), [300, 150, 600, 550]);
  assert.deepEqual(dragBox([100, 100, 400, 500], "move", 900, -900, 1024, 768), [724, 0, 1024, 400]);
  assert.deepEqual(dragBox([100, 100, 400, 500], "se", -100, -100, 1024, 768), [100, 100, 300, 400]);
  assert.deepEqual(dragBox([100, 100, 400, 500], "w", 500, 0, 1024, 768, 16), [384, 100, 400, 500]);
  assert.deepEqual(dragBox([100, 100, 400, 500], "n", 0, -300, 1024, 768), [100, 0, 400, 500]);
});

test("hit testing: selected handles first, then the top box", () => {
  assert.deepEqual(hitTest(TWO, 350, 300), { index: 1, handle: "move" }); // overlap: tree is on top
  assert.deepEqual(hitTest(TWO, 150, 150), { index: 0, handle: "move" });
  assert.deepEqual(hitTest(TWO, 402, 498, 0, 8), { index: 0, handle: "se" });
  assert.equal(hitTest(TWO, 1000, 10), null);
});

test("reordering, naming, scaling", () => {
  const up = moveLayer(TWO, 0, 1);
  assert.deepEqual(up.layers.map((l) => l.name), ["tree", "sun"]);
  assert.equal(up.index, 1);
  assert.equal(moveLayer(TWO, 1, 1).index, 1); // already on top
  assert.equal(uniqueName(TWO), "box 3");
  assert.equal(uniqueName([{ name: "box 2" }]), "box 3");
  assert.deepEqual(scaleLayers(TWO, 1024, 768, 512, 384)[0].box, [50, 50, 200, 250]);
  assert.equal(scaleLayers(TWO, 1024, 768, 1024, 768), TWO);
});

test("the canvas keeps the layout's aspect ratio", () => {
  assert.deepEqual(fitRect(400, 300, 1024, 1024), { x: 50, y: 0, w: 300, h: 300 });
  assert.deepEqual(fitRect(400, 300, 2048, 1024), { x: 0, y: 50, w: 400, h: 200 });
});

test("layer_thumbs entries match boxes by name, else by stack index", () => {
  const thumbs = [{ name: "background", index: 0, filename: "b.png", subfolder: "", type: "temp" },
    { name: "sun", index: 1, filename: "s.png", subfolder: "", type: "temp" },
    { name: "old name", index: 2, filename: "t.png", subfolder: "", type: "temp" }];
  const { perLayer, background } = thumbsForLayers(TWO, thumbs);
  assert.equal(background.filename, "b.png");
  assert.deepEqual(perLayer.map((t) => t?.filename), ["s.png", "t.png"]);
  assert.deepEqual(thumbsForLayers(TWO, undefined).perLayer, [null, null]);
  assert.equal(thumbQuery({ filename: "a b.png", subfolder: "x" }), "/view?filename=a%20b.png&type=temp&subfolder=x");
});
