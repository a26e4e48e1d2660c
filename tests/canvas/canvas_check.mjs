// Canvas check for tests/test_canvas.py: load the pack's UI-format example workflows into the REAL ComfyUI
// frontend (headless Chromium driven by playwright-core) and record what a user would see on the canvas.
//
//   node canvas_check.mjs --url http://127.0.0.1:PORT --out DIR --user-data-dir EMPTY_DIR
//        [--chromium /usr/bin/chromium] [--run] WORKFLOW.json...
//
// Per workflow: node types registered (no missing nodes), the pack's extension registered, no node box
// (title bar included) overlapping another, each node at least its computeSize(), no dialog; screenshot
// DIR/<name>.png. With --run the Σ text-to-image workflow is queued once on the tiny 256 model with 2 steps;
// after its SaveImage output arrived (latent previews drawn) the "detected variant" box must be there and no
// node may overlap another. Page errors are recorded, the frontend's own known ones apart.
// Writes DIR/report.json (the test reads it); exit code 0 when every check passed, 1 otherwise, 2 on usage.

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i < 0 ? fallback : args.splice(i, 2)[1];
};
const flag = (name) => {
  const i = args.indexOf(name);
  if (i >= 0) args.splice(i, 1);
  return i >= 0;
};
const url = option("--url");
const outDir = option("--out");
const userDataDir = option("--user-data-dir");
const chromiumPath = option("--chromium", "/usr/bin/chromium");
const runModel = option("--run-model", "PixArt-Sigma-XL-2-256x256.pth");
const doRun = flag("--run");
const workflows = args;
if (!url || !outDir || !userDataDir || workflows.length === 0) {
  console.error("usage: node canvas_check.mjs --url URL --out DIR --user-data-dir DIR [--run] WORKFLOW.json...");
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
fs.mkdirSync(userDataDir, { recursive: true });

// Errors the frontend throws by itself, with or without this pack (checked on a bare ComfyUI 0.3.64):
// frontend 1.27.10's Comfy.Canvas.NavigationMode onChange sets a setting that is not registered yet, and
// settingStore.set's onChange reads `.id` of undefined.
const KNOWN_FRONTEND_ERRORS = [
  /TypeError: Cannot read properties of undefined \(reading 'id'\)\n\s+at onChange \([^\n]*\n\s+at Proxy\.set /,
];
const LAUNCH_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: chromiumPath, headless: true, args: LAUNCH_FLAGS, viewport: { width: 1600, height: 900 },
});
const page = context.pages()[0] ?? (await context.newPage());
const report = { url, workflows: [], run: null, pageErrors: [], knownFrontendErrors: [], consoleProblems: [] };
let stage = "startup";
page.on("pageerror", (e) => {
  const text = `${e}\n${(e.stack ?? "").split("\n").slice(1, 5).join("\n")}`;
  const known = KNOWN_FRONTEND_ERRORS.some((re) => re.test(text));
  (known ? report.knownFrontendErrors : report.pageErrors).push(`[${stage}] ${text}`);
});
page.on("console", (m) => {
  if (m.type() === "error" || (m.type() === "warning" && /pixart|atelier/i.test(m.text())))
    report.consoleProblems.push(`[${stage}] ${m.type()}: ${m.text()}`);
});
page.on("response", (r) => {
  if (r.status() >= 400) report.consoleProblems.push(`[${stage}] HTTP ${r.status()} ${r.url()}`);
});

await page.goto(url, { waitUntil: "domcontentloaded", timeout: 120000 });
await page.waitForFunction(() => window.app?.graph && window.app?.extensions?.length > 0, null, { timeout: 120000 });
await page.waitForTimeout(2000);
report.frontendVersion = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);

/** Facts about the graph now on the canvas. */
const inspect = () =>
  page.evaluate(() => {
    const app = window.app;
    const LG = window.LiteGraph ?? app.graph.constructor?.LiteGraph;
    const registered = LG?.registered_node_types ?? {};
    const title = LG?.NODE_TITLE_HEIGHT ?? 30;
    const nodes = app.graph.nodes.map((n) => {
      let min = null;
      try {
        min = Array.from(n.computeSize());
      } catch (e) {
        min = String(e);
      }
      return { id: n.id, type: n.type, pos: Array.from(n.pos), size: Array.from(n.size), min, title,
        registered: n.type in registered };
    });
    const dialogs = Array.from(document.querySelectorAll(".p-dialog"))
      .filter((d) => d.offsetParent !== null || getComputedStyle(d).display !== "none")
      .map((d) => d.innerText.slice(0, 300).replace(/\s+/g, " "));
    const extension = app.extensions.some((e) => e.name === "pixart_atelier.detected");
    return { nodes, dialogs, extension };
  });

/** The node's box on the canvas, title bar included; at least computeSize() tall and wide. */
function box(n) {
  const [w, h] = Array.isArray(n.min) ? [Math.max(n.size[0], n.min[0]), Math.max(n.size[1], n.min[1])] : n.size;
  return [n.pos[0], n.pos[1] - n.title, w, h + n.title];
}

function overlaps(nodes) {
  const out = [];
  for (let i = 0; i < nodes.length; i++)
    for (let j = i + 1; j < nodes.length; j++) {
      const [ax, ay, aw, ah] = box(nodes[i]);
      const [bx, by, bw, bh] = box(nodes[j]);
      if (ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah)
        out.push(`${nodes[i].type}#${nodes[i].id} overlaps ${nodes[j].type}#${nodes[j].id}`);
    }
  return out;
}

/** Failures of the graph on the canvas; `sized` also checks each node against its computeSize(). */
function graphFailures(facts, sized) {
  const failures = [];
  if (!facts.extension) failures.push("extension pixart_atelier.detected is not registered");
  for (const n of facts.nodes) {
    if (!n.registered) failures.push(`node type ${n.type} is not registered (missing node)`);
    if (sized && Array.isArray(n.min) && (n.min[0] > n.size[0] + 0.5 || n.min[1] > n.size[1] + 0.5))
      failures.push(`${n.type}#${n.id} size ${n.size} is below computeSize ${n.min.map(Math.ceil)}`);
  }
  failures.push(...overlaps(facts.nodes));
  failures.push(...facts.dialogs.map((d) => `dialog shown: ${d}`));
  return failures;
}

async function load(file, name) {
  const graph = JSON.parse(fs.readFileSync(file, "utf8"));
  await page.evaluate(([g, n]) => window.app.loadGraphData(g, true, true, n), [graph, name]);
  await page.waitForTimeout(1500);
}

for (const file of workflows) {
  const name = path.basename(file, ".json");
  const entry = { name, failures: [], screenshot: path.join(outDir, `${name}.png`) };
  stage = name;
  try {
    await load(file, name);
    const facts = await inspect();
    entry.nodes = facts.nodes;
    entry.failures.push(...graphFailures(facts, true));
    if (facts.dialogs.length) await page.keyboard.press("Escape");
  } catch (e) {
    entry.failures.push(`loading threw: ${String(e).split("\n")[0]}`);
  }
  await page.screenshot({ path: entry.screenshot });
  report.workflows.push(entry);
  console.log(`${entry.failures.length ? "FAIL" : "ok  "} ${name}`);
}

if (doRun) {
  const file = workflows.find((f) => /sigma_1024_text_to_image/.test(f)) ?? workflows[0];
  const name = `run_${path.basename(file, ".json")}`;
  const entry = { name, failures: [], screenshot: path.join(outDir, `${name}.png`) };
  report.run = entry;
  stage = name;
  try {
    await load(file, name);
    entry.changedWidgets = await page.evaluate((model) => {
      const changed = [];
      for (const n of window.app.graph.nodes)
        for (const w of n.widgets ?? []) {
          if (n.type === "AtelierModelLoader" && w.name === "model_name") w.value = model;
          else if (n.type === "AtelierSampler" && w.name === "steps") w.value = 2;
          else continue;
          changed.push(`${n.type}.${w.name}=${w.value}`);
        }
      return changed;
    }, runModel);
    const started = Date.now();
    await page.evaluate(() => window.app.queuePrompt(0, 1));
    // the whole prompt: SaveImage's output arrives last, after the sampler's latent previews were drawn
    await page.waitForFunction(() => Object.values(window.app.nodeOutputs ?? {})
      .some((o) => (o?.images ?? []).some((i) => i.type === "output")), null, { timeout: 600000 });
    entry.seconds = (Date.now() - started) / 1000;
    await page.waitForTimeout(2000);
    entry.savedImages = await page.evaluate(() => Object.values(window.app.nodeOutputs ?? {})
      .flatMap((o) => (o?.images ?? []).filter((i) => i.type === "output"))
      .map((i) => ({ filename: i.filename, subfolder: i.subfolder ?? "" })));
    entry.detected = await page.evaluate(() => window.app.graph.nodes.find((n) => n.type === "AtelierModelLoader")
      ?.widgets?.find((w) => w.name === "detected variant")?.value ?? null);
    if (!entry.detected) entry.failures.push('no "detected variant" box on the model loader after the run');
    const facts = await inspect();
    entry.nodes = facts.nodes;
    // not sized: while it fits the preview image the frontend itself leaves the sampler ~12 px below
    // computeSize(); overlaps are still judged on the larger of the two
    entry.failures.push(...graphFailures(facts, false));
  } catch (e) {
    entry.failures.push(`the run did not finish: ${String(e).split("\n")[0]}`);
  }
  await page.screenshot({ path: entry.screenshot });
  console.log(`${entry.failures.length ? "FAIL" : "ok  "} ${name}`);
}

report.ok = report.pageErrors.length === 0 && [...report.workflows, ...(report.run ? [report.run] : [])]
  .every((e) => e.failures.length === 0);
fs.writeFileSync(path.join(outDir, "report.json"), JSON.stringify(report, null, 1));
await context.close();
process.exit(report.ok ? 0 : 1);
