"""Determinism: two runs from scratch on the CPU give the same split, segment sets and metrics."""

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import workflow_runs as runs

pytestmark = pytest.mark.workflow

# Fields of metrics.json that measure time or machine load rather than the model's predictions.
TIMING_KEYS = {"latency_ms", "latency", "seconds", "load_average", "timing"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def without_timing(value):
    """Return a copy of a JSON value without the timing keys."""
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(item) for item in value]
    return value


def segment_contents(path: Path) -> dict:
    """Return every dataset and attribute of a segment set as Python values."""
    contents = {}
    with h5py.File(path, "r") as segment_set:
        for name, dataset in segment_set.items():
            contents[name] = np.asarray(dataset[()]).tolist()
        contents["attrs"] = {key: np.asarray(value).tolist() for key, value in segment_set.attrs.items()}
    return contents


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Return the shared finished run and a second run from scratch on a copy of the same raw tree."""
    first = runs.finished_run(tmp_path_factory)
    second = runs.make_workdir(tmp_path_factory.mktemp("second") / "work", runs.small_raw_tree(tmp_path_factory))
    run = runs.run_snakemake(second)
    assert run.returncode == 0, run.tail()
    return first, second


def test_split_identical(two_runs):
    first, second = two_runs
    assert sha256(first / "results/splits.tsv") == sha256(second / "results/splits.tsv")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_segment_set_identical(two_runs, split):
    first, second = two_runs
    path = f"results/segments/default/{split}.h5"
    assert segment_contents(first / path) == segment_contents(second / path)
    # Byte-identical files let two runs be compared with sha256sum alone.
    assert sha256(first / path) == sha256(second / path)


def test_segment_summary_identical(two_runs):
    first, second = two_runs
    path = "results/segments/default/summary.tsv"
    assert sha256(first / path) == sha256(second / path)


def test_metrics_identical(two_runs):
    first, second = two_runs
    path = "results/eval/tiny/metrics.json"
    first_metrics = json.loads((first / path).read_text(encoding="utf-8"))
    second_metrics = json.loads((second / path).read_text(encoding="utf-8"))
    assert {"accuracy", "f1", "roc_auc"} <= set(first_metrics)
    assert without_timing(first_metrics) == without_timing(second_metrics)


def test_predictions_identical(two_runs):
    first, second = two_runs
    path = "results/eval/tiny/predictions.tsv"
    assert sha256(first / path) == sha256(second / path)
