// Drawing of the region editor (region_editor.js) on a 2D canvas context: the layout canvas letterboxed in the
// widget, each box in its layer colour with its name, the last generated layer thumbnails inside their boxes,
// the selected box's handles, the box being drawn, and the JSON error when the text does not parse.
// No ComfyUI imports: the caller passes everything in.

import { HANDLES, fitRect, handlePoint, layerColor } from "./region_model.js";

const HANDLE_SIZE = 8; // px on screen
const LABEL_FONT = "12px sans-serif";

/** Canvas-pixel -> screen mapping of the letterboxed layout canvas in a cssW x cssH widget. */
export function viewFor(cssW, cssH, width, height) {
  const rect = fitRect(cssW, cssH, width, height);
  return { ...rect, scale: rect.w / width };
}

function toScreen(view, box) {
  const [x0, y0, x1, y1] = box;
  return [view.x + x0 * view.scale, view.y + y0 * view.scale, (x1 - x0) * view.scale, (y1 - y0) * view.scale];
}

function drawLabel(ctx, text, x, y, color) {
  ctx.font = LABEL_FONT;
  const w = ctx.measureText(text).width + 8;
  ctx.fillStyle = color;
  ctx.fillRect(x, y, w, 16);
  ctx.fillStyle = "#fff";
  ctx.textBaseline = "middle";
  ctx.fillText(text, x + 4, y + 8);
}

function drawImage(ctx, image, x, y, w, h) {
  if (!image || !image.complete || !image.naturalWidth) return false;
  ctx.drawImage(image, x, y, w, h);
  return true;
}

/**
 * Draw the editor.
 * @param {CanvasRenderingContext2D} ctx already scaled to CSS pixels
 * @param {{cssW: number, cssH: number, width: number, height: number, layers: Array, selected: number,
 *          draft: number[] | null, error: string | null, images: Array, background: HTMLImageElement | null}} s
 */
export function drawEditor(ctx, s) {
  const view = viewFor(s.cssW, s.cssH, s.width, s.height);
  ctx.clearRect(0, 0, s.cssW, s.cssH);
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(0, 0, s.cssW, s.cssH);
  ctx.fillStyle = "#3a3a3a";
  ctx.fillRect(view.x, view.y, view.w, view.h);
  if (!drawImage(ctx, s.background, view.x, view.y, view.w, view.h)) {
    ctx.strokeStyle = "#4a4a4a";
    ctx.lineWidth = 1;
    for (let k = 1; k < 4; k++) {
      ctx.beginPath();
      ctx.moveTo(view.x + (view.w * k) / 4, view.y);
      ctx.lineTo(view.x + (view.w * k) / 4, view.y + view.h);
      ctx.moveTo(view.x, view.y + (view.h * k) / 4);
      ctx.lineTo(view.x + view.w, view.y + (view.h * k) / 4);
      ctx.stroke();
    }
  }
  s.layers.forEach((layer, i) => {
    const [x, y, w, h] = toScreen(view, layer.box);
    const color = layerColor(i);
    if (!drawImage(ctx, s.images?.[i], x, y, w, h)) {
      ctx.globalAlpha = 0.22;
      ctx.fillStyle = color;
      ctx.fillRect(x, y, w, h);
      ctx.globalAlpha = 1;
    }
    ctx.strokeStyle = color;
    ctx.lineWidth = i === s.selected ? 3 : 1.5;
    ctx.setLineDash([]);
    ctx.strokeRect(x, y, w, h);
    drawLabel(ctx, `${i + 1} ${layer.name}`, x, y, color);
  });
  if (s.selected >= 0 && s.selected < s.layers.length) {
    const box = s.layers[s.selected].box;
    ctx.fillStyle = "#fff";
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1;
    for (const handle of HANDLES) {
      const [hx, hy] = handlePoint(box, handle);
      const sx = view.x + hx * view.scale - HANDLE_SIZE / 2;
      const sy = view.y + hy * view.scale - HANDLE_SIZE / 2;
      ctx.fillRect(sx, sy, HANDLE_SIZE, HANDLE_SIZE);
      ctx.strokeRect(sx, sy, HANDLE_SIZE, HANDLE_SIZE);
    }
  }
  if (s.draft) {
    const [x, y, w, h] = toScreen(view, s.draft);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 1.5;
    ctx.setLineDash([5, 4]);
    ctx.strokeRect(x, y, w, h);
    ctx.setLineDash([]);
  }
  ctx.font = LABEL_FONT;
  ctx.textBaseline = "bottom";
  if (s.error) {
    ctx.fillStyle = "rgba(120, 0, 0, 0.85)";
    ctx.fillRect(0, s.cssH - 20, s.cssW, 20);
    ctx.fillStyle = "#fff";
    ctx.fillText(s.error.slice(0, 120), 4, s.cssH - 4);
  } else {
    ctx.fillStyle = "#aaa";
    ctx.fillText(`${s.width}×${s.height}`, view.x + 4, view.y + view.h - 3);
  }
  return view;
}
