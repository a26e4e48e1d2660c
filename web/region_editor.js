// PixArt Atelier region editor: a canvas on AtelierLayout nodes to draw the layout's boxes.
//
// The editor is a DOM widget added last to the node (serialize = false and options.serialize = false, so saved
// workflows keep the node's 5 positional widget values and the API prompt gets no extra input). Its state IS the
// `layout` widget's JSON: every edit rewrites that text, and every change of the text (typing, a loaded workflow,
// paste) redraws the boxes, so the layout is saved with the workflow. Drag on empty canvas to draw a box, drag a
// box to move it, drag a handle of the selected box to resize it; the panel below renames it, sets its prompt,
// moves it up or down the stack and deletes it (or press Delete). Changing width or height from the node scales
// the boxes. After Generate Layers / Regenerate Layer ran, their `layer_thumbs` UI output (one PNG per layer)
// is drawn inside the matching boxes of the Layout node upstream.
// Pure logic: region_model.js (tested with `node --test`); drawing: region_editor_draw.js.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { drawEditor, viewFor } from "./region_editor_draw.js";
import {
  EDITOR_WIDGET, LAYOUT_CLASS, THUMB_CLASSES, boxFromPoints, dragBox, hitTest, moveLayer, parseLayoutText,
  scaleLayers, serializeLayout, thumbQuery, thumbsForLayers, uniqueName,
} from "./region_model.js";

const CANVAS_MIN_HEIGHT = 240; // px: the drawing area
const PANEL_HEIGHT = 58; // px: the two rows of controls under it
const MARGIN = 6;
const NODE_MIN_WIDTH = 440; // px
const JSON_ROOM = 90; // px more than the minimum height, shared by the layout and prompt text widgets
const editors = new WeakMap(); // node -> RegionEditor

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** Chain `fn` after a widget's existing callback. */
function onWidgetChange(w, fn) {
  if (!w) return;
  const previous = w.callback;
  w.callback = function (value, ...rest) {
    const result = previous?.call(this, value, ...rest);
    fn(value);
    return result;
  };
}

function element(tag, props = {}, style = {}) {
  const el = Object.assign(document.createElement(tag), props);
  Object.assign(el.style, style);
  return el;
}

class RegionEditor {
  constructor(node) {
    this.node = node;
    this.layers = [];
    this.extra = {};
    this.error = null;
    this.selected = -1;
    this.draft = null;
    this.drag = null;
    this.lastText = null;
    this.thumbs = null; // the last layer_thumbs message
    this.images = new Map(); // thumb filename -> Image
    this.size = this.widgetSize();
    this.build();
    this.fromText(widget(node, "layout")?.value ?? "");
    onWidgetChange(widget(node, "layout"), (value) => this.fromText(value));
    for (const name of ["width", "height"]) onWidgetChange(widget(node, name), () => this.resized());
  }

  widgetSize() {
    const w = Number(widget(this.node, "width")?.value) || 1024;
    const h = Number(widget(this.node, "height")?.value) || 1024;
    return [w, h];
  }

  build() {
    this.root = element("div", { className: "pixart-region-editor" },
      { display: "flex", flexDirection: "column", gap: "4px", boxSizing: "border-box" });
    this.area = element("div", {}, { position: "relative", flex: "1 1 auto", minHeight: `${CANVAS_MIN_HEIGHT}px` });
    this.canvas = element("canvas", { tabIndex: 0, title: "Drag to draw a box; drag a box to move it, its handles to resize; Delete removes it" },
      { position: "absolute", inset: "0", width: "100%", height: "100%", outline: "none", touchAction: "none" });
    this.area.append(this.canvas);
    const row = (...children) => {
      const r = element("div", {}, { display: "flex", gap: "4px", alignItems: "center", height: "24px" });
      r.append(...children);
      return r;
    };
    const inputStyle = { flex: "1 1 auto", minWidth: "0", height: "22px", boxSizing: "border-box", fontSize: "12px",
      background: "var(--comfy-input-bg, #222)", color: "var(--input-text, #ddd)", border: "1px solid #555", borderRadius: "4px" };
    this.picker = element("select", { name: "layer", title: "Select a box (top of the stack first)" }, { ...inputStyle, flex: "0 0 90px" });
    this.nameInput = element("input", { name: "name", placeholder: "name", title: "The box's layer name" }, { ...inputStyle, flex: "0 1 110px" });
    this.promptInput = element("input", { name: "prompt", placeholder: "prompt of the selected box", title: "What this layer shows" }, inputStyle);
    const button = (text, name, title, fn) => {
      const b = element("button", { textContent: text, title, name },
        { height: "22px", minWidth: "26px", fontSize: "12px", cursor: "pointer" });
      b.addEventListener("click", (e) => { e.stopPropagation(); fn(); });
      return b;
    };
    this.buttons = [button("▲", "up", "Move the box up the stack (drawn over the boxes below)", () => this.reorder(1)),
      button("▼", "down", "Move the box down the stack", () => this.reorder(-1)),
      button("✕", "delete", "Delete the box (or press Delete on the canvas)", () => this.remove())];
    this.root.append(this.area, row(this.picker, this.nameInput, ...this.buttons), row(this.promptInput));

    this.picker.addEventListener("change", () => this.select(Number(this.picker.value)));
    this.nameInput.addEventListener("input", () => this.editSelected({ name: this.nameInput.value }));
    this.promptInput.addEventListener("input", () => this.editSelected({ prompt: this.promptInput.value }));
    for (const el of [this.canvas, this.nameInput, this.promptInput, this.picker]) {
      el.addEventListener("pointerdown", (e) => {
        if (e.button === 1) app.canvas?.processMouseDown(e); // middle drag pans the graph, as on text widgets
      });
    }
    this.canvas.addEventListener("pointerdown", (e) => this.pointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.pointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.pointerUp(e));
    this.canvas.addEventListener("pointercancel", () => { this.drag = null; this.draft = null; this.redraw(); });
    this.canvas.addEventListener("keydown", (e) => {
      if (e.key === "Delete" || e.key === "Backspace") { e.preventDefault(); e.stopPropagation(); this.remove(); }
    });
    new ResizeObserver(() => this.redraw()).observe(this.area);
  }

  /** The widget's JSON changed (typing, a loaded workflow, our own commit): adopt it. */
  fromText(text) {
    if (text === this.lastText) return;
    this.lastText = text;
    const parsed = parseLayoutText(text);
    this.error = parsed.error;
    if (!parsed.error) {
      this.layers = parsed.layers;
      this.extra = parsed.extra;
      if (this.selected >= this.layers.length) this.selected = this.layers.length - 1;
    }
    this.size = this.widgetSize();
    this.syncPanel();
    this.redraw();
  }

  /** Write the boxes back into the layout widget (the saved, queued state). */
  commit() {
    const text = serializeLayout(this.layers, this.extra);
    this.lastText = text;
    this.error = null;
    const w = widget(this.node, "layout");
    if (w) w.value = text;
    this.node.setDirtyCanvas?.(true, true);
    this.syncPanel();
    this.redraw();
  }

  /** Width or height changed by the user: scale the boxes to the new canvas. */
  resized() {
    const next = this.widgetSize();
    const [fromW, fromH] = this.size;
    this.size = next;
    if (this.error || !this.layers.length) return this.redraw();
    this.layers = scaleLayers(this.layers, fromW, fromH, next[0], next[1]);
    this.commit();
  }

  select(index) {
    this.selected = index >= 0 && index < this.layers.length ? index : -1;
    this.syncPanel();
    this.redraw();
  }

  editSelected(change) {
    if (this.selected < 0 || this.error) return;
    this.layers = this.layers.map((l, i) => (i === this.selected ? { ...l, ...change } : l));
    this.commit();
  }

  reorder(delta) {
    if (this.selected < 0 || this.error) return;
    ({ layers: this.layers, index: this.selected } = moveLayer(this.layers, this.selected, delta));
    this.commit();
  }

  remove() {
    if (this.selected < 0 || this.error) return;
    this.layers = this.layers.filter((_, i) => i !== this.selected);
    this.selected = Math.min(this.selected, this.layers.length - 1);
    this.commit();
  }

  syncPanel() {
    const layer = this.layers[this.selected];
    this.picker.replaceChildren(element("option", { value: "-1", textContent: this.layers.length ? "(none)" : "no boxes" }),
      ...this.layers.map((l, i) => element("option", { value: String(i), textContent: `${i + 1} ${l.name}` })).reverse());
    this.picker.value = String(layer ? this.selected : -1);
    for (const [input, key] of [[this.nameInput, "name"], [this.promptInput, "prompt"]]) {
      if (document.activeElement !== input) input.value = layer ? layer[key] : "";
      input.disabled = !layer || !!this.error;
    }
    for (const b of this.buttons) b.disabled = !layer || !!this.error;
  }

  /** A pointer event's position in canvas pixels (the node may be zoomed: the client rect says how much). */
  point(e) {
    const rect = this.canvas.getBoundingClientRect();
    const zoom = rect.width / (this.canvas.clientWidth || rect.width || 1);
    const view = viewFor(this.canvas.clientWidth, this.canvas.clientHeight, ...this.size);
    const x = ((e.clientX - rect.left) / zoom - view.x) / view.scale;
    const y = ((e.clientY - rect.top) / zoom - view.y) / view.scale;
    return [x, y, view.scale * zoom];
  }

  pointerDown(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    this.canvas.focus();
    if (this.error) return;
    const [x, y, scale] = this.point(e);
    const hit = hitTest(this.layers, x, y, this.selected, 8 / scale);
    this.canvas.setPointerCapture?.(e.pointerId);
    if (hit) {
      this.select(hit.index);
      this.drag = { mode: hit.handle, x, y, box: [...this.layers[hit.index].box], moved: false };
    } else {
      this.drag = { mode: "draw", x, y };
    }
  }

  pointerMove(e) {
    const [x, y, scale] = this.point(e);
    if (!this.drag) {
      const hit = this.error ? null : hitTest(this.layers, x, y, this.selected, 8 / scale);
      const cursors = { move: "move", n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize",
        nw: "nwse-resize", se: "nwse-resize", ne: "nesw-resize", sw: "nesw-resize" };
      this.canvas.style.cursor = hit ? cursors[hit.handle] : "crosshair";
      return;
    }
    e.stopPropagation();
    const [width, height] = this.size;
    if (this.drag.mode === "draw") {
      this.draft = boxFromPoints(this.drag.x, this.drag.y, x, y, width, height, 1);
    } else {
      const box = dragBox(this.drag.box, this.drag.mode, x - this.drag.x, y - this.drag.y, width, height);
      this.layers = this.layers.map((l, i) => (i === this.selected ? { ...l, box } : l));
      this.drag.moved = true;
    }
    this.redraw();
  }

  pointerUp(e) {
    const drag = this.drag;
    this.drag = null;
    this.draft = null;
    if (!drag) return;
    e.stopPropagation();
    this.canvas.releasePointerCapture?.(e.pointerId);
    const [x, y] = this.point(e);
    if (drag.mode === "draw") {
      const box = boxFromPoints(drag.x, drag.y, x, y, ...this.size);
      if (!box) return this.select(-1); // a click on empty canvas
      this.layers = [...this.layers, { name: uniqueName(this.layers), prompt: "", box }];
      this.selected = this.layers.length - 1;
      this.commit();
      this.promptInput.focus();
    } else if (drag.moved) {
      this.commit();
    }
  }

  /** The last `layer_thumbs` message of a Generate/Regenerate node fed by this layout. */
  setThumbs(thumbs) {
    this.thumbs = thumbs;
    for (const entry of thumbs ?? []) {
      if (!entry?.filename || this.images.has(entry.filename)) continue;
      const image = new Image();
      image.onload = () => this.redraw();
      image.onerror = () => this.images.delete(entry.filename); // temp files go at the server's next start
      image.src = api.apiURL(`${thumbQuery(entry)}&rand=${Math.random()}`);
      this.images.set(entry.filename, image);
    }
    this.redraw();
  }

  redraw() {
    const cssW = this.canvas.clientWidth;
    const cssH = this.canvas.clientHeight;
    if (!cssW || !cssH) return;
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(cssW * dpr) || this.canvas.height !== Math.round(cssH * dpr)) {
      this.canvas.width = Math.round(cssW * dpr);
      this.canvas.height = Math.round(cssH * dpr);
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const size = this.widgetSize();
    if (!this.drag) this.size = size; // set from outside (a loaded workflow, a script): adopt without scaling
    const { perLayer, background } = thumbsForLayers(this.layers, this.thumbs);
    const image = (entry) => (entry ? this.images.get(entry.filename) ?? null : null);
    drawEditor(ctx, { cssW, cssH, width: this.size[0], height: this.size[1], layers: this.layers,
      selected: this.selected, draft: this.draft, error: this.error, images: perLayer.map(image),
      background: image(background) });
  }
}

function addEditor(node) {
  const editor = new RegionEditor(node);
  const w = node.addDOMWidget(EDITOR_WIDGET, "pixart_atelier_regions", editor.root, {
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => CANVAS_MIN_HEIGHT + PANEL_HEIGHT + 2 * MARGIN,
    margin: MARGIN,
    serialize: false, // graphToPrompt: not an input of the node
    hideOnZoom: false,
  });
  w.serialize = false; // node.serialize(): not in widgets_values
  editors.set(node, editor);
  Object.defineProperty(node, "regionEditor", { value: editor, configurable: true }); // for scripts and tests
  const minimum = node.computeSize();
  // a new node gets room for a few lines of JSON too; a loaded one takes its saved size after this
  node.setSize([Math.max(node.size[0], minimum[0], NODE_MIN_WIDTH), Math.max(node.size[1], minimum[1] + JSON_ROOM)]);
  requestAnimationFrame(() => editor.redraw());
  return editor;
}

/** The graph node for an `executed` node id or an app.nodeOutputs key ("<subgraph id>:<node id>" in subgraphs). */
function nodeFor(key) {
  const text = String(key);
  const cut = text.lastIndexOf(":");
  const graph = cut < 0 ? app.graph : app.graph?.subgraphs?.get(text.slice(0, cut));
  const id = cut < 0 ? text : text.slice(cut + 1);
  return graph?.getNodeById(id) ?? graph?.getNodeById(Number(id)) ?? null;
}

/** The node feeding `node`'s input `name`, or null. */
function upstream(node, name) {
  const input = node?.inputs?.find((i) => i.name === name);
  const link = input?.link != null ? node.graph?.links?.get?.(input.link) ?? node.graph?.links?.[input.link] : null;
  return link ? node.graph.getNodeById(link.origin_id) : null;
}

/** The Layout node upstream of a Generate Layers node (or of a Regenerate Layer fed by one). */
function layoutNodeOf(node) {
  for (let hop = 0, current = node; current && hop < 4; hop++) {
    const source = upstream(current, "layout");
    if (source?.comfyClass === LAYOUT_CLASS) return source;
    current = upstream(current, "stack");
  }
  return null;
}

function showThumbs(key, output) {
  const thumbs = output?.layer_thumbs;
  if (!Array.isArray(thumbs)) return;
  const node = nodeFor(key);
  if (!THUMB_CLASSES.includes(node?.comfyClass)) return;
  const layoutNode = layoutNodeOf(node);
  const editor = layoutNode && editors.get(layoutNode);
  try {
    editor?.setThumbs(thumbs);
  } catch (error) {
    console.warn("[pixart_atelier] could not show the layer thumbnails:", error);
  }
}

app.registerExtension({
  name: "pixart_atelier.region_editor",

  setup() {
    api.addEventListener("executed", ({ detail }) => showThumbs(detail?.display_node ?? detail?.node, detail?.output));
  },

  // outputs restored by the frontend (back to a workflow tab, a history item loaded)
  onNodeOutputsUpdated(nodeOutputs) {
    for (const [key, output] of Object.entries(nodeOutputs ?? {})) showThumbs(key, output);
  },

  nodeCreated(node) {
    if (node?.comfyClass !== LAYOUT_CLASS) return;
    try {
      addEditor(node);
    } catch (error) {
      console.warn("[pixart_atelier] could not add the region editor:", error);
    }
  },
});
