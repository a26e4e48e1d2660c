// Pure helpers of the region editor on AtelierLayout nodes (no ComfyUI imports, so that `node --test tests/web/`
// can exercise them). The layout widget's JSON is {"layers": [{"name", "prompt", "box": [x0, y0, x1, y1]}]},
// layers bottom to top, boxes in canvas pixels (nodes/layout_node.py adds width, height and the prompts).
// The glue that talks to the frontend is region_editor.js; drawing is region_editor_draw.js.

/** ComfyUI class of the node that carries the editor. */
export const LAYOUT_CLASS = "AtelierLayout";
/** ComfyUI classes whose `layer_thumbs` UI output feeds the editor's thumbnails. */
export const THUMB_CLASSES = ["AtelierGenerateLayers", "AtelierRegenerateLayer"];
/** Name of the editor widget (never serialised: saved workflows keep 5 widget values). */
export const EDITOR_WIDGET = "region editor";
/** Smallest box side, in canvas pixels; a shorter drag is a click, not a box. */
export const MIN_BOX = 16;
/** Reserved for the stack's bottom layer (pixart_core/layers/layout.py BACKGROUND_NAME). */
export const BACKGROUND_NAME = "background";
/** Handles of a box: corners and edges; "move" = inside. */
export const HANDLES = ["nw", "n", "ne", "e", "se", "s", "sw", "w"];

const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
  "#fabed4", "#469990", "#dcbeff", "#9a6324"];

/** A distinct colour per layer index. */
export function layerColor(index) {
  return PALETTE[((index % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

/**
 * The widget text as {layers, extra, error}: `layers` a fresh array of {name, prompt, box}, `extra` the other
 * top-level keys (kept when writing back), `error` null or a one-line reason (then layers is null).
 * @param {string} text
 */
export function parseLayoutText(text) {
  if (typeof text !== "string" || !text.trim()) return { layers: [], extra: {}, error: null };
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    return { layers: null, extra: {}, error: `layout: invalid JSON (${String(err.message).split("\n")[0]})` };
  }
  if (Array.isArray(data)) data = { layers: data };
  if (data === null || typeof data !== "object") return { layers: null, extra: {}, error: "layout: must be a JSON object with \"layers\"" };
  const { layers: raw = [], ...extra } = data;
  if (!Array.isArray(raw)) return { layers: null, extra, error: "layout.layers: must be a list of layers" };
  const layers = [];
  for (const [i, entry] of raw.entries()) {
    const where = `layout.layers[${i}]`;
    if (entry === null || typeof entry !== "object" || Array.isArray(entry))
      return { layers: null, extra, error: `${where}: must be an object with name, prompt and box` };
    const box = entry.box;
    if (!Array.isArray(box) || box.length !== 4 || !box.every(isNumber))
      return { layers: null, extra, error: `${where}.box: must be 4 numbers [x0, y0, x1, y1]` };
    layers.push({ ...entry, name: typeof entry.name === "string" ? entry.name : `layer ${i + 1}`,
      prompt: typeof entry.prompt === "string" ? entry.prompt : "", box: [...box] });
  }
  return { layers, extra, error: null };
}

/**
 * The widget text for `layers` (and the kept `extra` keys): JSON with one line per layer, readable in the small
 * text widget: {"layers": [\n  {"name": "sun", "prompt": "...", "box": [x0, y0, x1, y1]},\n  ...\n]}.
 */
export function serializeLayout(layers, extra = {}) {
  const pair = (key, value) => `${JSON.stringify(key)}: ${JSON.stringify(value)}`;
  const row = ({ name, prompt, box, ...rest }) => `  {${[pair("name", name), pair("prompt", prompt),
    `"box": [${box.join(", ")}]`, ...Object.entries(rest).map(([k, v]) => pair(k, v))].join(", ")}}`;
  const head = Object.entries(extra).map(([k, v]) => `${pair(k, v)},\n`).join("");
  return layers.length ? `{${head}"layers": [\n${layers.map(row).join(",\n")}\n]}` : `{${head}"layers": []}`;
}

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

/**
 * A box from a drag between two canvas points, clamped into width x height and rounded to whole pixels;
 * null when a side is shorter than `min` (a click).
 */
export function boxFromPoints(ax, ay, bx, by, width, height, min = MIN_BOX) {
  const x0 = Math.round(clamp(Math.min(ax, bx), 0, width));
  const x1 = Math.round(clamp(Math.max(ax, bx), 0, width));
  const y0 = Math.round(clamp(Math.min(ay, by), 0, height));
  const y1 = Math.round(clamp(Math.max(ay, by), 0, height));
  return x1 - x0 < min || y1 - y0 < min ? null : [x0, y0, x1, y1];
}

/**
 * `box` after dragging `handle` by (dx, dy) canvas pixels: "move" shifts it inside the canvas, a handle moves
 * its edges (not past the opposite edge less `min`). Whole pixels.
 */
export function dragBox(box, handle, dx, dy, width, height, min = MIN_BOX) {
  let [x0, y0, x1, y1] = box;
  if (handle === "move") {
    const mx = clamp(dx, -x0, width - x1);
    const my = clamp(dy, -y0, height - y1);
    return [x0 + mx, y0 + my, x1 + mx, y1 + my].map(Math.round);
  }
  if (handle.includes("w")) x0 = clamp(x0 + dx, 0, x1 - min);
  if (handle.includes("e")) x1 = clamp(x1 + dx, x0 + min, width);
  if (handle.includes("n")) y0 = clamp(y0 + dy, 0, y1 - min);
  if (handle.includes("s")) y1 = clamp(y1 + dy, y0 + min, height);
  return [x0, y0, x1, y1].map(Math.round);
}

/** Where a handle of `box` sits, in canvas pixels. */
export function handlePoint(box, handle) {
  const [x0, y0, x1, y1] = box;
  const x = handle.includes("w") ? x0 : handle.includes("e") ? x1 : (x0 + x1) / 2;
  const y = handle.includes("n") ? y0 : handle.includes("s") ? y1 : (y0 + y1) / 2;
  return [x, y];
}

/**
 * What a press at canvas point (x, y) grabs: {index, handle} or null. The selected box's handles come first
 * (within `tolerance` canvas pixels), then boxes from the top of the stack down.
 */
export function hitTest(layers, x, y, selected = -1, tolerance = 8) {
  if (selected >= 0 && selected < layers.length) {
    for (const handle of HANDLES) {
      const [hx, hy] = handlePoint(layers[selected].box, handle);
      if (Math.abs(x - hx) <= tolerance && Math.abs(y - hy) <= tolerance) return { index: selected, handle };
    }
  }
  for (let i = layers.length - 1; i >= 0; i--) {
    const [x0, y0, x1, y1] = layers[i].box;
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1) return { index: i, handle: "move" };
  }
  return null;
}

/** A layer name not used yet ("box 1", "box 2", ...), never "background". */
export function uniqueName(layers, base = "box") {
  const used = new Set(layers.map((l) => l.name));
  for (let n = layers.length + 1; ; n++) if (!used.has(`${base} ${n}`)) return `${base} ${n}`;
}

/** Layers with layer `index` moved `delta` places up (+) or down (-) the stack; returns {layers, index}. */
export function moveLayer(layers, index, delta) {
  const to = clamp(index + delta, 0, layers.length - 1);
  const out = [...layers];
  const [item] = out.splice(index, 1);
  out.splice(to, 0, item);
  return { layers: out, index: to };
}

/** Boxes scaled from a fromW x fromH canvas to toW x toH (when the user changes the node's size). */
export function scaleLayers(layers, fromW, fromH, toW, toH) {
  if (!(fromW > 0 && fromH > 0) || (fromW === toW && fromH === toH)) return layers;
  const sx = toW / fromW;
  const sy = toH / fromH;
  return layers.map((l) => {
    const [x0, y0, x1, y1] = l.box;
    return { ...l, box: [Math.round(x0 * sx), Math.round(y0 * sy), Math.round(x1 * sx), Math.round(y1 * sy)] };
  });
}

/** The largest width x height rectangle (aspect kept) centred in an areaW x areaH area: {x, y, w, h}. */
export function fitRect(areaW, areaH, width, height) {
  const scale = Math.max(0, Math.min(areaW / width, areaH / height));
  const w = width * scale;
  const h = height * scale;
  return { x: (areaW - w) / 2, y: (areaH - h) / 2, w, h };
}

/**
 * The thumbnail entry of each layout layer from a `layer_thumbs` UI message (one entry per stack layer, index
 * 0 the background): matched by name, else by stack index - 1. Returns an array parallel to `layers` (null where
 * there is none) and the background entry.
 */
export function thumbsForLayers(layers, thumbs) {
  const entries = Array.isArray(thumbs) ? thumbs.filter((t) => t && typeof t.filename === "string") : [];
  const byName = new Map(entries.map((t) => [t.name, t]));
  const byIndex = new Map(entries.map((t) => [t.index, t]));
  const background = byName.get(BACKGROUND_NAME) ?? byIndex.get(0) ?? null;
  const perLayer = layers.map((l, i) => byName.get(l.name) ?? byIndex.get(i + 1) ?? null);
  return { perLayer, background };
}

/** The /view query of a thumbnail entry (the caller prefixes api.apiURL). */
export function thumbQuery(entry) {
  const q = (v) => encodeURIComponent(v ?? "");
  return `/view?filename=${q(entry.filename)}&type=${q(entry.type ?? "temp")}&subfolder=${q(entry.subfolder)}`;
}
