"""evaluation.report: results.json is strict JSON, merged section by section."""

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
