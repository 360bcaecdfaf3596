"""Figures and the self-contained HTML report."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import numpy as np
import pytest

from training.evaluation import (
    Nomogram,
    binary_metrics,
    calibration,
    clinical_impact,
    decision_curve,
    delong_table,
    roc_curve_data,
)
from training.figures import (
    plot_calibration,
    plot_clinical_impact,
    plot_decision_curve,
    plot_nomogram,
    plot_roc,
)
from training.report import render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script> & Co"


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(0)
    sets = {}
    for name, n in (("train", 120), ("validation", 50), ("test", 60)):
        y = rng.integers(0, 2, n)
        fusion = 1 / (1 + np.exp(-(2.0 * (y - 0.5) + rng.normal(0, 1, n))))
        clinical = 1 / (1 + np.exp(-(0.8 * (y - 0.5) + rng.normal(0, 1, n))))
        sets[name] = (y, {"Fusion": fusion, EVIL: clinical})
    return sets


@pytest.fixture(scope="module")
def rendered(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    models = {
        name: {s: binary_metrics(y, probs[name], 0.5) for s, (y, probs) in study.items()}
        for name in ("Fusion", EVIL)
    }
    y_test, test = study["test"]
    metrics = {
        "models": models,
        "delong": delong_table(y_test, test, "test"),
        "calibration": {name: {"test": calibration(y_test, p)} for name, p in test.items()},
        "decision_curve": {name: {"test": decision_curve(y_test, p)} for name, p in test.items()},
        "meta": {"title": "ATRX <Fusion> report", "n_train": 120},
    }
    nomo = Nomogram.from_logistic(
        {"imaging_score": 1.1, "age": -0.03, "sex": 0.4, "who_grade": -0.9, "vasari_score": 0.15},
        -0.5,
        {
            "imaging_score": (-4, 4),
            "age": (18, 80),
            "sex": (0, 1),
            "who_grade": (3, 4),
            "vasari_score": (0, 20),
        },
    )
    figures = {
        "nomogram": plot_nomogram(
            nomo, out / "nomogram.png", ticks={"sex": [0, 1], "who_grade": [3, 4]}
        ),
        "roc_test": plot_roc(
            {n: roc_curve_data(y_test, p) for n, p in test.items()}, out / "roc.png"
        ),
        "calibration": plot_calibration(
            {n: c["test"] for n, c in metrics["calibration"].items()}, out / "cal.png"
        ),
        "decision_curve": plot_decision_curve(
            {n: c["test"] for n, c in metrics["decision_curve"].items()}, out / "dca.png"
        ),
        "clinical_impact": plot_clinical_impact(
            clinical_impact(y_test, test["Fusion"]), out / "cic.png"
        ),
        "extra <figure>": plot_roc(
            {"Fusion": roc_curve_data(y_test, test["Fusion"])}, out / "extra.png"
        ),
    }
    path = render_report(metrics, figures, out / "sub" / "report.html")
    return path, figures


def test_figures_are_png_files(rendered):
    _, figures = rendered
    for path in figures.values():
        assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_report_is_self_contained_with_embedded_images(rendered):
    path, figures = rendered
    html = path.read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(figures)
    assert all(base64.b64decode(img)[:8] == PNG_MAGIC for img in images)
    assert not re.search(r'(src|href)="(?!data:)', html)  # no external assets
    assert "<link" not in html and "<script" not in html.lower().replace("&lt;script", "")


def test_report_has_the_paper_tables(rendered):
    html = rendered[0].read_text(encoding="utf-8")
    for text in (
        "Table 2. Performance of the models in the training and validation sets",
        "Table 3. Performance of the models in the test set",
        "Sensitivity",
        "Specificity",
        "Accuracy",
        "AUC (95% CI)",
        "Training",
        "Validation",
        "DeLong test",
        "Brier score",
        "Decision-curve analysis",
    ):
        assert text in html, text
    order = [
        html.index(k)
        for k in (
            "Table 2.",
            "Table 3.",
            "DeLong test",
            "Figure 3c.",
            "Figure 4.",
            "Figure 5.",
            "Figure 6.",
            "extra &lt;figure&gt;",
        )
    ]
    assert order == sorted(order)


def test_report_escapes_text(rendered):
    html = rendered[0].read_text(encoding="utf-8")
    assert EVIL not in html and "<Fusion>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; Co" in html
    assert "ATRX &lt;Fusion&gt; report" in html


def test_report_with_missing_parts(tmp_path):
    path = render_report({"models": {"A": {"test": {"auc": 0.8}}}}, {}, tmp_path / "r.html")
    html = path.read_text(encoding="utf-8")
    assert "Table 3." in html and "0.800" in html and "&mdash;" in html
    with pytest.raises(ValueError, match="unsupported image type"):
        (tmp_path / "f.gif").write_bytes(b"GIF89a")
        render_report({}, {"roc_test": tmp_path / "f.gif"}, tmp_path / "r2.html")


def test_importing_figures_does_not_touch_matplotlib():
    code = "import sys, training.figures, training.report; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_nomogram_names_both_ends_of_a_variable_worth_almost_no_points(tmp_path, monkeypatch):
    import training.figures as figures

    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    nomo = Nomogram.from_logistic(
        {"imaging_score": 1.0, "age": -0.0004}, 0.0, {"imaging_score": (-20, 20), "age": (18, 81)}
    )
    plot_nomogram(nomo, tmp_path / "n.png", labels={"age": "Age"})
    texts = [t.get_text() for t in drawn[0].axes[0].texts]
    # age spans far less than one label's width: its two ends are both named, nothing in between
    assert {"18", "81"} <= set(texts)
    assert not {"33.8", "49.5", "65.2"} & set(texts)


# --- the transfer sections (issue 12) -------------------------------------------------------------
@pytest.fixture(scope="module")
def diagnostics():
    """Diagnostics of three centers, one feature shifted on the test center C, one named EVIL."""
    import pandas as pd

    from training.dataset import Split
    from training.diagnostics import Diagnostics, StabilityResult, feature_shift

    rng = np.random.default_rng(1)
    centers = np.repeat(["A", "B", "C"], [50, 60, 40])
    frame = pd.DataFrame({"center": centers, "steady": rng.normal(0, 1, centers.size),
                          EVIL: rng.normal(0, 1, centers.size) + 2.0 * (centers == "C")})
    split = Split(train=np.flatnonzero(centers != "C"), validation=np.array([], dtype=np.int64),
                  test=np.flatnonzero(centers == "C"), data_hash="", train_hash="")
    shift = feature_shift(frame, split, ["steady", EVIL])
    stability = StabilityResult(4, 0, 110, [EVIL], [[EVIL], [EVIL, "steady"], [EVIL], ["noise"]])
    return Diagnostics("Tumor radiomics", shift, stability)


def _transfer_metrics(study, diagnostics, *, baseline_auc: float = 0.9) -> dict:
    y_test, test = study["test"]
    models = {name: {"test": binary_metrics(y_test, p, 0.5)} for name, p in test.items()}
    fusion = models["Fusion"]["test"]
    base = {**fusion, "auc": baseline_auc}
    return {
        "models": models,
        "transfer_check": {
            "rows": [{"model": "Fusion", "role": "fusion", "test": fusion},
                     {"model": "First-order baseline", "role": "first-order baseline",
                      "ranking_auc": 0.7, "test": base}],
            "baseline": "First-order baseline",
            "warnings": ["On the test set the first-order baseline is above Fusion"],
        },
        "ranking": {"strategy": "loco", "criterion": "mean per-center AUC of LOCO CV",
                    "reason": "loco: 2 development centers", "models": [
                        {"label": "Tumor radiomics", "random_cv_auc": 0.87, "loco_auc": 0.61,
                         "loco_centers": {"A": 0.6, "B": 0.62}, "n_selected": 1, "best": True},
                        {"label": EVIL, "random_cv_auc": 0.9}]},
        "diagnostics": diagnostics.to_json(),
    }


def test_report_renders_the_transfer_sections(study, diagnostics, tmp_path):
    from PIL import Image

    from training.figures import plot_feature_shift

    figure = plot_feature_shift([f.to_json() for f in diagnostics.shift.features],
                                tmp_path / "shift.png")
    with Image.open(figure) as img:
        img.verify()
    metrics = _transfer_metrics(study, diagnostics)
    html = render_report(metrics, {"feature_shift": figure, "roc_test": figure},
                         tmp_path / "r.html").read_text(encoding="utf-8")
    for text in ("Transfer to a new center", "Transfer check", "First-order baseline",
                 "On the test set the first-order baseline is above Fusion",
                 "Ranking of the imaging models", "mean per-center AUC of LOCO CV",
                 "LOCO AUC per held-out center", "A 0.600, B 0.620", "Per-center shift",
                 "SMD C (test)", "Selection stability", "mean Jaccard", "Figure S1."):
        assert text in html, text
    assert EVIL not in html and html.count("&lt;script&gt;") >= 3  # the feature name, escaped
    # the shifted feature leads the table; the shift figure sits in its section, once
    table = html[html.index("Per-center distribution of the selected"):]
    assert table.index("&lt;script&gt;") < table.index("steady")
    assert html.index("Figure S1.") < html.index("Selection stability") < html.index("Figure 3c.")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 2 and all(base64.b64decode(i)[:8] == PNG_MAGIC for i in images)
    freq = table[table.index("Selection frequency"):]
    assert "75%" in freq and "25%" in freq  # EVIL 3/4 (final); steady and noise 1/4 (>= 20%)


def test_report_transfer_sections_without_the_optional_parts(study, diagnostics, tmp_path):
    metrics = _transfer_metrics(study, diagnostics)
    metrics["diagnostics"]["stability"] = None
    metrics["ranking"] = {"models": [{"label": "Tumor radiomics", "random_cv_auc": 0.87}]}
    metrics["transfer_check"] = {"rows": metrics["transfer_check"]["rows"][:1]}
    html = render_report(metrics, {}, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "diagnostics.bootstrap: 0" in html and "No first-order baseline" in html
    assert "random k-fold CV AUC on the training rows (the paper" in html
    assert "Figure S1." not in html and "class=\"warn\"" not in html
    plain = render_report({"models": {"A": {"test": {"auc": 0.8}}}}, {}, tmp_path / "p.html")
    assert "Transfer to a new center" not in plain.read_text(encoding="utf-8")
