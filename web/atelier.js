// PixArt Atelier frontend extension: shows the variant AtelierModelLoader detected ON the node, after a run.
//
// The loader returns {"ui": {"text": [summary]}}; ComfyUI forwards it in the `executed` event, which the
// frontend hands to node.onExecuted(output) but does not display. On the first such message this adds a
// read-only textarea widget named "detected variant" (last, and with serialize = false and
// options.serialize = false, so saved workflows keep their 3 positional widget values and the API prompt
// gets no extra input). Nothing is added before a run, so saved layouts look as they were. When the frontend
// restores outputs (onNodeOutputsUpdated: back to a workflow tab, a queue/history item loaded) the text is
// shown again. A run in which the loader's output came from the server's cache without the loader being
// staged sends no `executed` for it, so the box then stays as it was.
// Formatting and sizing logic live in detected_text.js (pure, tested with `node --test`).

import { app } from "../../scripts/app.js";
import { LOADER_CLASS, WIDGET_NAME, detectedText, widgetHeight, wrappedRows } from "./detected_text.js";

const DEFAULT_FONT_SIZE = 10; // px, the frontend's default text-widget font size
const FALLBACK_CHAR_WIDTH = 6; // px per character of 10 px monospace, when no canvas can measure it
const MARGIN = 5; // px around the box (core text widgets use 10; kept small so the node grows little)
const TEXTAREA_PADDING = 4; // px: 2 px above and below (.comfy-multiline-input)

/** Font size (px) of the textarea, or of the frontend's text widgets while it is not in the page yet. */
function fontSize(element) {
  const own = element.isConnected ? parseFloat(getComputedStyle(element).fontSize) : NaN;
  if (Number.isFinite(own)) return own;
  const root = getComputedStyle(document.documentElement).getPropertyValue("--comfy-textarea-font-size");
  return Number.isFinite(parseFloat(root)) ? parseFloat(root) : DEFAULT_FONT_SIZE;
}

/** Average character width (px) of the textarea's font, measured once per font. */
const charWidths = new Map();
function charWidth(element) {
  const font = (element.isConnected && getComputedStyle(element).font) || `${fontSize(element)}px monospace`;
  if (!charWidths.has(font)) {
    const context = document.createElement("canvas").getContext("2d");
    let width = (FALLBACK_CHAR_WIDTH * fontSize(element)) / DEFAULT_FONT_SIZE;
    if (context) {
      context.font = font;
      const sample = "PixArt-Σ 1024 (depth 28, 300 tokens, PE x2, no micro-conditions; official layout)";
      width = context.measureText(sample).width / sample.length || width;
    }
    charWidths.set(font, width);
  }
  return charWidths.get(font);
}

function lineHeight(element) {
  const explicit = element.isConnected ? parseFloat(getComputedStyle(element).lineHeight) : NaN; // NaN for "normal"
  return Number.isFinite(explicit) ? explicit : Math.ceil(fontSize(element) * 1.3);
}

/** The node's display widget, created on first use. */
function displayWidget(node) {
  const existing = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (existing) return existing;

  const textarea = document.createElement("textarea");
  textarea.className = "comfy-multiline-input pixart-atelier-detected";
  textarea.readOnly = true;
  textarea.spellcheck = false;
  textarea.title = "Variant detected from the weights by the last run (not saved with the workflow).";
  textarea.style.opacity = "0.85";

  // The frontend gives the element the widget's height less its margin above and below. Rows are counted
  // for the node's width (the element's own width is not laid out yet when the node is first sized).
  let widget;
  const height = () => {
    const margin = widget?.margin ?? MARGIN;
    const columns = Math.max(8, (node.size[0] - 2 * margin - TEXTAREA_PADDING) / charWidth(textarea));
    const rows = wrappedRows(textarea.value, columns);
    return widgetHeight(rows, { lineHeight: lineHeight(textarea), padding: TEXTAREA_PADDING, minRows: 1 }) + 2 * margin;
  };
  widget = node.addDOMWidget(WIDGET_NAME, "pixart_atelier_detected", textarea, {
    getValue: () => textarea.value,
    setValue: (value) => {
      textarea.value = value ?? "";
    },
    getMinHeight: height,
    getMaxHeight: height,
    margin: MARGIN,
    serialize: false, // graphToPrompt: not an input of the node
  });
  widget.serialize = false; // node.serialize(): not in widgets_values
  widget.inputEl = textarea;
  // middle-button drags over the box pan the canvas, as with core text widgets
  textarea.addEventListener("pointerdown", (event) => {
    if (event.button === 1) app.canvas.processMouseDown(event);
  });
  return widget;
}

/** Grow the node (never shrink it) to the size its widgets need. */
function growToFit(node) {
  const minimum = node.computeSize();
  if (minimum[0] > node.size[0] || minimum[1] > node.size[1]) {
    node.setSize([Math.max(node.size[0], minimum[0]), Math.max(node.size[1], minimum[1])]);
  }
  node.setDirtyCanvas?.(true, true);
}

/** Put `text` in the node's display widget and grow the node to fit it (again once the box is laid out). */
function showDetected(node, text) {
  const widget = displayWidget(node);
  widget.value = text;
  growToFit(node);
  requestAnimationFrame(() => growToFit(node));
}

/** The graph node for a key of app.nodeOutputs (a node id, or "<subgraph id>:<node id>" inside a subgraph). */
function nodeForOutputKey(key) {
  const cut = key.lastIndexOf(":");
  if (cut < 0) return app.graph?.getNodeById(key) ?? app.graph?.getNodeById(Number(key)) ?? null;
  const subgraph = app.graph?.subgraphs?.get(key.slice(0, cut));
  const id = key.slice(cut + 1);
  return subgraph?.getNodeById(id) ?? subgraph?.getNodeById(Number(id)) ?? null;
}

app.registerExtension({
  name: "pixart_atelier.detected",

  // Outputs restored by the frontend (switching back to a workflow tab, loading a queue/history item): the
  // graph was rebuilt from its saved form, without the display widget, so show the text again.
  onNodeOutputsUpdated(nodeOutputs) {
    for (const [key, output] of Object.entries(nodeOutputs ?? {})) {
      const text = detectedText(output);
      if (text === null) continue;
      const node = nodeForOutputKey(key);
      if (node?.comfyClass !== LOADER_CLASS) continue;
      try {
        showDetected(node, text);
      } catch (error) {
        console.warn("[pixart_atelier] could not show the detected variant:", error);
      }
    }
  },

  nodeCreated(node) {
    if (node?.comfyClass !== LOADER_CLASS) return;
    const previous = node.onExecuted;
    node.onExecuted = function (message) {
      const result = previous?.apply(this, arguments);
      const text = detectedText(message);
      if (text !== null) {
        try {
          showDetected(this, text);
        } catch (error) {
          console.warn("[pixart_atelier] could not show the detected variant:", error);
        }
      }
      return result;
    };
  },
});
