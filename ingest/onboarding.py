"""The onboarding report: a picture of every patient of a center, in one self-contained HTML file.

``atrx center validate --report DIR`` writes it from the plan: raw ids (the page says so) and the
images as read only, since a dry run preprocesses nothing. Every ``atrx ingest`` writes it to
``<home>/reports/onboarding-<center>-<run>.html``: pseudonyms only, before and after
preprocessing. The refused patients with reason and fix come first; then the counts, the
center's intensity histograms and ROI volumes, and one row of thumbnails per study (T1c and T2f at
the lesion's largest axial slice, lesion yellow and tumour red). A picture that cannot be drawn is
a placeholder with the reason: the report never loses a run. Figures are base64 PNGs, so the file
needs nothing else.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from atrx.config.center import CenterConfig
from atrx.errors import InputError
from atrx.names import SEQUENCES
from atrx.workspace import Workspace
from ingest.discover import CenterPlan, PatientPlan, StudyPlan
from ingest.driver import IngestSummary
from ingest.onboarding_figures import (
    Cell,
    Pictures,
    attempt,
    histogram_png,
    source_pictures,
    stored_pictures,
)

__all__ = ["Cell", "Report", "Row", "ingest_report", "ingest_report_path", "render_html", "validate_report"]

#: ``progress(done, total, patient_id)`` after each patient (pseudonyms, even in a dry run)
ProgressFn = Callable[[int, int, str], None]
Kind = Literal["validate", "ingest"]

NO_STUDY = "nothing to draw: refused before its images were chosen (see the refusals above)"
VOLUME_COLUMNS = ("lesion before", "tumor before", "lesion after", "tumor after", "edema after")
VALIDATE_REGION = ("raw intensities as read (nothing is preprocessed in a dry run, so there is no brain "
                   "mask yet): voxels inside the head, above the image's Otsu threshold, and outside the "
                   "lesion mask. Scales differ between scanners; the ingest's z-scoring removes that.")
INGEST_REGION = ("intensities after preprocessing (N4, 1 mm grid, z-scored within the brain), inside the "
                 "brain mask: the curves of one center should lie on each other.")


@dataclass
class Row:
    """One study (or a patient without one): who, its status, its pictures, its ROI volumes in mL."""

    patient: str
    study: str
    status: str
    cells: list[Cell]
    volumes: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Report:
    """What the page shows, gathered first so the HTML is a pure function of it."""

    kind: Kind
    center: str
    counts: list[tuple[str, str]]
    refused: list[dict[str, str]]  # patient, study, stage, reason, fix, file
    notes: list[dict[str, str]]
    rows: list[Row]
    histogram: Cell
    region: str
    run_id: str | None = None
    seconds: float = 0.0


#: where a study's preprocessed version is: (status, zarr path or None) by (patient, study)
_StoredFn = Callable[[PatientPlan, StudyPlan], tuple[str, str | None]]


def _gather_rows(plan: CenterPlan, who: Callable[[PatientPlan], str], stored: _StoredFn | None,
                 images_root: str | None, scrub: Callable[[str], str], progress: ProgressFn | None,
                 ) -> tuple[list[Row], dict[str, list[tuple[str, np.ndarray]]]]:
    """Every study's thumbnail row, and the histogram samples (after if ``stored``, else before)."""
    titles = [f"{s.upper()} {when}" for when in (("before", "after") if stored else ("before",))
              for s in SEQUENCES]
    rows: list[Row] = []
    samples: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in SEQUENCES}
    for i, pp in enumerate(plan.patients, start=1):
        name = who(pp)
        if not pp.studies:
            rows.append(Row(name, "-", "refused" if not pp.ok else "no study",
                            [Cell(t, note=NO_STUDY) for t in titles]))
        for study in pp.studies:
            before = source_pictures(study, plan.config, scrub)
            cells, volumes, hist = list(before.cells), dict(before.volumes), before.samples
            status = "ready" if pp.ok else "refused"
            if stored is not None:
                status, path = stored(pp, study)
                why: dict[str, str] = {}
                after = (attempt("after", lambda p=path: stored_pictures(str(images_root), p), why, scrub)
                         if path else None)
                if after is None:
                    reason = why.get("after", "not ingested: see the refusals above")
                    after = Pictures([Cell(t, note=f"not drawn: {reason}") for t in titles[2:]], {}, {})
                cells += after.cells
                volumes.update(after.volumes)
                hist = after.samples
            label = name if len(pp.studies) == 1 else f"{name} {study.study_id}"
            for s, values in hist.items():
                samples[s].append((label, values))
            rows.append(Row(name, study.study_id, status, cells, volumes))
        if progress:
            progress(i, len(plan.patients), pp.patient_id)
    return rows, samples


def _histogram(samples: dict[str, list[tuple[str, np.ndarray]]], xlabel: str,
               scrub: Callable[[str], str]) -> Cell:
    why: dict[str, str] = {}
    png = attempt("histogram", lambda: histogram_png(samples, xlabel), why, scrub)
    return Cell("intensity histograms", png, None if png else f"not drawn: {why['histogram']}")


def _source_scrub(cfg: CenterConfig) -> Callable[[str], str]:
    root = str(cfg.source_path)
    return lambda text: text.replace(root, "{source}")


def _refusal(patient: str | None, study: str | None, stage: str, reason: str, fix: str | None,
             file: str | None) -> dict[str, str]:
    return {"patient": patient or "-", "study": study or "-", "stage": stage, "reason": reason,
            "fix": fix or "", "file": file or ""}


def validate_report(plan: CenterPlan, out_dir: str | Path, progress: ProgressFn | None = None) -> Path:
    """Write ``out_dir/onboarding-<center>.html`` from a dry run's plan; nothing else is written.

    Raw ids are shown (with the pseudonym each will get), and raw paths (with what the ingest will
    record for each: tokens are keyed, so this page is where they can be told apart); the page
    says so at the top.
    """
    t0 = time.perf_counter()
    cfg = plan.config
    scrub = _source_scrub(cfg)
    pseudonym = {pp.raw_id: pp.patient_id for pp in plan.patients}
    refused, notes = [], []
    owners = [(p, plan.redactor) for p in plan.problems]
    for pp in plan.patients:
        red = plan.redactor.merged(pp.redactor) if plan.redactor and pp.redactor else None
        owners += [(p, red) for p in pp.problems]
    for p, red in owners:
        who = f"{p.patient} ({pseudonym[p.patient]})" if p.patient in pseudonym else p.patient
        file = p.file and scrub(p.file)
        if p.file and red is not None and red.path(p.file) != p.file:
            file = f"{file} (recorded as {red.path(p.file)})"
        row = _refusal(who, None, p.stage, scrub(p.what), scrub(p.fix), file)
        (refused if p.blocking else notes).append(row)
    rows, samples = _gather_rows(plan, lambda pp: f"{pp.raw_id} ({pp.patient_id})", None, None, scrub, progress)
    report = Report("validate", cfg.center, [(k, str(v)) for k, v in plan.counts().items()], refused, notes,
                    rows, _histogram(samples, "raw intensity", scrub), VALIDATE_REGION)
    report.seconds = time.perf_counter() - t0
    path = Path(out_dir) / f"onboarding-{cfg.center}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path


def ingest_report_path(ws: Workspace, center: str, run_id: str) -> str:
    """Where an ingest run's report goes: ``<home>/reports/onboarding-<center>-<run>.html``."""
    return f"{ws.home}/reports/onboarding-{center}-{run_id}.html"


def _id_scrub(plan: CenterPlan) -> Callable[[str], str]:
    """What the ingest records with (:class:`ingest.deid.Redactor`: pseudonyms, keyed tokens for
    names, no absolute path), for every patient of the plan at once: the report's last line of
    defence, after the driver's own redaction."""
    red = plan.redactor
    if red is None:
        return _source_scrub(plan.config)
    for pp in plan.patients:
        if pp.redactor is not None:
            red = red.merged(pp.redactor)
    return red.text


def ingest_report(summary: IngestSummary, ws: Workspace, progress: ProgressFn | None = None) -> str:
    """Write an ingest run's report (pseudonyms only) and return its path (see ingest_report_path)."""
    t0 = time.perf_counter()
    plan = summary.plan
    if plan is None:
        raise InputError("this ingest summary carries no plan, so its patients cannot be drawn",
                         fix="pass the IngestSummary that ingest.driver.run_ingest returned")
    ids = _id_scrub(plan)

    def scrub(text: str) -> str:  # the workspace too: a page that is shared need not say where it lives
        return ids(text.replace(ws.home, "{home}"))

    refused, notes = [], []
    for q in summary.quarantined:
        row = _refusal(q["patient_id"], q["study_id"], q["stage"], scrub(q["reason"] or ""),
                       q["fix"] and scrub(q["fix"]), q["file"] and scrub(q["file"]))
        (refused if q["blocking"] else notes).append(row)
    outcomes = {(o.patient_id, o.study_id): o for o in summary.outcomes}

    def stored(pp: PatientPlan, study: StudyPlan) -> tuple[str, str | None]:
        o = outcomes.get((pp.patient_id, study.study_id))
        if o is None:
            return ("refused" if not pp.ok else "not run"), None
        return o.status, (o.zarr_path if o.status != "quarantined" else None)

    rows, samples = _gather_rows(plan, lambda pp: pp.patient_id, stored, ws.images, scrub, progress)
    report = Report("ingest", summary.center, summary.rows(), refused, notes, rows,
                    _histogram(samples, "z-scored intensity", scrub), INGEST_REGION, run_id=summary.run_id)
    report.seconds = time.perf_counter() - t0
    path = ingest_report_path(ws, summary.center, summary.run_id)
    text = render_html(report)
    if ws.is_local:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    else:  # a remote home: the same place, through fsspec
        import fsspec

        with fsspec.open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path


# HTML -------------------------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 1.5em auto;
       max-width: 1200px; color: #222; line-height: 1.35; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border-top: 1px solid #bbb; border-bottom: 1px solid #bbb; padding: 3px 8px; text-align: left;
         vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; }
figure { margin: 0; } figcaption { font-size: 0.8em; color: #555; max-width: 170px; }
.note { font-size: 0.85em; color: #555; }
.placeholder { width: 150px; min-height: 60px; padding: 5px; font-size: 0.8em; color: #7a2d00;
               background: #fbeee6; border: 1px dashed #d08a5a; }
.privacy { padding: 0.5em 0.8em; border-left: 4px solid #e0a800; background: #fff3cd; }
.privacy.safe { border-color: #2e7d32; background: #e8f5e9; }
tr.refused td, tr.quarantined td { background: #fdecea; }
.legend span { padding: 0 0.4em; font-weight: 600; }
"""
_PRIVACY = {
    "validate": ('<p class="privacy" id="privacy"><b>Raw patient ids.</b> This dry-run report shows the '
                 "hospital's own patient ids (each with the pseudonym the ingest will give it), as "
                 "<code>atrx center validate</code> prints them: keep it on this machine; do not mail "
                 "or archive it. Nothing was preprocessed, so only the images as read are shown.</p>"),
    "ingest": ('<p class="privacy safe" id="privacy"><b>Pseudonyms only.</b> Patients are shown by '
               "pseudonym; file paths are relative to the export, ids replaced.</p>"),
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(table_id: str, head: list[str], rows: list[list[str]], row_class: list[str] | None = None) -> str:
    """Cells are HTML already (escape before); ``row_class`` marks rows for the eye and for tests."""
    classes = row_class or [""] * len(rows)
    body = "".join(f'<tr class="{_e(c)}">' + "".join(f"<td>{v}</td>" for v in r) + "</tr>"
                   for r, c in zip(rows, classes, strict=True))
    return (f'<table id="{table_id}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{body}</tbody></table>")


def _cell_html(cell: Cell) -> str:
    if cell.png is None:
        return f'<div class="placeholder" title="{_e(cell.title)}">{_e(cell.note or "not drawn")}</div>'
    data = base64.b64encode(cell.png).decode("ascii")
    note = f"<figcaption>{_e(cell.note)}</figcaption>" if cell.note else ""
    return f'<figure><img alt="{_e(cell.title)}" src="data:image/png;base64,{data}">{note}</figure>'


def _ml_text(value: float | None) -> str:
    return "&mdash;" if value is None else f"{value:.1f}"


def render_html(r: Report) -> str:
    """The page for one center: refusals, counts, histograms, volumes, thumbnails. All text escaped."""
    what = "dry run (atrx center validate)" if r.kind == "validate" else f"ingest run {r.run_id}"
    title = f"Onboarding report: center {r.center}, {what}"
    refused_rows = [[_e(q[k]) for k in ("patient", "study", "stage", "reason", "fix", "file")] for q in r.refused]
    n_refused = len({q["patient"] for q in r.refused if q["patient"] != "-"})
    columns = [c for c in VOLUME_COLUMNS if any(c in row.volumes for row in r.rows)]
    titles = r.rows[0].cells if r.rows else []
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>", _PRIVACY[r.kind],
        f'<h2 id="refused-title">Refused: {n_refused} patient(s), {len(r.refused)} blocking problem(s)</h2>',
        _table("refused", ["patient", "study", "stage", "reason", "fix", "file"], refused_rows)
        if r.refused else "<p>No refusals.</p>",
        "<h2>Counts</h2>",
        '<table id="counts"><tbody>' + "".join(f'<tr data-key="{_e(k)}"><th>{_e(k)}</th><td class="num">'
                                              f"{_e(v)}</td></tr>" for k, v in r.counts) + "</tbody></table>",
    ]
    if r.notes:
        parts += [f"<details><summary>{len(r.notes)} note(s), not blocking</summary>",
                  _table("notes", ["patient", "study", "stage", "note", "fix", "file"],
                         [[_e(q[k]) for k in ("patient", "study", "stage", "reason", "fix", "file")]
                          for q in r.notes]), "</details>"]
    parts += [f"<h2>Center {_e(r.center)}: intensity histograms</h2>", _cell_html(r.histogram),
              f'<p class="note">{_e(r.region)}</p>',
              "<h2>ROI volumes (mL)</h2>",
              _table("volumes", ["patient", "study", *columns],
                     [[_e(row.patient), _e(row.study), *(_ml_text(row.volumes.get(c)) for c in columns)]
                      for row in r.rows]),
              '<p class="note">before: the source masks on their own grid; after: on the 1 mm grid of '
              "the store (edema = lesion minus tumour).</p>",
              f"<h2>Patients ({len(r.rows)} row(s), one per study)</h2>",
              '<p class="legend">Axial slice with the most lesion; outlines: '
              '<span style="color:#d4a800">lesion</span><span style="color:#e02020">tumour</span>. '
              "Radiological view (patient's right on the left).</p>",
              _table("patients", ["patient", "study", "status", *[c.title for c in titles]],
                     [[_e(row.patient), _e(row.study), _e(row.status), *(_cell_html(c) for c in row.cells)]
                      for row in r.rows], [f"patient {row.status}" for row in r.rows]),
              f'<p class="note">Generated {dt.datetime.now(dt.UTC).isoformat(timespec="seconds")} in '
              f"{r.seconds:.1f} s.</p>", "</body></html>"]
    return "\n".join(p for p in parts if p) + "\n"
