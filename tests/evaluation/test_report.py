"""evaluation.report: results.json is strict JSON, merged section by section; the colour map rises in lightness."""

import json
import math

import numpy as np

from evaluation import report


def test_results_json_holds_null_for_non_finite_figures_and_keeps_other_sections(tmp_path):
    def refuse(name):
        raise AssertionError(f"results.json holds the non-standard literal {name}")

    report.update_results(tmp_path, "table3", {"r1": np.float32(0.25), "ratio": math.inf, "miou": np.float64("nan")})
    merged = report.update_results(tmp_path, "table6", {"pred_dis": -np.inf, "rows": (1, 2)})
    text = (tmp_path / report.RESULTS_FILE).read_text()
    assert (
        json.loads(text, parse_constant=refuse)
        == merged
        == {"table3": {"miou": None, "r1": 0.25, "ratio": None}, "table6": {"pred_dis": None, "rows": [1, 2]}}
    )
    assert [p.name for p in tmp_path.iterdir()] == [report.RESULTS_FILE]


def _lightness(rgb_uint8: np.ndarray) -> np.ndarray:
    """CIELAB L* of sRGB colours (D65 white)."""
    c = rgb_uint8.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    f = np.where(y > (6 / 29) ** 3, np.cbrt(y), y / (3 * (6 / 29) ** 2) + 4 / 29)
    return 116 * f - 16


def test_colour_map_lightness_rises_with_the_value_from_dark_to_light():
    # 64 levels: finer steps than that differ by less than one uint8 step of some channel
    lightness = _lightness(report.colorize(np.linspace(0, 1, 64)[None, :])[0])
    assert np.all(np.diff(lightness) > 0.5), np.diff(lightness).min()
    assert lightness[0] < 20 and lightness[-1] > 85  # the whole scale spans most of the lightness range
    # out-of-range values clip to the ends, NaN takes the low end
    ends = report.colorize(np.array([[-3.0, 0.0, 1.0, 7.0, np.nan]]))[0]
    assert (ends[0] == ends[1]).all() and (ends[2] == ends[3]).all() and (ends[4] == ends[1]).all()
