"""The Layout tab's drawing surface, and the picture of a result with its boxes drawn over it.

`layout_canvas(text, vocabulary)` is a gr.HTML whose value is the layout in the text format of
core/pipelines/layout_text.py ("circle red 0.02 0.02 0.32 0.32", one object a line). Its script
(Gradio's js_on_load: `element`, `props`, `trigger`, `watch`) draws the boxes on a <canvas> and
edits them with the mouse: drag on empty space adds a box, drag inside a box moves it, drag a
corner resizes it, Delete (or the button) removes the selected one; for a shapes-world model each
drawn box snaps to the grid that model learned (vocab "grid": the 3x3 cell centres and the two
sizes; typed layouts are left as written and warned about by the pipeline); the Shape / Colour selects (or
Class, for a model without names) label the selected box and the next one drawn. Each edit sets
`props.value` and triggers "edit"; a new value from outside (the layout textbox, "Send to") is
drawn again through `watch("value")`. The prop `vocab` (LayoutVocabulary.as_dict) says which
labels the picked model reads and how many objects it takes; `aspect` (height / width of the image
to be made) shapes the canvas.

`boxes_picture` draws the boxes of a result's own "Layout" parameter over a faint copy of it.
"""
import math

import gradio as gr
from PIL import Image, ImageDraw, ImageFont

from core.pipelines.layout_text import LayoutVocabulary

HTML = """
<div class="ldm-layout-widget">
  <canvas class="ldm-layout-board" width="384" height="384" tabindex="0"
          aria-label="Layout canvas: drag to draw a box"></canvas>
  <div class="ldm-layout-tools">
    <label class="ldm-layout-shape-field">Shape <select class="ldm-layout-shape"></select></label>
    <label class="ldm-layout-colour-field">Colour <select class="ldm-layout-colour"></select></label>
    <label class="ldm-layout-class-field">Class <select class="ldm-layout-class"></select></label>
    <button type="button" class="ldm-layout-delete">Delete box</button>
  </div>
  <div class="ldm-layout-hint"></div>
</div>
"""

CSS = """
.ldm-layout-widget { display: flex; flex-direction: column; gap: 6px; }
.ldm-layout-board { width: 100%; max-width: 384px; border: 1px solid #999;
                    cursor: crosshair; touch-action: none; }
.ldm-layout-board:focus { outline: 2px solid #4a7; }
.ldm-layout-tools { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; font-size: 0.9em; }
.ldm-layout-tools select { appearance: auto; -webkit-appearance: menulist; min-width: 7.5em; margin-left: 4px;
                           padding: 3px 6px; border: 1px solid #999; border-radius: 4px; font-size: 1em; }
.ldm-layout-delete { padding: 3px 10px; border: 1px solid #999; border-radius: 4px; cursor: pointer; }
.ldm-layout-hint { font-size: 0.85em; opacity: 0.8; min-height: 1.2em; }
"""

JS = r"""
const canvas = element.querySelector(".ldm-layout-board"), ctx = canvas.getContext("2d");
const shapeSel = element.querySelector(".ldm-layout-shape"), colourSel = element.querySelector(".ldm-layout-colour");
const classSel = element.querySelector(".ldm-layout-class"), hint = element.querySelector(".ldm-layout-hint");
const HELP_ALL = "Drag on empty space to add a box, drag a box to move it, drag a corner to resize it; " +
                 "Delete removes the selected box.";
const HELP = () => vocab().grid ? HELP_ALL + " Boxes snap to the 9 cells and the two sizes this model learned." : HELP_ALL;
const HANDLE = 8, MIN = 0.03, SIDE = 384;           // corner handle (canvas px), smallest side (fraction)
let boxes = [], selected = -1, drag = null, lastText = null;

const vocab = () => props.vocab || {names: null, n_classes: 1, max_objects: 8, shapes: [], colours: [],
                                    box_colours: []};
const isNumber = (w) => w !== "" && isFinite(Number(w));
const round = (v) => String(Math.round(v * 1000) / 1000);
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

function parse(text) {                              // the text format; lines not understood are skipped
  const out = [], skipped = [];
  (text || "").split("\n").forEach((line, i) => {
    const words = line.replace(/,/g, " ").trim().split(/\s+/).filter((w) => w);
    if (!words.length || words[0].startsWith("#")) return;
    const nums = words.slice(-4);
    if (words.length < 5 || !nums.every(isNumber)) { skipped.push(i + 1); return; }
    const [x0, y0, x1, y1] = nums.map(Number);
    out.push({label: words.slice(0, -4).join(" "), x0, y0, x1, y1});
  });
  return [out, skipped];
}
const format = () => boxes.map((b) => [b.label, b.x0, b.y0, b.x1, b.y1].map(
  (v, k) => k ? round(v) : v).join(" ")).join("\n");

function classIndex(label) {
  const v = vocab(), words = String(label).toLowerCase().split(/\s+/);
  if (v.names && words.length === 2) {
    for (const name of [words.join(" "), words.slice().reverse().join(" ")]) {
      if (v.names.includes(name)) return v.names.indexOf(name);
    }
  }
  const n = words.length === 1 && /^\d+$/.test(words[0]) ? Number(words[0]) : -1;
  return n < v.n_classes ? n : -1;
}
const boxColour = (b) => vocab().box_colours[classIndex(b.label)] || "#777777";

function draw() {
  const W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = "#f4f4f4"; ctx.fillRect(0, 0, W, H);
  ctx.strokeStyle = "#dddddd"; ctx.lineWidth = 1; ctx.setLineDash([4, 4]);
  for (const f of [1 / 3, 2 / 3]) {                 // the shapes world's 3x3 cells
    ctx.beginPath(); ctx.moveTo(f * W, 0); ctx.lineTo(f * W, H); ctx.moveTo(0, f * H); ctx.lineTo(W, f * H); ctx.stroke();
  }
  ctx.setLineDash([]);
  const all = drag && drag.mode === "new" && drag.box ? boxes.concat([drag.box]) : boxes;
  all.forEach((b, i) => {
    const x = b.x0 * W, y = b.y0 * H, w = (b.x1 - b.x0) * W, h = (b.y1 - b.y0) * H, colour = boxColour(b);
    ctx.globalAlpha = 0.18; ctx.fillStyle = colour; ctx.fillRect(x, y, w, h); ctx.globalAlpha = 1;
    ctx.strokeStyle = colour; ctx.lineWidth = i === selected ? 3 : 2; ctx.strokeRect(x, y, w, h);
    ctx.font = "13px sans-serif";
    const text = `${i + 1}: ${b.label}`, tw = ctx.measureText(text).width;
    ctx.fillStyle = "rgba(255,255,255,0.85)"; ctx.fillRect(x + 2, y + 2, tw + 6, 17);
    ctx.fillStyle = "#222222"; ctx.fillText(text, x + 5, y + 15);
    if (i === selected) {
      ctx.fillStyle = colour;
      for (const [cx, cy] of corners(b)) ctx.fillRect(cx - HANDLE / 2, cy - HANDLE / 2, HANDLE, HANDLE);
    }
  });
}
const corners = (b) => [[b.x0, b.y0], [b.x1, b.y0], [b.x0, b.y1], [b.x1, b.y1]].map(
  ([x, y]) => [x * canvas.width, y * canvas.height]);

function point(event) {                             // the pointer in canvas px and in [0, 1]
  const r = canvas.getBoundingClientRect();
  const px = (event.clientX - r.left) * canvas.width / r.width, py = (event.clientY - r.top) * canvas.height / r.height;
  return {px, py, x: clamp(px / canvas.width, 0, 1), y: clamp(py / canvas.height, 0, 1)};
}
function hit(p) {                                   // a corner of a box (the selected one first), else a box
  const order = boxes.map((_, i) => i).reverse();
  if (selected >= 0) order.unshift(selected);
  for (const i of order) {
    const k = corners(boxes[i]).findIndex(([cx, cy]) => Math.abs(cx - p.px) <= HANDLE && Math.abs(cy - p.py) <= HANDLE);
    if (k >= 0) return {i, corner: k};
  }
  for (const i of order) {
    const b = boxes[i];
    if (p.x >= b.x0 && p.x <= b.x1 && p.y >= b.y0 && p.y <= b.y1) return {i, corner: -1};
  }
  return null;
}

function label() {
  return vocab().names ? `${shapeSel.value} ${colourSel.value}` : classSel.value;
}
function showLabel(b) {                             // the selects follow the selected box
  const words = String(b.label).toLowerCase().split(/\s+/), v = vocab();
  if (v.names) {
    const shape = words.find((w) => v.shapes.includes(w)), colour = words.find((w) => v.colours.includes(w));
    if (shape) shapeSel.value = shape;
    if (colour) colourSel.value = colour;
  } else if (classIndex(b.label) >= 0) {
    classSel.value = String(classIndex(b.label));
  }
}
function commit(message) {
  lastText = format();
  props.value = lastText;
  trigger("edit");
  hint.textContent = message || HELP();
  draw();
}
function select(i) {
  selected = i;
  if (i >= 0) showLabel(boxes[i]);
  draw();
}
function remove() {
  if (selected < 0) { hint.textContent = "Click a box first, then Delete removes it."; return; }
  boxes.splice(selected, 1); selected = -1;
  commit();
}

function options(sel, values, labels) {
  const keep = sel.value;
  sel.innerHTML = "";
  values.forEach((v, k) => { const o = document.createElement("option"); o.value = v; o.textContent = labels[k]; sel.appendChild(o); });
  if (values.includes(keep)) sel.value = keep;
}
function setVocab() {
  const v = vocab(), named = !!v.names;
  options(shapeSel, v.shapes, v.shapes);
  options(colourSel, v.colours, v.colours);
  const ids = Array.from({length: v.n_classes}, (_, k) => String(k));
  options(classSel, ids, ids);
  element.querySelector(".ldm-layout-shape-field").style.display = named ? "" : "none";
  element.querySelector(".ldm-layout-colour-field").style.display = named ? "" : "none";
  element.querySelector(".ldm-layout-class-field").style.display = named ? "none" : "";
  draw();
}
function setAspect() {                             // the image's shape: the longer side is SIDE px
  const a = Number(props.aspect) > 0 ? Number(props.aspect) : 1;
  canvas.width = Math.round(a > 1 ? SIDE / a : SIDE);
  canvas.height = Math.round(a > 1 ? SIDE : SIDE * a);
  canvas.style.aspectRatio = `${canvas.width} / ${canvas.height}`;
  canvas.style.maxWidth = `${canvas.width}px`;
  draw();
}
function fromValue() {
  const text = props.value || "";
  if (text === lastText) return;
  lastText = text;
  const [parsed, skipped] = parse(text);
  boxes = parsed;
  if (selected >= boxes.length) selected = -1;
  hint.textContent = skipped.length ? `Line ${skipped.join(", ")} not understood: write a label and four numbers, ` +
                                      "e.g. circle red 0.02 0.02 0.32 0.32." : HELP();
  draw();
}

canvas.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) return;
  canvas.focus();
  const p = point(event), h = hit(p);
  if (h && h.corner >= 0) {
    select(h.i);
    const b = boxes[h.i], [fx, fy] = [[b.x1, b.y1], [b.x0, b.y1], [b.x1, b.y0], [b.x0, b.y0]][h.corner];
    drag = {mode: "resize", fx, fy};
  } else if (h) {
    select(h.i);
    drag = {mode: "move", start: p, orig: {...boxes[h.i]}};
  } else {
    select(-1);
    if (boxes.length >= vocab().max_objects) {
      hint.textContent = `This model takes at most ${vocab().max_objects} objects: delete one first.`;
      return;
    }
    drag = {mode: "new", start: p, box: null};
  }
  canvas.setPointerCapture(event.pointerId);
  event.preventDefault();
});
canvas.addEventListener("pointermove", (event) => {
  const p = point(event);
  if (!drag) {
    const h = hit(p);
    canvas.style.cursor = h ? (h.corner >= 0 ? (h.corner === 0 || h.corner === 3 ? "nwse-resize" : "nesw-resize") : "move")
                            : "crosshair";
    return;
  }
  if (drag.mode === "new") {
    drag.box = {label: label(), x0: Math.min(drag.start.x, p.x), y0: Math.min(drag.start.y, p.y),
                x1: Math.max(drag.start.x, p.x), y1: Math.max(drag.start.y, p.y)};
  } else if (drag.mode === "move") {
    const o = drag.orig, w = o.x1 - o.x0, h = o.y1 - o.y0;
    const x0 = clamp(o.x0 + p.x - drag.start.x, 0, 1 - w), y0 = clamp(o.y0 + p.y - drag.start.y, 0, 1 - h);
    Object.assign(boxes[selected], {x0, y0, x1: x0 + w, y1: y0 + h});
  } else {
    const b = boxes[selected];
    const x = p.x < drag.fx ? Math.min(p.x, drag.fx - MIN) : Math.max(p.x, drag.fx + MIN);
    const y = p.y < drag.fy ? Math.min(p.y, drag.fy - MIN) : Math.max(p.y, drag.fy + MIN);
    Object.assign(b, {x0: Math.min(x, drag.fx), x1: Math.max(x, drag.fx), y0: Math.min(y, drag.fy), y1: Math.max(y, drag.fy)});
  }
  draw();
});
function snap(b) {                                  // a shapes-world model: the nearest box it learned
  const g = vocab().grid;
  if (!g) return b;
  const near = (values, v) => values.reduce((a, c) => (Math.abs(c - v) < Math.abs(a - v) ? c : a));
  const side = near(g.sizes, (b.x1 - b.x0 + b.y1 - b.y0) / 2);
  const cx = near(g.centres, (b.x0 + b.x1) / 2), cy = near(g.centres, (b.y0 + b.y1) / 2);
  return Object.assign(b, {x0: cx - side / 2, y0: cy - side / 2, x1: cx + side / 2, y1: cy + side / 2});
}
const end = () => {
  if (!drag) return;
  const d = drag;
  drag = null;
  if (d.mode === "new") {
    if (d.box && d.box.x1 - d.box.x0 >= MIN && d.box.y1 - d.box.y0 >= MIN) {
      boxes.push(snap(d.box));
      selected = boxes.length - 1;
      commit();
    } else {
      draw();
    }
  } else {
    snap(boxes[selected]);
    commit();
  }
};
canvas.addEventListener("pointerup", end);
canvas.addEventListener("pointercancel", end);
canvas.addEventListener("keydown", (event) => {
  if (event.key === "Delete" || event.key === "Backspace") { event.preventDefault(); remove(); }
});
element.querySelector(".ldm-layout-delete").addEventListener("click", remove);
for (const sel of [shapeSel, colourSel, classSel]) {
  sel.addEventListener("change", () => {
    if (selected >= 0) { boxes[selected].label = label(); commit(); }
  });
}
watch("value", fromValue);
watch("vocab", setVocab);
watch("aspect", setAspect);
setVocab();
setAspect();
fromValue();
"""


def layout_canvas(text: str, vocabulary: LayoutVocabulary | None) -> gr.HTML:
    """The canvas component (its value: the layout text); `trigger("edit")` after each mouse edit."""
    return gr.HTML(text, html_template=HTML, css_template=CSS, js_on_load=JS, apply_default_css=False,
                   vocab=vocabulary.as_dict() if vocabulary else None, aspect=1.0, elem_classes=["ldm-layout-canvas"])


def boxes_picture(image: Image.Image, boxes: list, vocabulary: LayoutVocabulary, side: int = 384) -> Image.Image:
    """The picture faded to a third of its contrast, enlarged to about `side` pixels (nearest
    neighbour, so a 64 px result stays sharp), with each box drawn in its class colour and named."""
    scale = max(1, math.ceil(side / max(image.size)))
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    picture = Image.blend(big, Image.new("RGB", big.size, "white"), 0.6)
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=13)
    for i, (c, x0, y0, x1, y1) in enumerate(boxes):
        box = (x0 * big.width, y0 * big.height, x1 * big.width - 1, y1 * big.height - 1)
        draw.rectangle(box, outline=vocabulary.colour(c), width=2)
        draw.text((box[0] + 4, box[1] + 3), f"{i + 1}: {vocabulary.label(c)}", fill=(20, 20, 20), font=font)
    return picture
