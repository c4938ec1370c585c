"""report.html (ppihd.engine.report_html) rendered by a real headless Chromium (Debian's package) on studies
built from the GE fixture through tools/infer.py: the page loads from disk, its rows are in study P(any) order
(computed here from studies.csv), every image loads, untrusted DICOM strings stay text, and a screenshot is kept
(in tmp, and in $PPIHD_TEST_ARTIFACTS when set)."""
import csv
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from conftest import require_tool
from config_utils import schema_section
from infer_utils import infer_args, load_tool, save_tiny_checkpoint
from study_utils import EVIL, build_studies

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, fixture_series_dir):
    root = tmp_path_factory.mktemp("html")
    cases = build_studies(str(root), fixture_series_dir)
    ckpt = save_tiny_checkpoint(str(root / "m.pdparams"))
    out = root / "out"
    rc = load_tool("tools/infer.py").main(infer_args(ckpt) + ["--input", str(root / "in"), "--output", str(out)])
    assert rc == 3
    return out, cases


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _chromium(exe, tmp_path, *args):
    r = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.body, self.rows, self.imgs, self.links, self.title, self._in_title = {}, [], [], [], "", False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "tr" and "study" in (a.get("class") or "").split():
            self.rows.append(a)
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a)
        self._in_title = tag == "title"

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def _expected_order(out):
    rows = _csv(out / "studies.csv")
    def key(r):
        return (r["any"] == "", -float(r["any"]) if r["any"] else 0.0)
    return [r["study_uid"] for r in sorted(rows, key=key)], rows


def test_page_in_chromium(run, tmp_path):
    exe = require_tool("chromium", package="chromium")
    out, cases = run
    url = (out / "report.html").as_uri()
    dom = _chromium(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", url)
    page = _Page()
    page.feed(dom)
    order, rows = _expected_order(out)
    assert [r["data-study-uid"] for r in page.rows] == order
    assert order[-1] == cases["CASE-D"]["study_uid"]              # no usable series: last
    p = [float(r["data-p-any"]) for r in page.rows if r["data-p-any"]]
    assert p == sorted(p, reverse=True) and len(p) == 3
    # every image loaded (the page's own script, run by the browser) - one thumbnail per answered study
    assert page.body.get("data-images") == "ok", page.body
    assert page.body.get("data-images-count") == "3" == str(len(page.imgs))
    # relative links only, to files that exist next to the page
    for ref in [i["src"] for i in page.imgs] + [a["href"] for a in page.links]:
        assert not re.match(r"^(/|[a-z]+:)", ref), ref
        assert (out / ref).is_file(), ref
    assert {a["href"] for a in page.links if a["href"].startswith("series/")} >= {
        f"series/{r['primary_series_id']}.png" for r in rows if r["any"]}
    # the untrusted SeriesDescription is text: no injected element ran or exists
    assert "data-pwned" not in page.body and page.title.startswith("ppihd studies") and "pwned" not in page.title
    assert "&lt;img src=x onerror=" in dom and "&lt;script&gt;" in dom
    assert not [i for i in page.imgs if i.get("src") == "x"]
    # a screenshot to look at
    shot = tmp_path / "report.png"
    _chromium(exe, tmp_path, "--window-size=1400,1100", "--virtual-time-budget=10000", f"--screenshot={shot}", url)
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1400, 1100)
        assert len(set(im.convert("L").resize((140, 110)).getdata())) > 20   # not a blank page
    if os.environ.get("PPIHD_TEST_ARTIFACTS"):
        os.makedirs(os.environ["PPIHD_TEST_ARTIFACTS"], exist_ok=True)
        shutil.copy(shot, os.path.join(os.environ["PPIHD_TEST_ARTIFACTS"], "report_html.png"))


def test_thumbnails_and_fallback_without_series_pngs(run, tmp_path):
    from ppihd.engine.report_html import write_report_html

    out, cases = run
    for name in os.listdir(out / "thumbs"):
        with Image.open(out / "thumbs" / name) as im:
            assert im.format == "PNG" and im.width <= 320
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "thumbs")
    for name in os.listdir(copy / "series"):
        if name.endswith(".png"):
            os.remove(copy / "series" / name)
    page = open(write_report_html(str(copy), schema_section("Infer", threshold=0.5), provenance="synthetic <b>phantoms</b>"),
                encoding="utf-8").read()
    assert "synthetic &lt;b&gt;phantoms&lt;/b&gt;" in page and EVIL not in page
    thumbs = sorted(os.listdir(copy / "thumbs"))
    assert len(thumbs) == 3        # from the key slice of `any` in the brain window
    for name in thumbs:
        with Image.open(copy / "thumbs" / name) as im:
            assert im.format == "PNG" and im.size[0] > 16 and len(set(im.convert("L").getdata())) > 10
