// node --test tests/web/  (also run by tests/test_web.py when node is installed)
import assert from "node:assert/strict";
import { test } from "node:test";

import { LOADER_CLASS, WIDGET_NAME, detectedText, widgetHeight, wrappedRows } from "../../web/detected_text.js";

const SIGMA = "PixArt-Σ 1024 (depth 28, 300 tokens, PE x2, no micro-conditions; official layout)";

test("names match the node class and the widget", () => {
  assert.equal(LOADER_CLASS, "AtelierModelLoader");
  assert.equal(WIDGET_NAME, "detected variant");
});

test("the ui.text list of the loader becomes the text", () => {
  assert.equal(detectedText({ text: [SIGMA] }), SIGMA);
  assert.equal(detectedText({ text: ["  " + SIGMA + "\n"] }), SIGMA);
  assert.equal(detectedText({ text: ["a", "", "  ", null, "b"] }), "a\nb");
  assert.equal(detectedText({ text: SIGMA }), SIGMA); // a plain string too
  assert.equal(detectedText({ text: [42] }), "42");
});

test("messages without text give null", () => {
  for (const message of [undefined, null, "text", 3, {}, { images: [] }, { text: [] }, { text: ["", " "] }, { text: null }]) {
    assert.equal(detectedText(message), null, JSON.stringify(message));
  }
});

test("wrappedRows counts hard breaks and word wrap", () => {
  assert.equal(wrappedRows("", 10), 1);
  assert.equal(wrappedRows("abc", 10), 1);
  assert.equal(wrappedRows("abcde fghij", 11), 1); // exactly fits
  assert.equal(wrappedRows("abcde fghij", 10), 2);
  assert.equal(wrappedRows("a\nb\nc", 10), 3);
  assert.equal(wrappedRows("x".repeat(25), 10), 3); // a long word is broken across rows
  assert.equal(wrappedRows("ab " + "x".repeat(25), 10), 4); // "ab" then 3 rows of x
  assert.equal(wrappedRows("x".repeat(20) + " ab", 10), 3); // 2 full rows, "ab" on a third
  assert.equal(wrappedRows("x".repeat(25) + " ab", 10), 3); // "xxxxx ab" shares the last row
  assert.equal(wrappedRows(SIGMA, 1000), 1);
  assert.equal(wrappedRows(SIGMA, 40), 3);
  assert.equal(wrappedRows("abc", 0), 3); // columns clamped to 1
});

test("widgetHeight clamps rows and adds padding", () => {
  assert.equal(widgetHeight(1), 2 * 16 + 12); // at least minRows
  assert.equal(widgetHeight(3), 3 * 16 + 12);
  assert.equal(widgetHeight(40), 6 * 16 + 12); // at most maxRows
  assert.equal(widgetHeight(3, { lineHeight: 13, padding: 4, minRows: 1, maxRows: 10 }), 3 * 13 + 4);
  assert.equal(widgetHeight(2.2, { minRows: 1 }), 3 * 16 + 12); // partial rows round up
});
