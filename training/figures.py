"""PNG figures of the paper (ROC, calibration, decision curve, clinical impact, nomogram), and
the per-center feature shift of the transfer diagnostics (:mod:`training.diagnostics`).

Each writer takes plain data (the dicts of :mod:`training.evaluation`) and an output path and
returns the path. Figures are drawn on ``matplotlib.figure.Figure`` with an explicit Agg canvas
created inside each function: nothing touches pyplot or the global backend, so the writers are
safe in servers, threads and headless workers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "plot_calibration",
    "plot_clinical_impact",
    "plot_decision_curve",
    "plot_feature_shift",
    "plot_nomogram",
    "plot_roc",
]

_DPI = 150
# nomogram tick labels closer than this many points are thinned out
_MIN_LABEL_GAP = 4.0


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out_path: str | os.PathLike[str]) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _auc_label(name: str, curve: Mapping[str, Any]) -> str:
    auc = curve.get("auc")
    if auc is None:
        return name
    lo, hi = curve.get("auc_lo"), curve.get("auc_hi")
    if lo is not None and hi is not None:
        return f"{name} (AUC {auc:.3f}, 95% CI {lo:.3f}-{hi:.3f})"
    return f"{name} (AUC {auc:.3f})"


def plot_roc(
    curves: Mapping[str, Mapping[str, Any]],
    out_path: str | os.PathLike[str],
    title: str = "ROC curves",
) -> Path:
    """ROC curves of several models on one set; each value has ``fpr``, ``tpr`` and ``auc``
    (optionally ``auc_lo``/``auc_hi``), e.g. from :func:`training.evaluation.roc_curve_data`."""
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(curve["fpr"], curve["tpr"], lw=1.8, label=_auc_label(name, curve))
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - Specificity", ylabel="Sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, out_path)


def plot_calibration(
    curves: Mapping[str, Mapping[str, Any]],
    out_path: str | os.PathLike[str],
    title: str = "Calibration curves",
) -> Path:
    """Observed event fraction vs mean predicted probability per model (dicts of
    :func:`training.evaluation.calibration`), with the ideal diagonal."""
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="Ideal")
    for name, cal in curves.items():
        curve = cal["curve"]
        label = name if cal.get("brier") is None else f"{name} (Brier {cal['brier']:.3f})"
        ax.plot(
            curve["mean_predicted"],
            curve["fraction_positive"],
            marker="o",
            ms=4,
            lw=1.5,
            label=label,
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="Predicted probability",
        ylabel="Observed fraction",
        title=title,
    )
    ax.legend(loc="upper left", fontsize=7)
    return _save(fig, out_path)


def plot_decision_curve(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    out_path: str | os.PathLike[str],
    title: str = "Decision curves",
) -> Path:
    """Net benefit vs threshold probability per model (dicts of
    :func:`training.evaluation.decision_curve` on the same cases), with treat-all and treat-none."""
    if not curves:
        raise ValueError("curves is empty.")
    fig = _figure(6.0, 4.8)
    ax = fig.add_subplot()
    first = next(iter(curves.values()))
    t = np.asarray(first["thresholds"])
    models = [np.asarray(c["net_benefit_model"]) for c in curves.values()]
    ax.plot(t, first["net_benefit_all"], color="grey", lw=1, label="Treat all")
    ax.plot(t, first["net_benefit_none"], color="black", lw=1, label="Treat none")
    for (name, curve), nb in zip(curves.items(), models, strict=True):
        ax.plot(curve["thresholds"], nb, lw=1.8, label=name)
    top = max(float(np.max(nb)) for nb in models + [np.asarray(first["net_benefit_all"])])
    ax.set(
        xlim=(float(t.min()), float(t.max())),
        ylim=(-0.05, max(0.05, top * 1.1)),
        xlabel="Threshold probability",
        ylabel="Net benefit",
        title=title,
    )
    ax.legend(loc="upper right", fontsize=7)
    return _save(fig, out_path)


def plot_clinical_impact(
    impact: Mapping[str, Sequence[float]],
    out_path: str | os.PathLike[str],
    population: int = 1000,
    title: str = "Clinical impact curve",
) -> Path:
    """Number called high risk and number of those with the event, per threshold (a dict of
    :func:`training.evaluation.clinical_impact`)."""
    fig = _figure(6.0, 4.8)
    ax = fig.add_subplot()
    ax.plot(
        impact["thresholds"],
        impact["n_high_risk"],
        color="tab:red",
        lw=1.8,
        label="Number high risk",
    )
    ax.plot(
        impact["thresholds"],
        impact["n_high_risk_with_event"],
        color="tab:blue",
        ls="--",
        lw=1.8,
        label="Number high risk with event",
    )
    ax.set(
        xlim=(0, 1),
        ylim=(0, population),
        xlabel="Threshold probability",
        ylabel=f"Number high risk (of {population})",
        title=title,
    )
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, out_path)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:.3g}"


def plot_nomogram(
    nomogram: Any,
    out_path: str | os.PathLike[str],
    labels: Mapping[str, str] | None = None,
    ticks: Mapping[str, Sequence[float]] | None = None,
    title: str = "Nomogram",
) -> Path:
    """Draw a points nomogram: a 0-100 points ruler, one axis per variable, total points and the
    matching probability of the event.

    ``nomogram`` is a :class:`training.evaluation.Nomogram` (or its ``to_dict()``); ``labels``
    renames variables on the figure; ``ticks`` gives the values to mark per variable (default: 5
    evenly spaced values across its range; give ``[0, 1]`` for a binary variable).
    """
    from training.evaluation import Nomogram

    if isinstance(nomogram, Mapping):
        nomogram = Nomogram.from_logistic(
            nomogram["coefs"], nomogram["intercept"], nomogram["ranges"]
        )
    labels = dict(labels or {})
    ticks = dict(ticks or {})
    names = list(nomogram.coefs)
    rows = ["Points", *names, "Total points", "Probability"]
    fig = _figure(8.0, 0.65 * len(rows) + 1.0)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_xlim(-32, 104)
    ax.set_ylim(-len(rows) + 0.4, 0.8)

    def ruler(row: int, positions: Sequence[float], texts: Sequence[str], name: str) -> None:
        y = -row
        ax.text(-30, y, name, ha="left", va="center", fontsize=8)
        ax.plot([min(positions), max(positions)], [y, y], color="black", lw=1)
        pairs = sorted(zip(positions, texts, strict=True))
        if len(pairs) > 1 and pairs[-1][0] - pairs[0][0] < _MIN_LABEL_GAP:
            # a variable worth (almost) no points: name both ends beside the short axis, or only
            # the first of the overprinting labels would show and the axis would read as one value
            (x0, t0), (x1, t1) = pairs[0], pairs[-1]
            ax.plot([x0, x0], [y, y + 0.12], color="black", lw=1)
            ax.plot([x1, x1], [y, y + 0.12], color="black", lw=1)
            ax.text(x0 - 0.8, y, t0, ha="right", va="center", fontsize=6.5)
            ax.text(x1 + 0.8, y, t1, ha="left", va="center", fontsize=6.5)
            return
        labelled: list[float] = []
        for x, text in pairs:
            ax.plot([x, x], [y, y + 0.12], color="black", lw=1)
            # skip labels that would overprint a neighbour
            if all(abs(x - other) >= _MIN_LABEL_GAP for other in labelled):
                ax.text(x, y + 0.18, text, ha="center", va="bottom", fontsize=6.5)
                labelled.append(x)

    ruler(0, list(np.linspace(0, 100, 11)), [f"{v:.0f}" for v in np.linspace(0, 100, 11)], "Points")
    for i, name in enumerate(names, start=1):
        values = ticks.get(name) or list(np.linspace(*nomogram.ranges[name], 5))
        positions = [nomogram.variable_points(name, float(v)) for v in values]
        ruler(i, positions, [_fmt(float(v)) for v in values], labels.get(name, name))
    max_total = nomogram.max_total_points()
    scale = 100.0 / max_total
    total_ticks = np.linspace(0, max_total, 9)
    ruler(
        len(names) + 1, list(total_ticks * scale), [f"{v:.0f}" for v in total_ticks], "Total points"
    )
    probs = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
    placed = [(p, nomogram.total_points_for_probability(p)) for p in probs]
    placed = [(p, tp * scale) for p, tp in placed if 0.0 <= tp <= max_total]
    if placed:
        ruler(len(names) + 2, [x for _, x in placed], [f"{p:g}" for p, _ in placed], "Probability")
    ax.set_title(title, fontsize=10)
    return _save(fig, out_path)


def _wrap(text: str, width: int = 34) -> str:
    """Break a long feature name at its separators so a small-multiple title stays readable."""
    parts = [p for p in re.split(r"(?<=__)|(?<=_)", text) if p]
    lines, line = [], ""
    for part in parts:
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join([*lines, line])


def plot_feature_shift(
    features: Sequence[Mapping[str, Any]],
    out_path: str | os.PathLike[str],
    top: int = 6,
    title: str = "Per-center distributions of the most shifted features",
) -> Path:
    """Small multiples: one box plot per center for each of the ``top`` first ``features``
    (dicts of :meth:`training.diagnostics.FeatureShift.to_json`, sorted by shift), test centers in
    orange, the standardised mean difference of the most shifted test center in the title."""
    shown = list(features)[:top]
    if not shown:
        raise ValueError("features is empty.")
    ncols = min(3, len(shown))
    nrows = -(-len(shown) // ncols)
    fig = _figure(3.6 * ncols, 3.0 * nrows + 0.5)
    for i, feat in enumerate(shown, start=1):
        ax = fig.add_subplot(nrows, ncols, i)
        centers = feat["centers"]
        boxes = [{**c["box"], "mean": c["mean"], "label": f"{c['center']}\n(n={c['n']})"}
                 for c in centers]
        drawn = ax.bxp(boxes, showmeans=True, showfliers=False, patch_artist=True,
                       medianprops={"color": "black"},
                       meanprops={"marker": "D", "markersize": 4, "markerfacecolor": "black"})
        for patch, c in zip(drawn["boxes"], centers, strict=True):
            patch.set_facecolor("tab:orange" if c["role"] == "test" else "tab:blue")
            patch.set_alpha(0.6)
        shift = feat.get("shift")
        head = _wrap(str(feat["feature"]))
        ax.set_title(head if shift is None else f"{head}\n|SMD| {shift:.2f}", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{title} (blue: development centers, orange: test)", fontsize=9)
    return _save(fig, out_path)
