"""The report's transfer sections: does the chain hold on a new center? (issue 12, not in the
paper). Plain data in, HTML out, every text escaped, as :mod:`training.report`:

* a transfer check: validation and test AUCs of the headline models beside the first-order
  baseline, with a warning when the baseline wins on the test set;
* the ranking of the imaging models, random k-fold CV and leave-one-center-out (LOCO) AUCs side
  by side, saying which one ranked;
* the per-center shift of every selected feature (table + the small-multiples figure);
* the selection's stability over bootstrap refits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from training.report import _auc_ci, _e, _num

__all__ = ["SHIFT_FIGURE", "transfer_sections"]

#: the figure key :func:`transfer_sections` places beside the shift table
SHIFT_FIGURE = "feature_shift"
#: |SMD| from which a shift is flagged (a "medium" effect in Cohen's terms)
LARGE_SMD = 0.5


def _table(caption: str, head: Sequence[str], rows: Sequence[str], empty: str) -> str:
    cells = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "\n".join(rows) or f'<tr><td colspan="{len(head)}">{_e(empty)}</td></tr>'
    return (f"<table><caption>{_e(caption)}</caption>\n<thead><tr>{cells}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody></table>")


def _auc(m: Mapping[str, Any] | None) -> str:
    return _auc_ci(m) if m else "&mdash;"


def _check_section(check: Mapping[str, Any]) -> list[str]:
    rows = check.get("rows") or []
    html = [_table(
        "Transfer check: the headline models and the first-order baseline",
        ("Model", "Role", "Ranking AUC (training-row CV)", "Validation AUC (95% CI)", "Test AUC (95% CI)"),
        [f'<tr><td class="name">{_e(r.get("model", ""))}</td><td>{_e(r.get("role", ""))}</td>'
         f"<td>{_num(r.get('ranking_auc'))}</td><td>{_auc(r.get('validation'))}</td>"
         f"<td>{_auc(r.get('test'))}</td></tr>" for r in rows],
        "No models.",
    )]
    for warning in check.get("warnings") or []:
        html.append(f'<p class="warn">{_e(warning)}</p>')
    if not check.get("baseline"):
        why = check.get("baseline_note") or "see baseline in the study file"
        html.append(f'<p class="note">No first-order baseline in this run: {_e(why)}.</p>')
    return html


def _ranking_section(ranking: Mapping[str, Any]) -> list[str]:
    models = ranking.get("models") or []
    strategy = ranking.get("strategy")
    html = []
    if strategy:
        criterion = ranking.get("criterion") or strategy
        html.append(f"<p>Imaging models ranked by <b>{_e(criterion)}</b> "
                    f"({_e(ranking.get('reason') or strategy)}).</p>")
    else:
        html.append("<p>Imaging models ranked by the mean random k-fold CV AUC on the training "
                    "rows (the paper's criterion).</p>")

    def centers(r: Mapping[str, Any]) -> str:
        per = r.get("loco_centers") or {}
        return ", ".join(f"{_e(c)} {_num(a)}" for c, a in per.items()) or "&mdash;"

    html.append(_table(
        "Imaging models: random k-fold CV and leave-one-center-out (LOCO) AUCs on the training rows",
        ("Model", "Random CV AUC", "LOCO AUC (mean of centers)", "LOCO AUC per held-out center",
         "Features used", "Test AUC", "Chosen"),
        [f'<tr><td class="name">{_e(r.get("label", ""))}</td>'
         f"<td>{_num(r.get('random_cv_auc'))}</td><td>{_num(r.get('loco_auc'))}</td>"
         f"<td>{centers(r)}</td><td>{_e(r.get('n_selected', ''))}</td>"
         f"<td>{_num(r.get('test_auc'))}</td><td>{_chosen(r)}</td></tr>"
         for r in models],
        "No imaging models.",
    ))
    return html


def _chosen(row: Mapping[str, Any]) -> str:
    if row.get("best"):
        return "best"
    return "baseline (not ranked)" if row.get("baseline") else ""


def _smd_cell(value: Any) -> str:
    if value is None or not math.isfinite(float(value)):
        return "<td>&mdash;</td>"
    flag = ' class="shift"' if abs(float(value)) >= LARGE_SMD else ""
    return f"<td{flag}>{float(value):+.2f}</td>"


def _shift_section(shift: Mapping[str, Any], figure: str | None) -> list[str]:
    features = shift.get("features") or []
    centers = list(shift.get("centers") or [])
    tests = set(shift.get("test_centers") or [])
    label = {c: f"{c} (test)" if c in tests else c for c in centers}
    head = ["Feature", "Input of", "Training rows mean (SD)",
            *(f"{label[c]} mean (SD)" for c in centers),
            *(f"SMD {label[c]}" for c in centers), *(f"KS {label[c]}" for c in centers)]
    rows = []
    for f in features:
        per = {c["center"]: c for c in f.get("centers") or []}
        cells = [f"<td>{_num(f.get('train_mean'))} ({_num(f.get('train_sd'))})</td>"]
        cells += [f"<td>{_num(per[c]['mean'])} ({_num(per[c]['sd'])})</td>" if c in per
                  else "<td>&mdash;</td>" for c in centers]
        cells += [_smd_cell(per.get(c, {}).get("smd")) for c in centers]
        cells += [f"<td>{_num(per.get(c, {}).get('ks'), 2)}</td>" for c in centers]
        rows.append(f'<tr><td class="name">{_e(f.get("feature", ""))}</td>'
                    f"<td>{_e(f.get('source', ''))}</td>{''.join(cells)}</tr>")
    html = [
        '<p class="note">Each center against the training rows of the other centers (a test '
        "center: every training row). SMD: standardised mean difference (pooled SD), |SMD| &ge; "
        f"{LARGE_SMD} highlighted; KS: two-sample Kolmogorov-Smirnov statistic (0 = the same "
        "distribution, 1 = no overlap). Sorted by the largest |SMD| on a test center.</p>",
    ]
    if figure:
        html.append(figure)
    html.append(_table("Per-center distribution of the selected features and the fusion inputs",
                       head, rows, "No features."))
    return html


def _percent(share: Any) -> str:
    return "&mdash;" if share is None else f"{100 * float(share):.0f}%"


def _stability_section(stability: Mapping[str, Any] | None, model: str) -> list[str]:
    if not stability:
        return ['<p class="note">Selection stability was not computed '
                "(<code>diagnostics.bootstrap: 0</code> in the study file).</p>"]
    summary = (
        f"The selection chain of {_e(model)} (z-score, t-test, LASSO, backward AIC) refitted on "
        f"{_num(stability.get('n_resamples'), 0)} bootstrap resamples of the "
        f"{_num(stability.get('n_rows'), 0)} training rows (stratified by label, seed "
        f"{_num(stability.get('seed'), 0)}; validation and test rows never enter): mean Jaccard "
        f"similarity to the final {_num(stability.get('n_final'), 0)} features "
        f"<b>{_num(stability.get('mean_jaccard'), 2)}</b>; "
        f"{_num(stability.get('mean_selected'), 1)} features selected on average; a final "
        f"feature is chosen in {_percent(stability.get('final_mean_frequency'))} of the resamples "
        f"on average ({_num(stability.get('seconds'), 1)} s)."
    )
    rows = [f'<tr><td class="name">{_e(r.get("feature", ""))}</td>'
            f"<td>{_percent(r.get('frequency'))}</td>"
            f"<td>{'yes' if r.get('final') else 'no'}</td></tr>"
            for r in stability.get("features") or []]
    share = _percent(stability.get("min_frequency"))
    return [f"<p>{summary}</p>", _table(
        f"Selection frequency of the final features and of any feature chosen in >= {share} "
        "of the resamples", ("Feature", "Chosen in", "In the final model"), rows, "No features.")]


def transfer_sections(
    metrics: Mapping[str, Any], figures: Mapping[str, Any], figure_html: Callable[[str, Any], str]
) -> list[str]:
    """The HTML of the transfer sections for what ``metrics`` holds (``transfer_check``,
    ``ranking``, ``diagnostics``; each optional); ``figure_html(key, path)`` embeds a figure."""
    check, ranking, diag = (metrics.get(k) for k in ("transfer_check", "ranking", "diagnostics"))
    if not (check or ranking or diag):
        return []
    html = ["<h2>Transfer to a new center</h2>"]
    if check:
        html += _check_section(check)
    if ranking:
        html += ["<h3>Ranking of the imaging models</h3>", *_ranking_section(ranking)]
    if diag:
        model = str(diag.get("model", "the best imaging model"))
        figure = figure_html(SHIFT_FIGURE, figures[SHIFT_FIGURE]) if SHIFT_FIGURE in figures else None
        html += [f"<h3>Per-center shift of the features of {_e(model)} and of the fusion inputs</h3>",
                 *_shift_section(diag.get("shift") or {}, figure),
                 "<h3>Selection stability</h3>", *_stability_section(diag.get("stability"), model)]
    return html
