"""The onboarding report: a picture of every patient, written by ``validate --report`` and ``ingest``.

One small export (center A as ``masks_beside.yaml`` describes it; three patients: one ready, one
refused for want of a clinical row, one for want of its tumour mask) is validated with
``--report`` and ingested through the CLI; both pages are opened in headless Chromium
(``--dump-dom`` of a copy with a probe script: no driver or Python package needed), which must load
every image. Without Chromium the browser test is skipped, unless ``ATRX_REQUIRE_BROWSER=1``
(``.ci/run`` sets it) makes it fail.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_center_paths import EXAMPLES, dicom_export
from typer.testing import CliRunner

from atrx.cli import app
from atrx.config.center import load_center
from atrx.workspace import Workspace
from ingest.discover import plan_center
from ingest.driver import IngestSummary
from ingest.onboarding import ingest_report, validate_report
from ingest.patient import StudyOutcome
from ingest.synth import generate_cohort

runner = CliRunner()
KEY = "onboarding-test-key-of-32-bytes-or-more"


@dataclass(frozen=True)
class Onboarded:
    export: Path
    raw_ids: list[str]  # [ready, no clinical row, no tumour mask]
    pseudonyms: list[str]
    validate_html: Path
    validate_out: str
    ingest_html: Path
    ingest_out: str


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def onboarded(tmp_path_factory: pytest.TempPathFactory) -> Onboarded:
    root = tmp_path_factory.mktemp("onboarded")
    generate_cohort(root / "cohort", scale=0.2, seed=5, per_center=3, centers=("A",), workers=1)
    export = root / "export"
    raw = dicom_export(root / "cohort", export)
    sheet = export / "clinical.csv"
    sheet.write_text("".join(line for line in sheet.read_text().splitlines(keepends=True) if raw[1] not in line))
    (export / "masks" / f"{raw[2]}_tumor.nii.gz").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATRX_EXAMPLE_EXPORT", str(export))
        mp.setenv("ATRX_DEID_KEY", KEY)
        config = EXAMPLES / "masks_beside.yaml"
        before = _tree(export)
        val = runner.invoke(app, ["center", "validate", str(config), "--report", str(root / "report")])
        assert val.exit_code == 1, val.stdout + val.stderr  # some patients would be quarantined
        assert _tree(export) == before  # the dry run wrote nothing into the export
        assert _tree(root / "report") == ["onboarding-EX_BESIDE.html"]  # and only the report
        ing = runner.invoke(app, ["ingest", str(config), "--home", str(root / "home"), "--workers", "1"])
        assert ing.exit_code == 0, ing.stdout + ing.stderr
        plan = plan_center(load_center(config), KEY)
    (page,) = (root / "home" / "reports").glob("onboarding-EX_BESIDE-ingest-*.html")
    return Onboarded(export, raw, [p.patient_id for p in plan.patients], root / "report" / "onboarding-EX_BESIDE.html",
                     val.stdout, page, ing.stdout)


def _count(page: str, key: str) -> str:
    m = re.search(rf'<tr data-key="{re.escape(key)}"><th>[^<]*</th><td class="num">([^<]*)</td>', page)
    assert m, f"no count {key!r} on the page"
    return m[1]


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr class="patient (\w[\w ]*)">', page)


def test_validate_report_shows_raw_ids_says_so_and_puts_the_refusal_first(onboarded: Onboarded) -> None:
    page = onboarded.validate_html.read_text()
    assert f"onboarding report (raw ids: keep it on this machine): {onboarded.validate_html}" in " ".join(
        onboarded.validate_out.split())
    assert 'id="privacy"' in page and "Raw patient ids" in page
    ready, no_row, no_mask = onboarded.raw_ids
    assert ready in page and no_row in page and no_mask in page
    assert page.index('id="refused"') < page.index('id="counts"') < page.index('id="patients"')
    _assert_refusals(page, no_row, no_mask)
    assert (_count(page, "patients"), _count(page, "patients_ready"), _count(page, "patients_refused")) == \
        ("3", "1", "2")
    assert _rows(page) == ["ready", "refused", "refused"]
    # T1c and T2f before of the ready patient and of the one without a clinical row (its images were
    # chosen); the one without a mask was refused before that; and the histograms
    assert page.count("<img ") == 2 + 2 + 0 + 1
    assert page.count("nothing to draw: refused before its images were chosen") == 2
    assert "after" not in re.findall(r"<th>([^<]*)</th>", page[page.index('id="patients"'):])[-1]


def _assert_refusals(page: str, no_row: str, no_mask: str) -> None:
    """Both refused patients are in the table at the top, each with its reason, file and fix."""
    refusals = page[page.index('id="refused"'):page.index('id="counts"')]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", refusals, re.S)
    (row,) = [r for r in rows if no_row in r]
    assert "no row in the clinical sheet" in row and "add a row" in row
    (row,) = [r for r in rows if no_mask in r]
    assert "nothing matches" in row and f"masks/{no_mask}_tumor.nii.gz" in row


def test_ingest_report_shows_pseudonyms_only(onboarded: Onboarded) -> None:
    page = onboarded.ingest_html.read_text()
    assert onboarded.ingest_html.name in onboarded.ingest_out  # the summary prints where it is
    for raw in onboarded.raw_ids:
        assert raw not in page
    assert str(onboarded.export) not in page and "/tmp" not in page
    ready, no_row, no_mask = onboarded.pseudonyms
    assert "Pseudonyms only" in page and ready in page
    _assert_refusals(page, no_row, no_mask)
    assert (_count(page, "patients found"), _count(page, "studies ingested"),
            _count(page, "patients quarantined")) == ("3", "1", "2")
    assert _rows(page) == ["ingested", "refused", "refused"]
    # the ingested patient: before and after; the one without a clinical row: before, and why no
    # after; the one without a mask: why nothing; and the histograms
    assert page.count("<img ") == 4 + 2 + 0 + 1
    assert page.count("not drawn: not ingested: see the refusals above") == 2
    assert page.count("nothing to draw: refused before its images were chosen") == 4
    volumes = page[page.index('id="volumes"'):page.index('id="patients"')]
    assert "lesion after" in volumes and "edema after" in volumes


_PROBE = """<script>window.addEventListener('load', function () {
  var seen = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth, src: i.src.slice(0, 22)}; });
  var out = document.createElement('pre'); out.id = 'atrx-probe'; out.textContent = JSON.stringify(seen);
  document.body.appendChild(out); });</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser, found before the export is built (so a skip costs nothing)."""
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                 None)
    if found:
        return found
    if os.environ.get("ATRX_REQUIRE_BROWSER") == "1":
        pytest.fail("ATRX_REQUIRE_BROWSER=1 but no chromium on PATH: apt-get install -y chromium")
    pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does); "
                "set ATRX_REQUIRE_BROWSER=1 to fail instead")


def _open_in_chromium(chromium: str, page: Path, tmp_path: Path) -> tuple[str, list[dict]]:
    """The DOM Chromium built from a copy of ``page`` in another folder (so nothing relative can
    load), after its load event, with what it made of every ``<img>``."""
    copy = tmp_path / "elsewhere" / "page.html"
    copy.parent.mkdir()
    copy.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
           "--dump-dom", copy.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    m = re.search(r'<pre id="atrx-probe">(.*?)</pre>', done.stdout, re.S)
    assert m, f"chromium did not run the page's load handler (rc {done.returncode}): {done.stderr[-2000:]}"
    return done.stdout, json.loads(html.unescape(m[1]))


@pytest.mark.parametrize("which", ["validate", "ingest"])
def test_every_image_loads_in_a_real_browser(chromium: str, onboarded: Onboarded, which: str,
                                             tmp_path: Path) -> None:
    page = onboarded.validate_html if which == "validate" else onboarded.ingest_html
    dom, images = _open_in_chromium(chromium, page, tmp_path)
    assert len(images) == (5 if which == "validate" else 7)
    broken = [i for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, broken
    assert all(i["src"].startswith("data:image/png;base64") for i in images)  # self-contained
    assert all(0 < i["width"] <= 160 for i in images if i["alt"] != "intensity histograms")
    assert "nothing matches" in dom and "no row in the clinical sheet" in dom  # the reasons, as shown
    assert _rows(dom) == ["ready" if which == "validate" else "ingested", "refused", "refused"]
    key = "patients_refused" if which == "validate" else "patients quarantined"
    assert _count(dom, key) == "2"


def test_a_picture_that_cannot_be_drawn_is_a_placeholder_with_the_reason(onboarded: Onboarded, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    export = tmp_path / "export"
    shutil.copytree(onboarded.export, export)
    monkeypatch.setenv("ATRX_EXAMPLE_EXPORT", str(export))
    monkeypatch.setenv("ATRX_DEID_KEY", KEY)
    cfg = load_center(EXAMPLES / "masks_beside.yaml")
    plan = plan_center(cfg, KEY)
    flair = plan.patients[0].studies[0].t2f.files
    for f in flair:  # the file changed after planning: no longer an image
        Path(f).write_bytes(b"not a DICOM file")
    page = validate_report(plan, tmp_path / "report").read_text()
    assert page.count('<div class="placeholder" title="T2F before">not drawn: ') == 1
    assert page.count("<img ") == 4  # three thumbnails still drawn, and the histograms

    pp = plan.patients[0]
    summary = IngestSummary("ingest-test", cfg.center, 3, plan=plan, outcomes=[StudyOutcome(
        pp.patient_id, pp.studies[0].study_id, "ingested", version=1, zarr_path="no/such/version/v1")])
    path = ingest_report(summary, Workspace.at(tmp_path / "home"))
    page = Path(path).read_text()
    assert path.endswith("/reports/onboarding-EX_BESIDE-ingest-test.html")
    after = re.findall(r'<div class="placeholder" title="T1C after">not drawn: ([^<]*)</div>', page)
    assert after[0].startswith("FileNotFoundError: {home}/images.zarr")  # the ingested study's
    assert after[1:] == ["not ingested: see the refusals above"]  # the patient without a clinical row
    assert "GDCM ordered 0 of the 23 files" in page  # the unreadable T2f, before
    assert str(tmp_path) not in page and pp.raw_id not in page
