// Pure helpers for the "detected variant" display on AtelierModelLoader (no ComfyUI imports, so that
// `node --test tests/web/` can exercise them). The glue that talks to the frontend is atelier.js.

/** ComfyUI class of the node whose detection result is shown. */
export const LOADER_CLASS = "AtelierModelLoader";

/** Name of the read-only display widget (never serialised: saved workflows keep 3 widget values). */
export const WIDGET_NAME = "detected variant";

/**
 * The text to show for one `executed` message of the loader, or null when it carries none.
 *
 * The node returns `{"ui": {"text": [summary]}}`, which reaches the frontend as `message.text`: a list
 * of strings (a plain string is accepted too). Entries are trimmed, empty ones dropped, and the rest
 * joined one per line.
 *
 * @param {unknown} message the `output` of the executed event (`node.onExecuted(message)`)
 * @returns {string | null}
 */
export function detectedText(message) {
  if (message === null || typeof message !== "object") return null;
  const raw = /** @type {{text?: unknown}} */ (message).text;
  const entries = Array.isArray(raw) ? raw : raw === undefined || raw === null ? [] : [raw];
  const lines = entries
    .filter((entry) => entry !== undefined && entry !== null)
    .map((entry) => String(entry).trim())
    .filter((line) => line.length > 0);
  return lines.length ? lines.join("\n") : null;
}

/**
 * How many rows `text` takes in a box `columns` characters wide (hard line breaks plus word wrap).
 *
 * Used to size the display widget so that the summary is readable without scrolling. An estimate: a
 * word longer than a row is counted as broken across rows, as a textarea does.
 *
 * @param {string} text
 * @param {number} columns characters per row (at least 1)
 * @returns {number} at least 1
 */
export function wrappedRows(text, columns) {
  const width = Math.max(1, Math.floor(columns));
  let rows = 0;
  for (const line of String(text).split("\n")) {
    let used = 0; // characters on the current row
    let lineRows = 1;
    for (const word of line.split(/\s+/).filter(Boolean)) {
      const need = used === 0 ? word.length : used + 1 + word.length;
      if (need <= width) {
        used = need;
        continue;
      }
      if (used > 0) lineRows += 1; // the word starts a new row
      lineRows += Math.floor(Math.max(0, word.length - 1) / width); // and may itself span rows
      used = word.length % width || width;
    }
    rows += lineRows;
  }
  return Math.max(1, rows);
}

/**
 * Pixel height for the display widget: `rows` text rows plus padding, clamped to [minRows, maxRows] rows.
 *
 * @param {number} rows from wrappedRows
 * @param {{lineHeight?: number, padding?: number, minRows?: number, maxRows?: number}} [options]
 * @returns {number}
 */
export function widgetHeight(rows, { lineHeight = 16, padding = 12, minRows = 2, maxRows = 6 } = {}) {
  const clamped = Math.min(maxRows, Math.max(minRows, Math.ceil(rows)));
  return clamped * lineHeight + padding;
}
