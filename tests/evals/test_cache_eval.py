from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import pytest
from typer.testing import CliRunner

from margin.cache.calibration import load_calibration
from margin.cache.encoder import DEFAULT_MODEL, LazyEncoder, texts_digest
from margin.evals.cache import metrics_at, pairs_from_records, serve_nearest, split_rows
from margin.evals.cli import app

RECORDS = [
    {"a": "how to cook rice", "b": "how do I cook rice", "duplicate": True},
    {"a": "best phone 2020", "b": "best laptop 2020", "duplicate": False},
    {"a": "what is love", "b": "define love", "duplicate": True},
    {"a": "capital of france", "b": "population of france", "duplicate": False},
    {"a": "define love", "b": "meaning of love", "duplicate": True},
]


def vec(*xs: float) -> list[float]:
    v = np.zeros(8)
    v[: len(xs)] = xs
    return cast(list[float], (v / np.linalg.norm(v)).tolist())  # numpy types tolist() as Any


def hand_vectors(texts: list[str]) -> npt.NDArray[np.float32]:
    c = np.cos
    table = {
        "how to cook rice": vec(1),
        "how do I cook rice": vec(c(0.3), np.sin(0.3)),  # 0.955 to its own a
        "best phone 2020": vec(0, 0, 1),
        "best laptop 2020": vec(0, 0, 0.9, np.sqrt(1 - 0.81)),  # 0.90 to its own a, not a duplicate
        "what is love": vec(0, 0, 0, 0, 1),
        "define love": vec(0, 0, 0, 0, 0.85, np.sqrt(1 - 0.85**2)),  # 0.85 to "what is love"
        "capital of france": vec(0, 0, 0, 0, 0, 0, 1),
        "population of france": vec(0, 0, 0.8, 0, 0, 0, 0, 0.6),  # 0.8 to "best phone": another pair's a
        "meaning of love": vec(0, 0, 0, 0, 0.5, 0.5, 0, 0.7),
    }
    return np.asarray([table[t] for t in texts], dtype=np.float32)


def test_nearest_among_all_entries_and_labels() -> None:
    pairs = pairs_from_records(RECORDS)
    vectors = hand_vectors(pairs.texts)
    rows = np.arange(4, dtype=np.int64)  # the first four pairs; "define love" is not an entry here
    served = metrics_at(serve_nearest(pairs, rows, vectors), 0.0)
    assert (served.queries, served.hits, served.false_hits) == (4, 4, 2)
    result = serve_nearest(pairs, rows, vectors)
    assert result.similarity.round(3).tolist() == [0.955, 0.9, 0.85, 0.8]
    assert result.correct.tolist() == [True, False, True, False]
    m = metrics_at(result, 0.88)
    assert (m.hits, m.false_hits, m.hit_rate, m.false_hit_rate, m.precision) == (2, 1, 0.5, 0.25, 0.5)
    assert metrics_at(result, 0.96).precision == 1.0 and metrics_at(result, 0.96).hits == 0


def test_serving_an_identical_or_labelled_text_from_another_pair_is_correct() -> None:
    pairs = pairs_from_records(RECORDS)
    vectors = hand_vectors(pairs.texts)
    # pair 4 is (define love → meaning of love); pair 2's query "define love" hits entry "define love" itself
    result = serve_nearest(pairs, np.asarray([2, 4], dtype=np.int64), vectors)
    assert result.similarity[0] == pytest.approx(1.0)
    assert result.correct.tolist()[0] is True


def test_split_is_a_seeded_partition() -> None:
    calib, test = split_rows(101, 0.5, seed=3)
    assert len(calib) + len(test) == 101 and not set(calib.tolist()) & set(test.tolist())
    assert split_rows(101, 0.5, seed=3)[0].tolist() == calib.tolist()
    assert split_rows(101, 0.5, seed=4)[0].tolist() != calib.tolist()


def synthetic_records(n: int, seed: int) -> tuple[list[dict[str, object]], dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    records, table = [], {}
    for i in range(n):
        a = rng.normal(size=16)
        dup = bool(rng.random() < 0.4)
        noise = 0.15 if dup else 0.6
        b = a + noise * np.linalg.norm(a) * rng.normal(size=16) / 4
        records.append({"a": f"a{i}", "b": f"b{i}", "duplicate": dup})
        table[f"a{i}"], table[f"b{i}"] = (a / np.linalg.norm(a)).tolist(), (b / np.linalg.norm(b)).tolist()
    return records, table


def test_cli_end_to_end_with_cached_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(self: object, texts: list[str]) -> None:
        raise AssertionError("the vectors are cached; the model must not load")

    monkeypatch.setattr(LazyEncoder, "__call__", no_model)
    records, table = synthetic_records(1000, seed=0)
    pairs_path = tmp_path / "pairs.jsonl"
    pairs_path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    texts = pairs_from_records(records).texts
    np.save(tmp_path / f"chunk-{texts_digest(texts, DEFAULT_MODEL)}.npy", np.asarray([table[t] for t in texts]))
    out, cal = tmp_path / "report.json", tmp_path / "cal.json"
    args = ["cache", "--pairs", str(pairs_path), "--vectors-dir", str(tmp_path), "--out", str(out)]
    args += ["--write-calibration", str(cal), "--delta", "0.05", "--delta", "0.1", "--seeds", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["pairs"] == 1000 and len(report["splits"]) == 2
    split = report["splits"][0]
    assert [row["delta"] for row in split["calibrated"]] == [0.05, 0.1]
    assert [row["threshold"] for row in split["fixed"]] == [0.8, 0.85, 0.9, 0.95]
    for row in split["calibrated"]:
        test = row["test"]
        assert test["queries"] == 500 and 0 < test["hits"] <= 500
        assert row["meets_delta"] == (test["false_hit_rate"] <= row["delta"])
    thresholds = load_calibration(cal)
    assert thresholds[0.05] >= thresholds[0.1]
