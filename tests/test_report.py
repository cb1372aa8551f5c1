"""``repro report``: one self-contained HTML page, checked as text and in a real headless
browser (Debian's ``chromium``; skipped with the install line when it is absent)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from synthetic_runs import write_grid, write_run, write_spec

from imagenet_repro.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "no chromium on PATH: install it with `apt-get install -y chromium` (Debian)"

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const heading = Array.from(document.querySelectorAll('h2')).find(h => h.textContent.startsWith('Best config'));
  const best = heading && heading.nextElementSibling.tagName === 'TABLE' ? heading.nextElementSibling : null;
  const out = document.createElement('pre');
  out.id = 'report-check';
  out.textContent = JSON.stringify({
    images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    widths: imgs.map(i => i.naturalWidth),
    resources: performance.getEntriesByType('resource').map(r => r.name),
    tables: document.querySelectorAll('table').length,
    h2: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
    page: {scroll: document.documentElement.scrollWidth, width: document.documentElement.clientWidth},
    best: best ? {right: best.getBoundingClientRect().right, body: document.body.getBoundingClientRect().right,
                  cells: Array.from(best.querySelectorAll('tbody td')).map(td => td.getBoundingClientRect().height)}
               : null,
  });
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    write_grid(root / "runs", "rep", optimizers=("sgd", "sgdc"), lrs=(0.1, 0.5), wds=(5e-5, 2e-4), seeds=(0, 1, 2),
               diverge_lr=0.5, n_steps=400, epochs=4, layer_every=20, n_layers=4)
    write_run(root / "runs" / "rep" / "sgd-failed", optimizer="sgd", lr=0.1, wd=5e-5, seed=9, state="failed",
              stop_fraction=0.5, n_steps=400, epochs=4, layer_every=20, n_layers=4, sweep_name="rep")
    spec = write_spec(root / "rep.yaml", "rep", root / "runs")
    assert main(["report", str(spec), "--results", str(root / "results")]) == 0
    return root / "results" / "rep" / "report.html"


def test_report_is_one_self_contained_page(report):
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<link|<script|href=\"(?!#)|url\(", page), "the page must reference no other file"
    for section in ("Best config per optimizer", "Paired statistics", "Time to target", "Figures", "Theory check",
                    "Run status"):
        assert f"<h2>{section}" in page
    assert "includes zero" in page or "excludes zero" in page
    assert "Student&#x27;s t interval" in page
    assert "sgd-failed" in page and 'class="state-failed"' in page and 'class="state-diverged"' in page


def test_theory_check_has_a_verdict_per_optimizer(report):
    page = report.read_text()
    section = page[page.index("<h2>Theory check"):page.index("<h2>Run status")]
    for opt in ("sgd", "sgdc"):
        assert re.search(rf"<li><b>{opt}</b>: (as the theory predicts|the rise goes the theory|not what the theory)",
                         section), opt
    assert "tolerance ±25%" in section and "last 20% of steps" in section
    assert "rotation median |err|" in section  # the rotation's agreement is in the table


def test_best_config_summary_is_an_html_table(report):
    page = report.read_text()
    section = page.split("<h2>Best config per optimizer</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<pre" not in page
    table = re.match(r"\s*<table[^>]*>(.*?)</table>", section, re.S)
    assert table, "the best-config summary must be the section's first element, a <table>"
    head = re.findall(r"<th>(.*?)</th>", table.group(1))
    assert head[:5] == ["optimizer", "best lr_max", "best wd", "seeds", "final top-1 %"] and "steps to target" in head
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1).split("<tbody>", 1)[1], re.S)
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in rows]
    assert [c[0] for c in cells] == ["sgd", "sgdc"] and all(len(c) == len(head) for c in cells)
    assert all(" ± " in c[head.index("final top-1 %")] for c in cells)  # mean ± std over the 3 seeds


def test_paired_section_shows_each_at_its_best_and_folds_the_grid(report):
    section = report.read_text().split("<h2>Paired statistics", 1)[1].split("<h2>", 1)[0]
    shown, folded = section.split("<details>", 1)
    assert "each at its best" in shown and "same (lr, wd)" not in shown.split("<table", 1)[1]
    # 2 lr x 2 wd shared by sgd and sgdc, 3 metrics; lr 0.5 diverged at seed 0: still a row each
    assert re.search(r"<summary>at every shared \(lr, wd\): 12 rows</summary>", folded)
    assert folded.count("same (lr, wd)") == 12 and "each at its best" not in folded


def test_time_to_target_shows_the_best_configs_and_folds_the_grid(report):
    section = report.read_text().split("<h2>Time to target", 1)[1].split("<h2>", 1)[0]
    shown, folded = section.split("<details>", 1)
    first_cells = re.findall(r"<tr><td>([^<]*)</td>", shown)
    assert first_cells == ["sgd", "sgdc"]  # one row per optimizer: its best config
    assert "<summary>every config: 8 rows</summary>" in folded and len(re.findall(r"<tr><td>", folded)) == 8  # 2 x 2 x 2


def test_report_verb_bad_spec_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.yaml"), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repro: error:")
    assert not (tmp_path / "r").exists()


def _chromium(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={cwd / 'profile'}", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_report_renders_in_headless_chromium_with_every_image_loaded(report, tmp_path):
    checked = tmp_path / "checked.html"
    checked.write_text(report.read_text().replace("</body>", CHECK + "</body>"))
    dom = _chromium(["--virtual-time-budget=10000", "--window-size=1280,2400", "--dump-dom", checked.as_uri()],
                    tmp_path)
    found = re.search(r'<pre id="report-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"no check output in the DOM: {dom.stderr[-2000:]}"
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["images"] == 4 and check["loaded"] == 4 and min(check["widths"]) > 100
    assert check["resources"] == [], "the page fetched other files"
    assert check["tables"] >= 4 and "Paired statistics: corrected vs plain optimizer" in check["h2"]
    assert check["page"]["scroll"] <= check["page"]["width"], "the page scrolls sideways at 1280 px"
    best = check["best"]
    assert best is not None, "no table right under 'Best config per optimizer'"
    assert best["right"] <= best["body"] + 1, "the best-config table runs out of the page"
    assert len(best["cells"]) > 0 and max(best["cells"]) < 1.5 * min(best["cells"]), "a best-config cell wraps"

    shot = tmp_path / "shot.png"
    out = _chromium([f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri()], tmp_path)
    assert shot.is_file(), out.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2400, 1280) and pixels[..., :3].std() > 0.05  # not a blank page
