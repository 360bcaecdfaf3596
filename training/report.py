"""One self-contained HTML report laid out like the results section of Liu et al. 2024.

Tables first (Table 2: training and validation; Table 3: test; DeLong comparisons; calibration and
decision-curve summaries), then the figures embedded as base64 data URIs, so the file can be
mailed or archived alone. All text from ``metrics`` and figure names is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FIGURE_CAPTIONS", "SET_NAMES", "render_report"]

SET_NAMES: tuple[str, ...] = ("train", "validation", "test")
_SET_TITLES = {"train": "Training", "validation": "Validation", "test": "Test"}

#: known figure keys, in the paper's order, with their captions; other keys follow, in given order
FIGURE_CAPTIONS: dict[str, str] = {
    "roc_train": "Figure 3a. ROC curves of the models in the training set.",
    "roc_validation": "Figure 3b. ROC curves of the models in the validation set.",
    "roc_test": "Figure 3c. ROC curves of the models in the test set.",
    "calibration": "Figure 4. Calibration curves.",
    "calibration_train": "Figure 4a. Calibration curves in the training set.",
    "calibration_validation": "Figure 4b. Calibration curves in the validation set.",
    "calibration_test": "Figure 4c. Calibration curves in the test set.",
    "decision_curve": "Figure 5. Decision curves.",
    "decision_curve_train": "Figure 5a. Decision curves in the training set.",
    "decision_curve_validation": "Figure 5b. Decision curves in the validation set.",
    "decision_curve_test": "Figure 5c. Decision curves in the test set.",
    "clinical_impact": "Figure 5d. Clinical impact curve of the fusion model.",
    "nomogram": "Figure 6. Nomogram of the fusion model.",
    "feature_shift": "Figure S1. Per-center distributions (box plots; diamond: mean) of the most "
                     "shifted selected features and fusion inputs.",
}

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border-top: 1px solid #999; border-bottom: 1px solid #999; padding: 4px 10px;
         text-align: center; }
th { background: #f2f2f2; } td.name { text-align: left; font-weight: 600; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.4em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.note { font-size: 0.85em; color: #555; }
.warn { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.5em 0.8em; }
td.shift { background: #fde2e1; font-weight: 600; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "&mdash;"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if math.isnan(x):
        return "&mdash;"
    return f"{x:.{digits}f}"


def _p(value: Any) -> str:
    if value is None:
        return "&mdash;"
    x = float(value)
    return _e("<0.001") if x < 0.001 else f"{x:.3f}"


def _auc_ci(m: Mapping[str, Any]) -> str:
    auc = _num(m.get("auc"))
    if m.get("auc_lo") is None or m.get("auc_hi") is None:
        return auc
    return f"{auc} ({_num(m['auc_lo'])}&ndash;{_num(m['auc_hi'])})"


_METRIC_COLUMNS = ("Sensitivity", "Specificity", "Accuracy", "AUC (95% CI)")


def _metric_cells(m: Mapping[str, Any] | None) -> str:
    if not m:
        return "<td>&mdash;</td>" * len(_METRIC_COLUMNS)
    cells = [
        _num(m.get("sensitivity")),
        _num(m.get("specificity")),
        _num(m.get("accuracy")),
        _auc_ci(m),
    ]
    return "".join(f"<td>{c}</td>" for c in cells)


def _performance_table(
    models: Mapping[str, Mapping[str, Any]], sets: Sequence[str], caption: str
) -> str:
    head_sets = "".join(
        f'<th colspan="{len(_METRIC_COLUMNS)}">{_e(_SET_TITLES.get(s, s))}</th>' for s in sets
    )
    head_cols = "".join(f"<th>{_e(c)}</th>" for c in _METRIC_COLUMNS) * len(sets)
    rows = []
    for name, per_set in models.items():
        cells = "".join(_metric_cells(per_set.get(s)) for s in sets)
        rows.append(f'<tr><td class="name">{_e(name)}</td>{cells}</tr>')
    body = "\n".join(rows) or f'<tr><td colspan="{1 + len(sets) * 4}">No models.</td></tr>'
    return (
        f"<table><caption>{_e(caption)}</caption>\n"
        f'<thead><tr><th rowspan="2">Model</th>{head_sets}</tr><tr>{head_cols}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table>"
    )


def _delong_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(
        f"<th>{_e(c)}</th>" for c in ("Set", "Model A", "Model B", "AUC A", "AUC B", "Z", "P value")
    )
    body = "\n".join(
        "<tr>"
        f"<td>{_e(_SET_TITLES.get(r.get('set'), r.get('set', '')))}</td>"
        f'<td class="name">{_e(r.get("model_a", ""))}</td><td class="name">{_e(r.get("model_b", ""))}</td>'
        f"<td>{_num(r.get('auc_a'))}</td><td>{_num(r.get('auc_b'))}</td>"
        f"<td>{_num(r.get('z'))}</td><td>{_p(r.get('p'))}</td>"
        "</tr>"
        for r in rows
    )
    body = body or '<tr><td colspan="7">No comparisons.</td></tr>'
    return (
        "<table><caption>DeLong test of the AUCs (paired, two-sided)</caption>\n"
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"
    )


def _calibration_table(cal: Mapping[str, Mapping[str, Any]]) -> str:
    head = "".join(
        f"<th>{_e(c)}</th>" for c in ("Model", "Set", "Brier score", "Slope", "Intercept")
    )
    rows = []
    for name, per_set in cal.items():
        for set_name, c in per_set.items():
            rows.append(
                f'<tr><td class="name">{_e(name)}</td><td>{_e(_SET_TITLES.get(set_name, set_name))}</td>'
                f"<td>{_num(c.get('brier'))}</td><td>{_num(c.get('slope'))}</td>"
                f"<td>{_num(c.get('intercept'))}</td></tr>"
            )
    return (
        "<table><caption>Calibration (slope by logistic recalibration; intercept = "
        "calibration-in-the-large)</caption>\n"
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


def _benefit_range(curve: Mapping[str, Sequence[float]]) -> str:
    """Thresholds where the model beats both treating all and treating none."""
    t = curve.get("thresholds") or []
    model = curve.get("net_benefit_model") or []
    treat_all = curve.get("net_benefit_all") or []
    wins = [float(x) for x, m, a in zip(t, model, treat_all, strict=False) if m > max(a, 0.0)]
    if not wins:
        return "none"
    return f"{min(wins):.2f}&ndash;{max(wins):.2f}"


def _decision_table(dca: Mapping[str, Mapping[str, Any]]) -> str:
    head = "".join(
        f"<th>{_e(c)}</th>" for c in ("Model", "Set", "Thresholds where the model adds net benefit")
    )
    rows = []
    for name, per_set in dca.items():
        for set_name, curve in per_set.items():
            rows.append(
                f'<tr><td class="name">{_e(name)}</td><td>{_e(_SET_TITLES.get(set_name, set_name))}</td>'
                f"<td>{_benefit_range(curve)}</td></tr>"
            )
    return (
        "<table><caption>Decision-curve analysis summary</caption>\n"
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


def _meta_table(meta: Mapping[str, Any]) -> str:
    rows = "\n".join(
        f'<tr><td class="name">{_e(k)}</td><td>{_e(v)}</td></tr>'
        for k, v in meta.items()
        if k != "title"
    )
    return f"<table><tbody>\n{rows}\n</tbody></table>" if rows else ""


def _figure_html(key: str, path: str | os.PathLike[str]) -> str:
    p = Path(path)
    mime = _MIME.get(p.suffix.lower())
    if mime is None:
        raise ValueError(
            f"figure {key!r}: unsupported image type {p.suffix!r} (use png, jpg or svg)."
        )
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    caption = FIGURE_CAPTIONS.get(key, key)
    return (
        f'<figure id="fig-{_e(re.sub(r"[^A-Za-z0-9_-]+", "-", key))}"><img alt="{_e(caption)}" src="data:{mime};base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def render_report(
    metrics: Mapping[str, Any],
    figures: Mapping[str, str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
) -> Path:
    """Write the HTML report and return its path.

    ``metrics`` (every key optional)::

        {
          "models": {model_name: {"train" | "validation" | "test": binary_metrics(...)}},
          "delong": [{"set", "model_a", "model_b", "auc_a", "auc_b", "z", "p"}, ...],
                    # e.g. training.evaluation.delong_table
          "calibration": {model_name: {set_name: calibration(...)}},
          "decision_curve": {model_name: {set_name: decision_curve(...)}},
          "meta": {"title": str, any other key: scalar shown as-is},
          "transfer_check" | "ranking" | "diagnostics": see training.report_diagnostics,
        }

    ``binary_metrics`` dicts need ``sensitivity``, ``specificity``, ``accuracy``, ``auc`` and
    optionally ``auc_lo``/``auc_hi`` (``None`` shows as a dash). Set names are ``train``,
    ``validation`` and ``test``. ``figures`` maps a key to a PNG/JPEG/SVG file; known keys (see
    ``FIGURE_CAPTIONS``: ``roc_train``, ``roc_validation``, ``roc_test``, ``calibration[_set]``,
    ``decision_curve[_set]``, ``clinical_impact``, ``nomogram``) are placed in the paper's order
    with its figure numbers, other keys after them with the key as caption; ``feature_shift``
    sits beside the shift table when ``diagnostics`` is given.
    """
    from training.report_diagnostics import SHIFT_FIGURE, transfer_sections

    models = metrics.get("models") or {}
    meta = metrics.get("meta") or {}
    title = str(meta.get("title", "ATRX Fusion: model performance report"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        _meta_table(meta),
        "<h2>Model performance</h2>",
        _performance_table(
            models,
            ("train", "validation"),
            "Table 2. Performance of the models in the training and validation sets",
        ),
        _performance_table(models, ("test",), "Table 3. Performance of the models in the test set"),
        '<p class="note">Sensitivity, specificity and accuracy at the cutoff chosen on the training '
        "set; AUC with DeLong 95% confidence interval.</p>",
        *transfer_sections(metrics, figures, _figure_html),
    ]
    if metrics.get("delong") is not None:
        parts += ["<h2>Model comparison</h2>", _delong_table(metrics["delong"])]
    if metrics.get("calibration"):
        parts += ["<h2>Calibration</h2>", _calibration_table(metrics["calibration"])]
    if metrics.get("decision_curve"):
        parts += ["<h2>Clinical usefulness</h2>", _decision_table(metrics["decision_curve"])]
    placed = {SHIFT_FIGURE} if metrics.get("diagnostics") else set()
    ordered = [k for k in FIGURE_CAPTIONS if k in figures and k not in placed] + [
        k for k in figures if k not in FIGURE_CAPTIONS
    ]
    if ordered:
        parts.append("<h2>Figures</h2>")
        parts += [_figure_html(k, figures[k]) for k in ordered]
    parts.append("</body></html>")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(p for p in parts if p) + "\n", encoding="utf-8")
    return path
