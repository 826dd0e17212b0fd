"""The review page: a static HTML file of label thumbnails ordered by ascending quality score, so a person checks
the least reliable masks first, and decides on each (accepted / rejected / needs fixing); the page downloads those
decisions as a :mod:`mal_core.data.decisions` file. Written by inference as ``<results_dir>/review/index.html`` +
``review/thumbs/``.

The page is built in the browser from one embedded JSON block rather than rendered here, card by card: the data
the filters work on (decision, class, flags) is then plain JS objects rather than something parsed back out of the
DOM, the file stays about 250 bytes a label (5,000 labels: ~1.3 MB), and the only copy of the decision names, the
file name and the file format is the one injected from :mod:`mal_core.data.decisions`. The page is self-contained
(no server, no external script, style or font: it opens from ``file://``); thumbnails are fetched only when their card
comes near the viewport (an ``IntersectionObserver``) and off-screen cards skip layout (``content-visibility``), so
opening or filtering 5,000 cards stays quick.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from mal_core.data.coco import CocoDataset, decode_segmentation
from mal_core.data.decisions import (
    ACCEPTED,
    DECISIONS,
    DECISIONS_FILE,
    DECISIONS_KIND,
    DECISIONS_VERSION,
    NEEDS_FIXING,
    REJECTED,
)
from mal_core.data.images import read_rgb
from mal_core.engine.quality import SCORE_DESCRIPTION
from mal_core.utils.io import atomic_write, atomic_write_text, json_safe
from mal_core.utils.safe_paths import check_guarded

REVIEW_DIR = "review"
THUMB_SIDE = 160
_MASK_RGB = np.array([255, 40, 40], dtype=np.float32)
_BOX_RGB = (40, 220, 255)


def render_thumbnail(image: np.ndarray, ann: dict[str, Any], side: int = THUMB_SIDE) -> Image.Image:
    """The box with a 25% margin resized to ``side``: outside the mask dimmed, the mask tinted red with a red
    outline, the box outlined in blue."""
    h, w = image.shape[:2]
    x, y, bw, bh = (float(v) for v in ann["bbox"])
    mx, my = 0.25 * bw + 2, 0.25 * bh + 2
    x0, y0 = max(int(x - mx), 0), max(int(y - my), 0)
    x1, y1 = min(int(np.ceil(x + bw + mx)), w), min(int(np.ceil(y + bh + my)), h)
    scale = side / max(x1 - x0, y1 - y0, 1)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    crop = np.asarray(Image.fromarray(image[y0:y1, x0:x1]).resize(size, Image.BILINEAR)).astype(np.float32)
    mask = decode_segmentation(ann["segmentation"], h, w)[y0:y1, x0:x1].astype(np.uint8)
    mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST).astype(bool)
    crop[~mask] *= 0.45
    crop[mask] = 0.7 * crop[mask] + 0.3 * _MASK_RGB
    out = np.ascontiguousarray(crop.clip(0, 255).astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in _MASK_RGB), 1)
    pil = Image.fromarray(out)
    ImageDraw.Draw(pil).rectangle([(x - x0) * scale, (y - y0) * scale, (x + bw - x0) * scale - 1,
                                   (y + bh - y0) * scale - 1], outline=_BOX_RGB)
    return pil


#: Per decision (from :data:`mal_core.data.decisions.DECISIONS`): its button text, keyboard key and colour.
_BUTTONS = {ACCEPTED: "Accept", REJECTED: "Reject", NEEDS_FIXING: "Needs fixing"}
_KEYS = {ACCEPTED: "a", REJECTED: "r", NEEDS_FIXING: "f"}
_COLOURS = {ACCEPTED: "#2e7d32", REJECTED: "#c62828", NEEDS_FIXING: "#ef8f00"}
#: The localStorage key prefix; the labels file name and the page's path follow it.
STORAGE_PREFIX = "mal-review-decisions:"

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;background:#f4f5f7}
header.intro{padding:14px 20px 4px}
h1{font-size:20px;margin:0 0 6px}
.intro p{margin:4px 0;font-size:13px;max-width:1100px;line-height:1.4}
.intro p.note{font-weight:600;color:#0d47a1}
.bar{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid #d0d4da;padding:8px 20px;
 display:flex;flex-wrap:wrap;align-items:center;gap:8px 18px;font-size:13px;box-shadow:0 1px 4px rgba(0,0,0,.06)}
.counts{display:flex;gap:6px}
.count{padding:3px 9px;border-radius:12px;background:#e8eaed;white-space:nowrap}
.count b{font-variant-numeric:tabular-nums}
.bar label{display:inline-flex;align-items:center;gap:4px}
.bar select{font-size:13px;padding:2px 4px}
.bar .tools{display:flex;gap:8px;align-items:center}
.btn{font:inherit;font-size:13px;padding:4px 10px;border:1px solid #9aa3ad;border-radius:4px;background:#fff;
 cursor:pointer}
.btn:hover{background:#eef1f4}
.filebtn{position:relative}
.filebtn input{position:absolute;inset:0;opacity:0;width:100%;cursor:pointer}
#msg{font-size:12px}
#msg.err{color:#b71c1c;font-weight:600}
#msg.ok{color:#2e7d32}
.help{font-size:12px;color:#5f6b76;padding:6px 20px 0}
main{display:grid;grid-template-columns:repeat(auto-fill,206px);gap:12px;padding:12px 20px 40px}
.card{width:206px;background:#fff;border:3px solid #d5d9de;border-radius:8px;padding:8px;display:flex;
 flex-direction:column;gap:4px;font-size:12px;content-visibility:auto;contain-intrinsic-size:auto 206px auto 320px;
 position:relative}
.card[hidden]{display:none}
.card:focus{outline:3px solid #1e88e5;outline-offset:2px}
.thumb{width:164px;height:164px;object-fit:contain;background:#222;border-radius:4px;display:block;align-self:center}
.badge{position:absolute;top:12px;left:20px;padding:1px 7px;border-radius:10px;color:#fff;font-weight:600;
 font-size:11px;display:none}
.cap{line-height:1.35;overflow-wrap:anywhere}
.cap .file{color:#5f6b76;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.cap small{color:#5f6b76}
.eiou{color:#0d47a1}
.flags{display:flex;flex-wrap:wrap;gap:3px}
.flag{background:#fff3e0;color:#8d4b00;border:1px solid #ffcc80;border-radius:8px;padding:0 6px;font-size:11px}
.btns{display:flex;gap:3px;margin-top:auto}
.btns button{flex:auto;font:inherit;font-size:11px;padding:4px 3px;white-space:nowrap;min-width:0;
 border:1px solid #b8bfc7;border-radius:4px;background:#f7f8f9;cursor:pointer}
.btns button:hover{background:#e6e9ec}
"""

_JS = r"""
"use strict";
(function () {
  const cfg = JSON.parse(document.getElementById("review-config").textContent);
  const items = JSON.parse(document.getElementById("review-data").textContent);
  const D = cfg.decisions;
  // Every file:// page shares one origin, and two jobs may write labels files of the same name (on the same
  // annotation ids): the page's own path is part of the key.
  const storeKey = cfg.storage_prefix + cfg.labels + " @ " + location.pathname;
  const byKey = {};
  for (const d of D) byKey[cfg.keys[d]] = d;
  const $ = (id) => document.getElementById(id);
  let decided = new Map();  // annotation id -> decision; ids not on this page (from a loaded file) are kept too

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function say(text, isError) { const m = $("msg"); m.textContent = text; m.className = isError ? "err" : "ok"; }

  // Thumbnails are requested only when their card comes within 800px of the viewport.
  const io = new IntersectionObserver((entries) => {
    for (const en of entries) {
      if (!en.isIntersecting) continue;
      const img = en.target.querySelector("img");
      img.src = img.dataset.src;
      io.unobserve(en.target);
    }
  }, {rootMargin: "800px 0px"});

  const frag = document.createDocumentFragment();
  const cards = items.map((it, i) => {
    const card = el("article", "card");
    card.tabIndex = 0;
    card.dataset.i = i;
    card.dataset.id = it.id;
    const img = el("img", "thumb");
    img.alt = "annotation " + it.id;
    img.width = img.height = cfg.thumb;
    img.dataset.src = "thumbs/" + it.id + ".png";
    card.append(img, el("span", "badge"));
    const cap = el("div", "cap");
    const score = it.score === null ? "n/a" : it.score.toFixed(3);
    cap.append(el("b", "", "#" + it.rank + " score " + score), el("br"),
               el("span", "cls", it.category + " \u00b7 ann " + it.id));
    const file = el("div", "file", it.file);
    file.title = it.file;
    cap.append(file);
    if (it.expected_iou !== null) cap.append(el("div", "eiou", "expected IoU " + it.expected_iou.toFixed(2)));
    if (it.flags.length) {
      const fl = el("div", "flags");
      for (const f of it.flags) fl.append(el("span", "flag", f));
      cap.append(fl);
    }
    if (it.quality) cap.append(el("small", "", it.quality));
    const btns = el("div", "btns");
    for (const d of D) {
      const b = el("button", "", cfg.buttons[d]);
      b.type = "button";
      b.dataset.d = d;
      b.title = cfg.buttons[d] + " (key " + cfg.keys[d] + "; again to clear)";
      b.setAttribute("aria-pressed", "false");
      btns.append(b);
    }
    card.append(cap, btns);
    frag.append(card);
    io.observe(card);
    return card;
  });
  $("cards").append(frag);

  // Filters: options from the data on the page.
  const fDecision = $("f-decision"), fClass = $("f-class"), fFlag = $("f-flag");
  function option(sel, value, text) { const o = el("option", "", text); o.value = value; sel.append(o); }
  option(fDecision, "all", "all");
  option(fDecision, "none", "unreviewed");
  for (const d of D) option(fDecision, "d:" + d, cfg.names[d]);
  option(fClass, "all", "all");
  for (const c of [...new Set(items.map((it) => it.category))].sort()) option(fClass, "c:" + c, c);
  option(fFlag, "all", "all");
  const flags = [...new Set(items.flatMap((it) => it.flags))].sort();
  if (flags.length) { option(fFlag, "any", "any flag"); option(fFlag, "no", "no flag"); }
  for (const f of flags) option(fFlag, "f:" + f, f);

  function matches(it) {
    const d = decided.get(it.id);
    const fd = fDecision.value, fc = fClass.value, ff = fFlag.value;
    if (fd === "none" ? d !== undefined : fd !== "all" && "d:" + d !== fd) return false;
    if (fc !== "all" && "c:" + it.category !== fc) return false;
    if (ff === "any") return it.flags.length > 0;
    if (ff === "no") return it.flags.length === 0;
    return ff === "all" || it.flags.includes(ff.slice(2));
  }
  function showCard(i) {
    const hide = !matches(items[i]);
    if (cards[i].hidden !== hide) cards[i].hidden = hide;
  }
  function updateShown() {
    let n = 0;
    for (const c of cards) if (!c.hidden) n++;
    $("shown").textContent = "showing " + n + " of " + cards.length;
  }
  function applyFilters() {
    for (let i = 0; i < cards.length; i++) showCard(i);
    updateShown();
  }
  for (const s of [fDecision, fClass, fFlag]) s.addEventListener("change", applyFilters);

  function updateCounts() {
    const n = {};
    for (const d of D) n[d] = 0;
    let none = 0;
    for (const it of items) { const d = decided.get(it.id); if (d === undefined) none++; else n[d]++; }
    for (const d of D) $("count-" + d).textContent = n[d];
    $("count-unreviewed").textContent = none;
  }
  function paint(i) {
    const d = decided.get(items[i].id) || "";
    const card = cards[i];
    if (d) card.dataset.decision = d; else delete card.dataset.decision;
    const badge = card.querySelector(".badge");
    badge.textContent = d ? cfg.names[d] : "";
    for (const b of card.querySelectorAll("button[data-d]")) b.setAttribute("aria-pressed", String(b.dataset.d === d));
  }
  function documentOf() {
    const entries = [...decided].sort((a, b) => a[0] - b[0]).map(([id, d]) => ({id: id, decision: d}));
    return {kind: cfg.kind, version: cfg.version, labels: cfg.labels, decisions: entries};
  }
  function save() {
    try { localStorage.setItem(storeKey, JSON.stringify(documentOf())); }
    catch (e) { say("could not keep the decisions in this browser (" + e.message + "): download them", true); }
  }
  function setDecision(i, d) {
    const id = items[i].id;
    if (decided.get(id) === d) decided.delete(id); else decided.set(id, d);
    paint(i);
    save();
    updateCounts();
    showCard(i);
    updateShown();
  }
  function refreshAll() {
    for (let i = 0; i < cards.length; i++) paint(i);
    updateCounts();
    applyFilters();
  }

  // The checks of mal_core.data.decisions.parse_decisions, plus: the file is for this page's labels file.
  function parseDoc(doc) {
    if (doc === null || typeof doc !== "object" || Array.isArray(doc) || doc.kind !== cfg.kind)
      throw new Error("not a decisions file: expected a JSON object with \"kind\": \"" + cfg.kind + "\"");
    if (doc.version !== cfg.version)
      throw new Error("decisions file version " + JSON.stringify(doc.version) + "; expected " + cfg.version);
    if (cfg.labels && doc.labels !== cfg.labels)
      throw new Error("these decisions are for " + JSON.stringify(doc.labels) + "; this page shows "
                      + JSON.stringify(cfg.labels));
    if (!Array.isArray(doc.decisions)) throw new Error("\"decisions\" must be a list");
    const out = new Map();
    doc.decisions.forEach((e, n) => {
      if (e === null || typeof e !== "object" || !Number.isInteger(e.id))
        throw new Error("decisions[" + n + "] must be an object with an integer annotation \"id\"");
      if (!D.includes(e.decision))
        throw new Error("decisions[" + n + "] has decision " + JSON.stringify(e.decision) + "; expected one of "
                        + D.join(", "));
      if (out.has(e.id)) throw new Error("annotation " + e.id + " has more than one decision");
      out.set(e.id, e.decision);
    });
    return out;
  }

  $("cards").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-d]");
    if (b) setDecision(+b.closest(".card").dataset.i, b.dataset.d);
  });
  function move(from, step) {
    for (let i = from + step; i >= 0 && i < cards.length; i += step) {
      if (cards[i].hidden) continue;
      cards[i].focus({preventScroll: true});
      cards[i].scrollIntoView({block: "nearest"});
      return;
    }
  }
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.target.closest("select, input, textarea")) return;
    const card = ev.target.closest(".card");
    const key = ev.key.toLowerCase();
    if (key === "j" || key === "k") {
      ev.preventDefault();
      move(card ? +card.dataset.i : (key === "j" ? -1 : cards.length), key === "j" ? 1 : -1);
    } else if (card && byKey[key]) {
      ev.preventDefault();
      const i = +card.dataset.i, set = decided.get(items[i].id) !== byKey[key];
      setDecision(i, byKey[key]);
      if (set) move(i, 1);
    }
  });

  $("download").addEventListener("click", () => {
    const blob = new Blob([JSON.stringify(documentOf(), null, 1) + "\n"], {type: "application/json"});
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = cfg.file;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    say("downloaded " + cfg.file + " (" + decided.size + " decisions)", false);
  });
  $("load").addEventListener("change", (ev) => {
    const input = ev.target, file = input.files[0];
    if (!file) return;
    file.text().then((text) => {
      let doc;
      try { doc = JSON.parse(text); } catch (e) { throw new Error("not JSON (" + e.message + ")"); }
      decided = parseDoc(doc);
      refreshAll();
      save();
      say("loaded " + decided.size + " decisions from " + file.name, false);
    }).catch((e) => say(file.name + ": " + e.message, true)).finally(() => { input.value = ""; });
  });

  let saved = null;
  try { saved = localStorage.getItem(storeKey); } catch (e) { saved = null; }
  if (saved !== null) {
    try {
      decided = parseDoc(JSON.parse(saved));
      say("restored " + decided.size + " decisions kept in this browser", false);
    } catch (e) { say("ignored the decisions kept in this browser: " + e.message, true); }
  }
  refreshAll();
  document.body.dataset.ready = "1";
})();
"""


def _json_for_script(obj: Any) -> str:
    """``obj`` as JSON safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` (so no ``</script>``)."""
    text = json.dumps(json_safe(obj), separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _decision_css() -> str:
    """Per-decision colours: the card border and tint, its badge, the pressed button and the count."""
    rules = []
    for d in DECISIONS:
        c = _COLOURS[d]
        rules.append(f'.card[data-decision="{d}"]{{border-color:{c};background:{c}14}}'
                     f'.card[data-decision="{d}"] .badge{{display:block;background:{c}}}'
                     f'.card[data-decision="{d}"] button[data-d="{d}"]{{background:{c};border-color:{c};color:#fff}}'
                     f'#count-{d}{{color:{c}}}.count-{d}{{background:{c}1f}}')
    return "".join(rules)


def write_review_page(coco: CocoDataset, labelled: list[dict[str, Any]], out_dir: Path, limit: int,
                      title: str = "Mask review", total: int | None = None, *, labels_file: str = "",
                      header_lines: list[str] | None = None) -> Path:
    """Write ``out_dir/index.html`` (+ ``thumbs/<annotation id>.png``) with the ``limit`` lowest-scored labels
    first; returns the page path.

    ``total``: how many labels the job made, when ``labelled`` holds only the lowest-scored ones. ``labels_file``:
    the name of the labelled COCO file; the page's downloaded decisions name it (``labels``), and the decisions a
    browser keeps are stored under it and the page's path. ``header_lines``: plain-text lines shown at the top of
    the page. A label's ``flags`` (a list of strings) and ``expected_iou`` are shown on its card when present."""
    thumbs = out_dir / "thumbs"
    check_guarded(thumbs)  # never through a link planted in the job folder
    thumbs.mkdir(parents=True, exist_ok=True)
    ranked = sorted((a for a in labelled if "score" in a and not a.get("iscrowd", 0)), key=lambda a: a["score"])
    shown = ranked[:limit]
    images = {img["id"]: img for img in coco.raw["images"]}
    cats = {c["id"]: c.get("name", str(c["id"])) for c in coco.raw["categories"]}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in shown:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image_id, anns in by_image.items():  # each image decoded once
        arr = read_rgb(coco.img_dir / images[image_id]["file_name"])
        for ann in anns:
            pil = render_thumbnail(arr, ann)
            # zlib level 1: ~40% less time than the default 6 on a photo crop, for ~10% more bytes
            atomic_write(thumbs / f"{ann['id']}.png",
                         lambda tmp, pil=pil: pil.save(tmp, format="PNG", compress_level=1))
    data = []
    for rank, ann in enumerate(shown, 1):
        eiou = ann.get("expected_iou")
        data.append({"id": ann["id"], "rank": rank, "score": float(ann["score"]),
                     "category": str(cats.get(ann["category_id"], ann["category_id"])),
                     "file": str(images[ann["image_id"]]["file_name"]),
                     "quality": ", ".join(f"{k} {v:.2f}" for k, v in ann.get("quality", {}).items()),
                     "flags": [str(f) for f in ann.get("flags", [])],
                     "expected_iou": None if eiou is None else float(eiou)})
    config = {"decisions": list(DECISIONS), "names": {d: d.replace("_", " ") for d in DECISIONS},
              "buttons": {d: _BUTTONS[d] for d in DECISIONS}, "keys": {d: _KEYS[d] for d in DECISIONS},
              "file": DECISIONS_FILE, "kind": DECISIONS_KIND, "version": DECISIONS_VERSION, "labels": labels_file,
              "storage_prefix": STORAGE_PREFIX, "thumb": THUMB_SIDE}
    notes = "".join(f'<p class="note">{html.escape(line)}</p>' for line in header_lines or [])
    counts = "".join(f'<span class="count count-{d}">{html.escape(d.replace("_", " "))} <b id="count-{d}">0</b></span>'
                     for d in DECISIONS)
    keys = ", ".join(f"<kbd>{_KEYS[d]}</kbd> {html.escape(_BUTTONS[d].lower())}" for d in DECISIONS)
    about = f" of {html.escape(labels_file)}" if labels_file else ""
    page = (
        "<!DOCTYPE html>\n<!-- written by mal-skill inference -->\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}</title>"
        f"<style>{_CSS}{_decision_css()}</style></head><body>"
        f"<header class=\"intro\"><h1>{html.escape(title)}</h1>{notes}"
        f"<p>{len(shown)} of {total or len(ranked)} labels{about}, lowest estimated quality first "
        f"(score in [0, 1]: {html.escape(SCORE_DESCRIPTION)}). "
        "Red tint and outline: predicted mask (outside it is dimmed); blue: the input box. "
        "Decide on each, download the decisions, then fix or drop the labels they name.</p></header>"
        f"<div class=\"bar\"><div class=\"counts\">{counts}"
        "<span class=\"count\">unreviewed <b id=\"count-unreviewed\">0</b></span></div>"
        "<label>decision <select id=\"f-decision\"></select></label>"
        "<label>class <select id=\"f-class\"></select></label>"
        "<label>flag <select id=\"f-flag\"></select></label><span id=\"shown\"></span>"
        "<span class=\"tools\"><button type=\"button\" class=\"btn\" id=\"download\">Download decisions</button>"
        "<label class=\"btn filebtn\">Load decisions&hellip;<input type=\"file\" id=\"load\" "
        "accept=\".json,application/json\"></label></span><span id=\"msg\" role=\"status\"></span></div>"
        f"<p class=\"help\">Keys on the focused card: {keys} (the same key again clears it); <kbd>j</kbd>/<kbd>k</kbd>"
        f" next/previous card. Decisions are kept in this browser until you download them as "
        f"{html.escape(DECISIONS_FILE)}.</p>"
        "<main id=\"cards\"></main>"
        f"<script type=\"application/json\" id=\"review-config\">{_json_for_script(config)}</script>"
        f"<script type=\"application/json\" id=\"review-data\">{_json_for_script(data)}</script>"
        f"<script>{_JS}</script></body></html>\n")
    page_path = out_dir / "index.html"
    atomic_write_text(page_path, page)
    return page_path
