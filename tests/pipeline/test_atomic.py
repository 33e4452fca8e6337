"""pipeline.atomic: the one atomic writer and the one strict-JSON encoder."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline import atomic, shard_dir


def strict_loads(text: str):
    """json.loads that refuses the non-standard NaN/Infinity literals."""

    def refuse(name):
        raise AssertionError(f"non-standard JSON literal {name}")

    return json.loads(text, parse_constant=refuse)


def test_strict_json_writes_non_finite_numbers_as_null_and_numpy_as_plain_types(tmp_path):
    path = tmp_path / "out.json"
    atomic.write_json(
        path,
        {
            "inf": math.inf,
            "ninf": np.float32(-np.inf),
            "nan": np.float64("nan"),
            "array": np.array([0.5, np.inf]),
            "int": np.int64(3),
            "path": Path("/x"),
            7: (1, 2),
        },
    )
    assert strict_loads(path.read_text()) == {
        "inf": None,
        "ninf": None,
        "nan": None,
        "array": [0.5, None],
        "int": 3,
        "path": "/x",
        "7": [1, 2],
    }
    with pytest.raises(ValueError):  # what was not sanitized is refused, never written as NaN
        atomic.dumps_strict({"x": math.nan})


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "dataset.json"
    atomic.write_json(path, {"v": 1})
    with pytest.raises(TypeError), atomic.atomic_path(path) as tmp:
        tmp.write_text("{half")
        raise TypeError("the writer failed mid-way")
    with pytest.raises(TypeError):  # not JSON-serializable: refused before anything is written
        atomic.write_json(path, {"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json"]
    # the temporary name is the one the shard directory's sweep recognizes as this process's
    assert shard_dir.temp_writer(atomic.temp_path(path)) == os.getpid()


def test_replace_dir_swaps_a_whole_directory(tmp_path):
    final, tmp = tmp_path / "step_3", tmp_path / "step_3.tmp"
    final.mkdir()
    (final / "old.json").write_text("{}")
    (tmp / "model").mkdir(parents=True)
    (tmp / "model" / "config.json").write_text("{}")
    (tmp / "trainer_state.json").write_text("{}")
    atomic.replace_dir(tmp, final)
    assert not tmp.exists()
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == [
        "model",
        "model/config.json",
        "trainer_state.json",
    ]
