// PixArt Atelier: an "upload layer file" button (and drag-and-drop) on PixArt Load Layers (AtelierLoadLayers).
// The core image_upload widget only offers image/png,jpeg,webp in its file dialog and previews the file as an
// image, so the node does not use it; ComfyUI's /upload/image endpoint itself stores any file in input/.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_CLASS = "AtelierLoadLayers";
const ACCEPT = ".psd,.ora,image/vnd.adobe.photoshop,image/openraster";

async function uploadLayerFile(node, file) {
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("type", "input");
  const response = await api.fetchApi("/upload/image", { method: "POST", body });
  if (response.status !== 200) {
    throw new Error(`upload of ${file.name} failed: ${response.status} ${response.statusText}`);
  }
  const data = await response.json();
  const name = data.subfolder ? `${data.subfolder}/${data.name}` : data.name;
  const widget = node.widgets?.find((w) => w.name === "file");
  if (widget) {
    if (!widget.options.values.includes(name)) widget.options.values.push(name);
    widget.value = name;
    widget.callback?.(name);
  }
  node.setDirtyCanvas(true, true);
}

function isLayerFile(file) {
  return /\.(psd|ora)$/i.test(file?.name ?? "");
}

app.registerExtension({
  name: "pixart_atelier.layer_upload",
  nodeCreated(node) {
    if (node.comfyClass !== NODE_CLASS) return;
    const input = document.createElement("input");
    Object.assign(input, { type: "file", accept: ACCEPT, style: "display: none" });
    input.onchange = async () => {
      if (input.files.length) await uploadLayerFile(node, input.files[0]).catch((e) => alert(e.message));
      input.value = "";
    };
    document.body.append(input);
    const button = node.addWidget("button", "upload layer file", null, () => input.click());
    button.options.serialize = false; // keeps the saved workflow's 1 positional widget value
    button.serialize = false;
    const onRemoved = node.onRemoved;
    node.onRemoved = function () {
      input.remove();
      return onRemoved?.apply(this, arguments);
    };
    node.onDragOver = (event) => [...(event.dataTransfer?.items ?? [])].some((i) => i.kind === "file");
    node.onDragDrop = (event) => {
      const file = [...(event.dataTransfer?.files ?? [])].find(isLayerFile);
      if (!file) return false;
      uploadLayerFile(node, file).catch((e) => alert(e.message));
      return true;
    };
  },
});
