"""A run's transfer facts as plain data, for the report's transfer sections and ``metrics.json``.

Reads what the protocol's result holds about the ranking of the imaging models (random k-fold
and leave-one-center-out CV AUCs, which one ranked) and the first-order baseline, beside the
diagnostics of :mod:`training.diagnostics`. A run without a baseline (``baseline.enabled:
false`` or no first-order columns) renders the rest.
"""

from __future__ import annotations

from typing import Any

from training.models import selected_features
from training.protocol import CLINICAL, FUSION, ProtocolResult
from training.ranking import CrossValidated

__all__ = ["OPTIMISM_WARNING", "baseline_label", "ranked_by", "ranking_record", "transfer_check"]

#: CV AUC above test AUC by more than this is called out in the report
OPTIMISM_WARNING = 0.10


def baseline_label(result: ProtocolResult) -> str | None:
    """The model label of the first-order baseline, if the run fitted one."""
    return result.baseline.label if result.baseline is not None else None


def _auc(result: ProtocolResult, model: str, set_name: str) -> float | None:
    return (result.metrics.get(model) or {}).get(set_name, {}).get("auc")


def _delong_p(result: ProtocolResult, a: str | None, b: str) -> str:
    """``", DeLong p 0.123"`` for the test-set comparison of two models, if the run made it."""
    for row in result.delong:
        if row.get("set") == "test" and {row.get("model_a"), row.get("model_b")} == {a, b}:
            p = row.get("p")
            return "" if p is None else f", DeLong p {p:.3f}"
    return ""


def _baseline_ranking_auc(result: ProtocolResult) -> float | None:
    """The baseline's AUC by the criterion that ranked the imaging models."""
    base = result.baseline
    if base is None:
        return None
    use_loco = result.ranking.strategy == "loco" and base.loco_auc is not None
    return base.loco_auc if use_loco else base.cv_auc


def _row(result: ProtocolResult, r: CrossValidated, label: str, n_selected: int,
         best: bool) -> dict[str, Any]:
    return {
        "label": label,
        "random_cv_auc": r.cv_auc,
        "loco_auc": r.loco_auc,
        "loco_centers": dict(r.loco.center_aucs) if r.loco is not None else {},
        "ranked_by": getattr(r, "ranked_by", None),  # the baseline is not ranked
        "n_selected": n_selected,
        "test_auc": _auc(result, label, "test"),
        "best": best,
    }


def ranked_by(result: ProtocolResult) -> str:
    """``"; ranked by <criterion>: <AUC>"``, how the best imaging model was chosen."""
    return f"; ranked by {result.ranking.criterion}: {result.best.ranking_auc:.3f}"


def ranking_record(result: ProtocolResult) -> dict[str, Any]:
    """How the imaging models were ranked and each one's random-CV, LOCO and test AUC, best
    first; the first-order baseline (all its features, no selection) last, when fitted."""
    out = result.ranking.to_json()
    models = []
    for r in sorted(result.imaging, key=lambda r: -r.ranking_auc):
        row = _row(result, r, r.spec.label, len(selected_features(r.final)), r is result.best)
        models.append({**row, "ranking_auc": r.ranking_auc})
    base = result.baseline
    if base is not None:
        row = _row(result, base, base.label, len(base.columns), False)
        models.append({**row, "ranking_auc": _baseline_ranking_auc(result), "baseline": True})
    return {**out, "models": models}


def transfer_check(result: ProtocolResult) -> dict[str, Any]:
    """Validation and test AUCs of fusion, best imaging, clinical and the baseline, and the
    warnings a user should see at once (baseline wins on the test set; CV far above test)."""
    best = result.best.spec.label
    base = baseline_label(result)
    roles = {FUSION: "fusion", best: "best imaging model", CLINICAL: "clinical"}
    if base:
        roles[base] = "first-order baseline"
    ranking = {best: result.best.ranking_auc, base: _baseline_ranking_auc(result)}
    rows = [{"model": m, "role": role, "ranking_auc": ranking.get(m),
             "validation": (result.metrics.get(m) or {}).get("validation"),
             "test": (result.metrics.get(m) or {}).get("test")}
            for m, role in roles.items() if m in result.metrics]
    warnings = []
    b = _auc(result, base, "test") if base else None
    losers = [(m, a) for m in (FUSION, best) if (a := _auc(result, m, "test")) is not None
              and b is not None and a < b]
    if losers:
        beaten = " and ".join(f"{m} ({a:.3f}{_delong_p(result, base, m)})" for m, a in losers)
        warnings.append(
            f"On the test set the first-order baseline (AUC {b:.3f}) is above {beaten}: the "
            "selection chain gains nothing over first-order statistics on the test center. See "
            "the per-center feature shift and the selection stability below.")
    cv, test = ranking[best], _auc(result, best, "test")
    if cv is not None and test is not None and cv - test > OPTIMISM_WARNING:
        warnings.append(
            f"The best imaging model's ranking AUC ({cv:.3f}, cross-validated on the training "
            f"rows) is {cv - test:.3f} above its test AUC ({test:.3f}): the cross-validation "
            "overstates how it does on a new center.")
    return {"rows": rows, "baseline": base, "warnings": warnings,
            "baseline_note": result.baseline_note}
