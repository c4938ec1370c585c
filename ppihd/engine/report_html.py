"""``report.html``: the run's studies as a worklist page (docs/inference.md "report.html").

A static page that opens from disk (``file://``, no server, no network): one row per study of
``studies.csv``, sorted by the study's P(any) descending (studies without an answer last), with the flagged
classes, the primary series, a thumbnail of the series that answered and, on click, its per-series PNG.
Thumbnails are small PNGs in ``thumbs/`` made from ``series/<series_id>.png`` (or, when plots are off, from
the key slice of ``any`` in the brain window); every link is relative, so the output folder can be moved or
copied as a whole.

Every string that comes from a DICOM header (patient id, descriptions, kernels, UIDs, folder names, warnings)
is untrusted and HTML-escaped; a Content-Security-Policy lets only the page's own inline script run.
The script sets ``data-images`` on ``<body>`` to ``"ok"`` once every image has loaded (``"broken"`` if one
failed) — what the headless-browser test reads.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import os
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import quote

from ppihd import LABELS
from ppihd.utils.fileio import atomic_path

THUMB_WIDTH = 320

_SCRIPT = """
(function () {
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var done = imgs.every(function (i) { return i.complete; });
    if (!done) { return false; }
    var ok = imgs.every(function (i) { return i.naturalWidth > 0; });
    document.body.setAttribute('data-images', ok ? 'ok' : 'broken');
    document.body.setAttribute('data-images-count', String(imgs.length));
    return true;
  }
  window.addEventListener('load', function () {
    if (!check()) { var t = setInterval(function () { if (check()) { clearInterval(t); } }, 50); }
  });
})();
""".strip()

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.35em; margin: 0 0 .2em 0; }
.meta { color: #555; font-size: .9em; margin-bottom: .8em; }
.provenance { background: #fff3cd; border: 1px solid #e0c060; padding: .4em .6em; margin: .4em 0 .8em 0; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .35em .5em; text-align: left; vertical-align: top; font-size: .92em; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.p { font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { height: .45em; background: #eee; width: 7em; margin-top: .2em; }
.bar > span { display: block; height: 100%; background: #c00; }
.flag { display: inline-block; background: #c00; color: #fff; border-radius: 3px; padding: 0 .35em; margin: 0 .2em .2em 0; }
.none { color: #777; }
tr.flagged td.p { color: #b00; font-weight: 600; }
img.thumb { width: 240px; border: 1px solid #bbb; }
.uid { font-family: monospace; font-size: .8em; color: #666; word-break: break-all; }
.warn { color: #8a5a00; font-size: .85em; }
""".strip()


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _href(*parts: str) -> str:
    return "/".join(quote(str(p), safe="") for p in parts)


def _float(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def _read_csv(path: str) -> List[Dict[str, str]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def make_thumbnail(out_dir: str, series_id: str, key_slice_file: Optional[str] = None,
                   width: int = THUMB_WIDTH, frame: Optional[int] = None) -> Optional[str]:
    """``thumbs/<series_id>.png`` (relative path) from ``series/<series_id>.png``, else from the DICOM file
    ``key_slice_file`` (its 1-based ``frame`` if a multi-frame file) in the brain window (WL 40 / WW 80); None
    when neither exists."""
    from PIL import Image

    import numpy as np

    rel = f"thumbs/{series_id}.png"
    dst = os.path.join(out_dir, "thumbs", f"{series_id}.png")
    src = os.path.join(out_dir, "series", f"{series_id}.png")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.isfile(src):
        im = Image.open(src).convert("RGB")
    elif key_slice_file and os.path.isfile(key_slice_file):
        import pydicom

        from ppihd.data.dicom import read_headers
        from ppihd.data.series import read_hu

        hdrs = read_headers(key_slice_file)
        hu = read_hu(hdrs[min(len(hdrs), int(frame or 1)) - 1], {"fix_intercept": False})
        im = Image.fromarray(np.clip((hu - 0.0) / 80.0 * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    else:
        return None
    h = max(1, round(im.height * width / im.width))
    im = im.resize((width, h), Image.LANCZOS) if im.width > width else im
    with atomic_path(dst, ".png") as tmp:
        im.save(tmp, format="PNG", optimize=True)
    return rel


def _sop_paths(out_dir: str, wanted: set) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for r in _read_csv(os.path.join(out_dir, "predictions.csv")):
        if r["sop_uid"] in wanted:
            out.setdefault(r["sop_uid"], r["path"])
    return out


def _study_docs(out_dir: str, rows: List[Dict[str, str]]) -> Dict[str, Dict[str, Any]]:
    docs = {}
    for r in rows:
        p = os.path.join(out_dir, "studies", f"{r['study_id']}.json")
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                docs[r["study_id"]] = json.load(f)
    return docs


def sort_studies(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """By P(any) descending; studies without an answer last; ties by study folder / UID."""
    return sorted(rows, key=lambda r: (_float(r.get("any")) is None, -(_float(r.get("any")) or 0.0),
                                       r.get("study_folder", ""), r.get("study_uid", "")))


def write_report_html(out_dir: str, infer_cfg: Mapping[str, Any], provenance: Optional[str] = None) -> str:
    """Write ``<out_dir>/report.html`` (and ``thumbs/``) from ``studies.csv``, ``studies/*.json``,
    ``series.csv`` and ``series/*.png``. Returns the page's path."""
    threshold = float(infer_cfg["threshold"])
    rows = sort_studies(_read_csv(os.path.join(out_dir, "studies.csv")))
    series = {r["series_id"]: r for r in _read_csv(os.path.join(out_dir, "series.csv"))}
    docs = _study_docs(out_dir, rows)
    keys_any = {d["key_slices"]["any"]["sop_uid"] for d in docs.values() if d.get("key_slices", {}).get("any")}
    sop_paths = _sop_paths(out_dir, keys_any)
    body: List[str] = []
    for rank, r in enumerate(rows, 1):
        doc = docs.get(r["study_id"], {})
        p_any = _float(r.get("any"))
        flagged = [f for f in (r.get("flagged") or "").split(";") if f]
        answer = doc.get("answer_series") or ""
        # the thumbnail: the series that answered (the primary one unless it could not be predicted)
        thumb_cell = '<span class="none">no usable series</span>'
        if answer:
            key = (doc.get("key_slices") or {}).get("any") or {}
            thumb = make_thumbnail(out_dir, answer, sop_paths.get(key.get("sop_uid", "")), frame=key.get("frame"))
            png = os.path.join(out_dir, "series", f"{answer}.png")
            target = _href("series", f"{answer}.png") if os.path.isfile(png) else (
                _href(*thumb.split("/")) if thumb else "")
            if thumb:
                thumb_cell = (f'<a href="{_e(target)}" target="_blank" title="series {_e(answer)}">'
                              f'<img class="thumb" src="{_e(_href(*thumb.split("/")))}" '
                              f'alt="series {_e(answer)}"></a>')
            else:
                thumb_cell = '<span class="none">no picture</span>'
        probs = "".join(
            f'<span class="flag" title="p = {_float(r.get(lab)) or 0:.3f}">{_e(lab)} '
            f'{(_float(r.get(lab)) or 0):.2f}</span>' for lab in flagged) or '<span class="none">none</span>'
        ps = r.get("primary_series_id") or ""
        srow = series.get(ps, {})
        primary = ("<span class=\"none\">none</span>" if not ps else
                   f'#{_e(r.get("primary_series_number"))} {_e(r.get("primary_description"))}<br>'
                   f'{_e(srow.get("num_slices", ""))} slices, {_e(srow.get("spacing_mm", ""))} mm, '
                   f'kernel {_e(srow.get("kernel", ""))}<br><span class="uid">{_e(r.get("primary_series_uid"))}'
                   f'</span><br><span class="warn">{_e(r.get("primary_reason"))}</span>')
        others = [s for s in doc.get("series", []) if str(s.get("predicted")) == "1" and s["series_id"] != answer
                  and os.path.isfile(os.path.join(out_dir, "series", f"{s['series_id']}.png"))]
        links = " ".join(f'<a href="{_e(_href("series", s["series_id"] + ".png"))}" target="_blank">'
                         f'#{_e(s.get("series_number"))} {_e(s.get("role"))}</a>' for s in others)
        sr = os.path.join(out_dir, "sr", f"{r['study_id']}.dcm")
        sr_link = (f'<br><a href="{_e(_href("sr", r["study_id"] + ".dcm"))}">DICOM SR</a>'
                   if os.path.isfile(sr) else "")
        pcell = ("<span class=\"none\">n/a</span>" if p_any is None else
                 f'{p_any:.3f}<div class="bar"><span style="width:{100 * p_any:.1f}%"></span></div>')
        cls = "study flagged" if flagged else "study"
        body.append(
            f'<tr class="{cls}" data-rank="{rank}" data-p-any="{"" if p_any is None else f"{p_any:.7g}"}" '
            f'data-study-uid="{_e(r.get("study_uid"))}">'
            f'<td>{rank}</td><td>{_e(r.get("patient_id"))}<br><b>{_e(r.get("study_folder"))}</b><br>'
            f'<span class="uid">{_e(r.get("study_uid"))}</span>{sr_link}</td>'
            f'<td class="p">{pcell}</td><td>{probs}</td><td>{primary}</td><td>{thumb_cell}</td>'
            f'<td>{links or "<span class=none>-</span>"}<br><span class="warn">{_e(r.get("warnings"))}</span></td>'
            f'</tr>')
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    n_flag = sum(1 for r in rows if r.get("flagged"))
    prov = f'<div class="provenance">{_e(provenance)}</div>' if provenance else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="script-src 'sha256-{digest}'; object-src 'none'; base-uri 'none'; form-action 'none'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ppihd studies ({len(rows)})</title>
<style>{_CSS}</style></head>
<body data-images="pending">
<h1>ppihd: {len(rows)} studies, {n_flag} flagged</h1>
<div class="meta">Sorted by study P(any), highest first. A class is flagged when its study probability is above
{threshold:g} ({_e(infer_cfg["study_aggregation"])}). Research software, not a medical device.
Click a picture for the series report; files: studies.csv, series.csv, predictions.csv.</div>
{prov}
<table id="studies"><thead><tr><th>#</th><th>patient / study</th><th>P(any)</th><th>flagged</th>
<th>primary series</th><th>answer series</th><th>other series / warnings</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""
    path = os.path.join(out_dir, "report.html")
    with atomic_path(path, ".html") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    return path
