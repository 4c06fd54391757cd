"""What the plots show: honest axes, every panel readable on its own (built from synthetic rows)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lowbit.experiments import lowprec_training, weight_formats

plt = pytest.importorskip("matplotlib.pyplot", reason="plots need matplotlib")


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> "list[Any]":
    """The figures the plot functions close (kept open for the test to look at)."""
    kept: "list[Any]" = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        real_close(fig)


def ctx(tmp_path: Path) -> Any:
    return SimpleNamespace(out_dir=tmp_path, info={}, notes=[])


def test_training_plot_starts_at_zero_and_writes_the_gaps(tmp_path: Path, figures: "list[Any]") -> None:
    rows = [{"config": "fp32", "top1": 0.989, "drop_vs_fp32_points": 0.0, "test_images": 10000, "model": "lenet5",
             "dataset": "mnist"},
            {"config": "posit8_es2", "top1": 0.987, "drop_vs_fp32_points": 0.2, "test_images": 10000,
             "model": "lenet5", "dataset": "mnist"}]
    (path,) = lowprec_training.plot(rows, {}, ctx(tmp_path))
    assert path.read_bytes()[:4] == b"\x89PNG"
    (ax,) = figures[0].axes
    assert ax.get_xlim() == (0.0, 100.0)  # a 93 % start made a 0.2-point gap look like a large one
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["98.90 %", "98.70 %  (-0.20 pt vs FP32)"]


def headline_rows() -> "list[dict[str, Any]]":
    rows = [{"dataset": "digits", "family": "fp32", "bits": 32, "selected": True, "accuracy": 0.97,
             "model": "digits-cnn", "weight_bytes": 4000}]
    for fam in weight_formats.FAMILIES:
        for bits, acc in ((4, 0.50), (6, 0.955), (8, 0.968)):
            rows.append({"dataset": "digits", "family": fam, "bits": bits, "selected": True, "accuracy": acc,
                         "model": "digits-cnn", "weight_bytes": 4000 * bits // 32})
    return rows


def test_weight_formats_zoom_panel_has_its_own_legend_and_marks_points_below_it(tmp_path: Path,
                                                                                 figures: "list[Any]") -> None:
    weight_formats.plot(headline_rows(), {}, ctx(tmp_path))
    full, zoom = [ax for ax in figures[0].axes if ax.get_label() != "secondary_xaxis"][:2]
    legend = zoom.get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert all(weight_formats.LABELS[f] in labels for f in weight_formats.FAMILIES)
    assert any(label.startswith("hollow: below 94.00 %") for label in labels)
    # each family keeps its marker and colour across the two panels
    for fam in weight_formats.FAMILIES:
        a = next(line for line in full.get_lines() if line.get_label() == weight_formats.LABELS[fam])
        b = next(line for line in zoom.get_lines() if line.get_label() == weight_formats.LABELS[fam])
        assert (a.get_marker(), a.get_color()) == (b.get_marker(), b.get_color())
    # the 4-bit points (50 %) sit on the zoom panel's lower edge, drawn hollow, not off the panel
    low, high = zoom.get_ylim()
    hollow = [line for line in zoom.get_lines() if line.get_markerfacecolor() == "white" and line.get_xdata().size]
    assert hollow and all(list(line.get_ydata()) == [low] for line in hollow)
