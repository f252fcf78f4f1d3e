"""One JSON converter (clipcal._json.jsonable) for manifests, benchmark descriptions and method records: numpy
values become Python values everywhere, and each caller only chooses what happens to a value JSON cannot hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipcal._json import jsonable


def test_numpy_paths_and_containers_become_plain_json():
    v = {"a": np.int64(3), "b": (np.float32(0.5), Path("/x/y")), 4: np.arange(3), "c": np.bool_(True)}
    out = jsonable(v)
    assert out == {"a": 3, "b": [0.5, "/x/y"], "4": [0, 1, 2], "c": True}
    assert type(out["a"]) is int and type(out["b"][0]) is float and type(out["c"]) is bool
    obj = object()
    assert jsonable([obj])[0] is obj  # no fallback: kept as it is
    assert jsonable([obj], fallback=lambda _: "x") == ["x"]


def test_benchmark_description_keeps_numpy_numbers_as_numbers():
    """Regression (one converter): a numpy integer parameter was written to the manifest as the string '5', so the
    benchmark reopened from the store with a text option instead of a number."""
    from clipcal.data.base import Benchmark

    table = pd.DataFrame({"sample_id": ["s0", "s1"], "path": ["a.png", "b.png"], "split": ["train", "test"],
                          "y": [0, 1], "a": [0, 1]})
    b = Benchmark("csv", "/data", table, ["cat", "dog"], ["in", "out"],
                  params={"seed": np.int64(5), "root": Path("/data")})
    params = b.describe()["params"]
    assert params["seed"] == 5 and type(params["seed"]) is int
    assert params["root"] == "/data"


def test_store_refuses_key_fields_json_cannot_hold():
    from clipcal.errors import StoreError
    from clipcal.store import canonical_json

    assert canonical_json({"n": np.int64(2), "p": Path("/a")}) == '{"n":2,"p":"/a"}'
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        canonical_json({"bad": object()})


def test_one_definition_in_the_package():
    root = Path(__file__).resolve().parent.parent / "clipcal"
    defs = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
            if "def _jsonable(" in p.read_text() or "def jsonable(" in p.read_text()]
    assert defs in (["_json.py"], ["_json.py", "store.py"]), defs  # store.py only wraps it with its own refusal
