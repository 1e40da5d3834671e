"""Agreement plots: valid image files, written atomically, headless, robust to degenerate data."""

import numpy as np
import pytest
from PIL import Image

from sscjax import plots

PLOTS = [plots.bland_altman_plot, plots.correlation_plot]


def _data(seed=0, n=60):
    rng = np.random.default_rng(seed)
    true = np.round(rng.uniform(0, 20, n)) * 5
    return np.clip(true + rng.normal(0, 6, n), 0, 100), true


def _pixels(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("L"), dtype=np.float64)


@pytest.mark.parametrize("plot", PLOTS)
def test_plot_writes_a_drawn_png_and_no_temp_files(plot, tmp_path):
    out = plot(*_data(), tmp_path / "sub" / "fig.png", "TOT")
    assert out == tmp_path / "sub" / "fig.png"
    with Image.open(out) as im:
        im.verify()
    pixels = _pixels(out)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 400
    assert 0.02 < (pixels < 250).mean() < 0.5  # something drawn (axes, points, text) on a white page
    assert [p.name for p in out.parent.iterdir()] == ["fig.png"]


@pytest.mark.parametrize("plot", PLOTS)
def test_plot_depends_on_the_data(plot, tmp_path):
    a = _pixels(plot(*_data(0), tmp_path / "a.png", "GG"))
    b = _pixels(plot(*_data(1), tmp_path / "b.png", "GG"))
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.5


@pytest.mark.parametrize("plot", PLOTS)
def test_plot_degenerate_data_and_other_formats(plot, tmp_path):
    out = plot(np.full(5, 10.0), np.full(5, 10.0), tmp_path / "flat.pdf", "RET", unit="mm")
    assert out.read_bytes()[:5] == b"%PDF-"
