// Region-editor check for tests/test_canvas_layers.py, in the REAL ComfyUI frontend (headless Chromium driven by
// playwright-core):
//
//   node layers_check.mjs --url http://127.0.0.1:PORT --out DIR --user-data-dir EMPTY_DIR
//        [--chromium /usr/bin/chromium] [--thumb FILE.png] [--poster WORKFLOW.json] [--upload FILE.ora]
//
// On a fresh PixArt Layout node (1024 x 768) wired to the test-only AtelierLayoutProbe: delete the default box,
// draw two boxes by mouse, name them and give them prompts in the editor's panel, move one, resize the other,
// raise one in the stack; queue; the probe's output and /history record what the server received. Then: save
// and reload the workflow (the boxes come back), type invalid JSON into the layout widget and queue (refused with
// the node's one-line error), and feed a `layer_thumbs` message for a Generate Layers node downstream (the
// thumbnail loads into the box), halve the width (the boxes follow), press
// Delete on a box (only the box goes). With --upload, click "upload layer file" on a PixArt Load Layers node and
// pick that file in the browser's file chooser. Screenshots DIR/*.png; with --poster also that workflow (the README
// picture).
// Writes DIR/layers_report.json (the test reads it); exit 0 when the steps ran, 1 when one threw.

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i < 0 ? fallback : args.splice(i, 2)[1];
};
const url = option("--url");
const outDir = option("--out");
const userDataDir = option("--user-data-dir");
const chromiumPath = option("--chromium", "/usr/bin/chromium");
const thumbFile = option("--thumb");
const posterFile = option("--poster");
const uploadFile = option("--upload");
if (!url || !outDir || !userDataDir) {
  console.error("usage: node layers_check.mjs --url URL --out DIR --user-data-dir DIR [--thumb PNG] [--poster JSON] " +
    "[--upload FILE]");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });

const KNOWN_FRONTEND_ERRORS = [ // frontend 1.27.10's own, with or without the pack (see canvas_check.mjs)
  /TypeError: Cannot read properties of undefined \(reading 'id'\)\n\s+at onChange \([^\n]*\n\s+at Proxy\.set /,
];
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: chromiumPath, headless: true, viewport: { width: 1600, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const page = context.pages()[0] ?? (await context.newPage());
const report = { steps: [], pageErrors: [], consoleProblems: [] };
page.on("pageerror", (e) => {
  const text = `${e}\n${(e.stack ?? "").split("\n").slice(1, 5).join("\n")}`;
  if (!KNOWN_FRONTEND_ERRORS.some((re) => re.test(text))) report.pageErrors.push(text);
});
page.on("console", (m) => {
  if (m.type() === "error" || (m.type() === "warning" && /pixart|atelier/i.test(m.text())))
    report.consoleProblems.push(`${m.type()}: ${m.text()}`);
});

const step = async (name, fn) => {
  try {
    report[name] = await fn();
    report.steps.push(name);
    console.log(`ok   ${name}`);
  } catch (e) {
    report.failed = `${name}: ${String(e).split("\n")[0]}`;
    console.log(`FAIL ${report.failed}`);
    throw e;
  }
};

/** Screen point of layout pixel (x, y) on the editor canvas of node `id` (the canvas letterboxes the layout). */
async function screenPoint(id, x, y) {
  return page.evaluate(([id, x, y]) => {
    const node = window.app.graph.getNodeById(id);
    const canvas = node.regionEditor.canvas;
    const r = canvas.getBoundingClientRect();
    const [w, h] = node.regionEditor.size;
    const s = Math.min(r.width / w, r.height / h);
    return [r.left + (r.width - w * s) / 2 + x * s, r.top + (r.height - h * s) / 2 + y * s];
  }, [id, x, y]);
}

async function dragLayout(id, from, to) {
  const [ax, ay] = await screenPoint(id, ...from);
  const [bx, by] = await screenPoint(id, ...to);
  await page.mouse.move(ax, ay);
  await page.mouse.down();
  await page.mouse.move((ax + bx) / 2, (ay + by) / 2, { steps: 4 });
  await page.mouse.move(bx, by, { steps: 4 });
  await page.mouse.up();
  await page.waitForTimeout(100);
}

const editorState = (id) => page.evaluate((id) => {
  const node = window.app.graph.getNodeById(id);
  const e = node.regionEditor;
  return { layers: e.layers, selected: e.selected, error: e.error, size: e.size,
    text: node.widgets.find((w) => w.name === "layout").value,
    images: [...e.images.values()].map((i) => ({ complete: i.complete, width: i.naturalWidth })) };
}, id);

const queue = () => page.evaluate(async () => {
  const before = Object.keys(window.app.nodeOutputs ?? {}).length;
  const result = await window.app.queuePrompt(0, 1);
  return { before, result: result ?? null, lastNodeErrors: window.app.lastNodeErrors ?? null };
});

try {
  await page.goto(url, { waitUntil: "commit", timeout: 300000 });
  await page.waitForFunction(() => window.app?.graph && window.app?.extensions?.length > 0, null, { timeout: 400000 });
  await page.waitForTimeout(1500);
  report.extensions = await page.evaluate(() => window.app.extensions.map((e) => e.name).filter((n) => /pixart/.test(n)));

  let ids;
  await step("setup", async () => {
    ids = await page.evaluate(() => {
      const { app } = window;
      const LG = window.LiteGraph;
      app.graph.clear();
      const layout = LG.createNode("AtelierLayout");
      layout.pos = [60, 60];
      app.graph.add(layout);
      const probe = LG.createNode("AtelierLayoutProbe");
      probe.pos = [layout.pos[0] + layout.size[0] + 60, 60];
      app.graph.add(probe);
      layout.connect(0, probe, 0);
      const set = (name, v) => { layout.widgets.find((w) => w.name === name).value = v; };
      set("width", 1024);
      set("height", 768);
      set("prompt", "a flat poster of a garden");
      set("background", "a pale blue sky");
      app.canvas.ds.offset = [0, 0];
      app.canvas.ds.scale = 1;
      app.graph.setDirtyCanvas(true, true);
      return { layout: layout.id, probe: probe.id, size: Array.from(layout.size), min: Array.from(layout.computeSize()) };
    });
    await page.waitForTimeout(800);
    return { ...ids, state: await editorState(ids.layout) };
  });
  const L = ids.layout;
  const editor = `.pixart-region-editor`;

  await step("deleteDefault", async () => {
    const [x, y] = await screenPoint(L, 512, 500); // inside the default box
    await page.mouse.click(x, y);
    await page.click(`${editor} button[name=delete]`);
    return editorState(L);
  });

  await step("draw", async () => {
    await dragLayout(L, [100, 100], [400, 500]);
    await page.fill(`${editor} input[name=name]`, "sun");
    await page.fill(`${editor} input[name=prompt]`, "a yellow sun");
    await dragLayout(L, [520, 200], [920, 700]);
    await page.fill(`${editor} input[name=name]`, "tree");
    await page.fill(`${editor} input[name=prompt]`, "a green tree");
    return editorState(L);
  });

  await step("edit", async () => {
    await dragLayout(L, [250, 300], [450, 350]); // move "sun" by (+200, +50)
    return editorState(L);
  });

  await step("resizeAndRaise", async () => {
    const tree = (await editorState(L)).layers.find((l) => l.name === "tree").box;
    const [cx, cy] = [(tree[0] + tree[2]) / 2, (tree[1] + tree[3]) / 2];
    const [x, y] = await screenPoint(L, cx, cy);
    await page.mouse.click(x, y); // select "tree"
    await dragLayout(L, [tree[2], tree[3]], [tree[2] - 100, tree[3] - 100]); // its south-east handle
    const sun = (await editorState(L)).layers.find((l) => l.name === "sun").box;
    const [sx, sy] = await screenPoint(L, sun[0] + 20, sun[1] + 20);
    await page.mouse.click(sx, sy); // select "sun"
    await page.click(`${editor} button[name=up]`); // "sun" on top of "tree"
    return editorState(L);
  });
  await page.screenshot({ path: path.join(outDir, "layout_editor.png") });

  await step("queue", async () => {
    const queued = await queue();
    await page.waitForFunction((probe) => window.app.nodeOutputs?.[String(probe)]?.layout_json, ids.probe, { timeout: 120000 });
    const received = await page.evaluate((probe) => window.app.nodeOutputs[String(probe)].layout_json[0], ids.probe);
    const history = await page.evaluate(async () => (await (await fetch("/api/history")).json()));
    return { queued, received, history, state: await editorState(L) };
  });

  await step("reload", async () => {
    const saved = await page.evaluate(() => window.app.graph.serialize());
    const node = saved.nodes.find((n) => n.type === "AtelierLayout");
    await page.evaluate((g) => window.app.loadGraphData(g, true, true, "reloaded"), saved);
    await page.waitForTimeout(1500);
    const id = await page.evaluate(() => window.app.graph.nodes.find((n) => n.type === "AtelierLayout").id);
    await page.screenshot({ path: path.join(outDir, "layout_reloaded.png") });
    return { widgets_values: node.widgets_values, state: await editorState(id) };
  });

  await step("invalid", async () => {
    const textarea = await page.evaluateHandle(() => window.app.graph.nodes.find((n) => n.type === "AtelierLayout")
      .widgets.find((w) => w.name === "layout").inputEl);
    const good = await textarea.evaluate((t) => t.value);
    await textarea.evaluate((t) => t.focus());
    await page.keyboard.press("End");
    await page.keyboard.press("Control+End");
    await page.keyboard.type(",");
    const id = await page.evaluate(() => window.app.graph.nodes.find((n) => n.type === "AtelierLayout").id);
    const state = await editorState(id);
    const answer = await page.evaluate(async (id) => {
      const { output } = await window.app.graphToPrompt();
      const response = await fetch("/api/prompt", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: output, client_id: "layers-check" }) });
      return { status: response.status, body: await response.json() };
    }, id);
    await page.screenshot({ path: path.join(outDir, "layout_invalid.png") });
    await textarea.evaluate((t, v) => { t.value = v; t.dispatchEvent(new Event("input")); }, good);
    return { state, answer, restored: await editorState(id) };
  });

  await step("thumbs", async () => {
    if (!thumbFile) return { skipped: "no --thumb" };
    const registered = await page.evaluate(() => "AtelierGenerateLayers" in (window.LiteGraph.registered_node_types ?? {}));
    if (!registered) return { skipped: "AtelierGenerateLayers is not registered" };
    const id = await page.evaluate((file) => {
      const { app } = window;
      const layout = app.graph.nodes.find((n) => n.type === "AtelierLayout");
      const gen = window.LiteGraph.createNode("AtelierGenerateLayers");
      gen.pos = [layout.pos[0] + layout.size[0] + 60, 400];
      app.graph.add(gen);
      const slot = gen.inputs.findIndex((i) => i.name === "layout");
      layout.connect(0, gen, slot);
      const entry = (name, index, box) => ({ name, index, box, canvas: [1024, 768], filename: file, subfolder: "", type: "temp" });
      const layers = layout.regionEditor.layers;
      const thumbs = [entry("background", 0, [0, 0, 1024, 768]), ...layers.map((l, i) => entry(l.name, i + 1, l.box))];
      window.comfyAPI.api.api.dispatchCustomEvent("executed", { node: String(gen.id), display_node: String(gen.id), output: { layer_thumbs: thumbs }, prompt_id: "x" });
      return layout.id;
    }, path.basename(thumbFile));
    await page.waitForTimeout(1500);
    await page.screenshot({ path: path.join(outDir, "layout_thumbs.png") });
    return editorState(id);
  });

  await step("rescale", async () => { // the user sets width 1024 -> 512 on the node: boxes follow
    const id = await page.evaluate(() => {
      const node = window.app.graph.nodes.find((n) => n.type === "AtelierLayout");
      const w = node.widgets.find((x) => x.name === "width");
      w.value = 512;
      w.callback?.(512); // what the number widget does after the user changed it
      return node.id;
    });
    await page.waitForTimeout(300);
    return editorState(id);
  });

  await step("keyDelete", async () => { // Delete on the editor removes the selected box, not the node
    const id = await page.evaluate(() => window.app.graph.nodes.find((n) => n.type === "AtelierLayout").id);
    const [box] = (await editorState(id)).layers.map((l) => l.box);
    const [x, y] = await screenPoint(id, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2);
    await page.mouse.click(x, y);
    await page.keyboard.press("Delete");
    await page.waitForTimeout(300);
    const nodes = await page.evaluate(() => window.app.graph.nodes.map((n) => n.type));
    return { nodes, state: await editorState(id) };
  });

  if (uploadFile) {
    await step("upload", async () => { // the button opens the file chooser; the picked file lands in input/
      const where = await page.evaluate(() => {
        const { app } = window;
        const node = window.LiteGraph.createNode("AtelierLoadLayers");
        node.pos = [700, 420];
        app.graph.add(node);
        app.canvas.ds.offset = [0, 0];
        app.canvas.ds.scale = 1;
        app.graph.setDirtyCanvas(true, true);
        return { id: node.id };
      });
      await page.waitForTimeout(500);
      const [x, y] = await page.evaluate((id) => { // the button widget's centre on screen
        const { app } = window;
        const node = app.graph.getNodeById(id);
        const button = node.widgets.find((w) => w.type === "button");
        const r = app.canvas.canvas.getBoundingClientRect();
        const { offset, scale } = app.canvas.ds;
        const local = [node.size[0] / 2, (button.last_y ?? button.y) + 10];
        return [r.left + (node.pos[0] + local[0] + offset[0]) * scale, r.top + (node.pos[1] + local[1] + offset[1]) * scale];
      }, where.id);
      const [chooser] = await Promise.all([page.waitForEvent("filechooser", { timeout: 10000 }), page.mouse.click(x, y)]);
      await chooser.setFiles(uploadFile);
      const name = path.basename(uploadFile);
      await page.waitForFunction(([id, name]) => window.app.graph.getNodeById(id).widgets.find((w) => w.name === "file").value === name,
        [where.id, name], { timeout: 30000 });
      return page.evaluate((id) => {
        const node = window.app.graph.getNodeById(id);
        const widget = node.widgets.find((w) => w.name === "file");
        return { value: widget.value, accept: document.querySelector("input[type=file][accept*='.psd']")?.accept ?? null,
          widgets_values: node.serialize().widgets_values };
      }, where.id);
    });
  }

  if (posterFile) {
    await step("poster", async () => {
      const graph = JSON.parse(fs.readFileSync(posterFile, "utf8"));
      await page.setViewportSize({ width: 1500, height: 1150 });
      await page.evaluate((g) => window.app.loadGraphData(g, true, true, "pixart_layers_poster"), graph);
      await page.waitForTimeout(2500);
      const nodes = await page.evaluate(() => { // the whole graph in view, as large as it fits
        const { app } = window;
        const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
        const xs = app.graph.nodes.flatMap((n) => [n.pos[0], n.pos[0] + n.size[0]]);
        const ys = app.graph.nodes.flatMap((n) => [n.pos[1] - title, n.pos[1] + n.size[1]]);
        const [x0, y0, x1, y1] = [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
        const el = app.canvas.canvas.getBoundingClientRect();
        const margin = 24;
        const scale = Math.min(1, (el.width - 2 * margin) / (x1 - x0), (el.height - 2 * margin - 40) / (y1 - y0));
        app.canvas.ds.scale = scale;
        app.canvas.ds.offset = [margin / scale - x0, (margin + 40) / scale - y0];
        app.graph.setDirtyCanvas(true, true);
        return app.graph.nodes.map((n) => ({ type: n.type, boxes: n.regionEditor?.layers?.length ?? null }));
      });
      await page.waitForTimeout(1500);
      await page.screenshot({ path: path.join(outDir, "layers_poster.png") });
      return nodes;
    });
  }
} catch (e) {
  report.error = String(e).split("\n").slice(0, 3).join("\n");
}
fs.writeFileSync(path.join(outDir, "layers_report.json"), JSON.stringify(report, null, 1));
await context.close();
process.exit(report.error ? 1 : 0);
