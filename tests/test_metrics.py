"""Clip metrics and participant bootstrap agree with scikit-learn and survive degenerate test splits."""

import math

import h5py
import numpy as np
import pytest
from sklearn import metrics as skm

from echoflow import metrics

# Hand-made predictions: 10 clips from three participants, with a tie in the scores.
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
PROBABILITIES = np.array([0.9, 0.8, 0.4, 0.6, 0.2, 0.7, 0.1, 0.3, 0.6, 0.55])
PARTICIPANTS = np.array(["p1", "p1", "p1", "p2", "p2", "p2", "p3", "p3", "p3", "p3"])


def test_metrics_match_sklearn():
    result = metrics.classification_metrics(LABELS, PROBABILITIES)
    predicted = (PROBABILITIES >= 0.5).astype(int)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(LABELS, predicted))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(LABELS, predicted))
    assert result["f1"] == pytest.approx(skm.f1_score(LABELS, predicted))
    assert result["precision"] == pytest.approx(skm.precision_score(LABELS, predicted))
    assert result["recall"] == pytest.approx(skm.recall_score(LABELS, predicted))
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(LABELS, PROBABILITIES))
    assert result["pr_auc"] == pytest.approx(skm.average_precision_score(LABELS, PROBABILITIES))
    assert result["macro"]["f1"] == pytest.approx(skm.f1_score(LABELS, predicted, average="macro"))
    assert result["per_class"]["background"]["recall"] == pytest.approx(skm.recall_score(LABELS, predicted, pos_label=0))


def test_confusion_matrix_counted_by_hand():
    result = metrics.classification_metrics(LABELS, PROBABILITIES)
    # True background: 0.2, 0.1, 0.3 below 0.5; 0.7 and 0.6 above. True 4CV: only 0.4 below 0.5.
    assert result["confusion_matrix"]["matrix"] == [[3, 2], [1, 4]]
    assert result["accuracy"] == pytest.approx(0.7)
    assert result["class_counts"] == {"background": 5, "4CV": 5}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_scores_match_sklearn_sample_weight(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    # Rounded scores make ties, which the ranking metrics must handle like sklearn.
    probabilities = np.round(rng.random(40), 1)
    weights = rng.integers(0, 4, 40).astype(float)
    scores = metrics.weighted_scores(labels, probabilities, weights[None])
    predicted = (probabilities >= 0.5).astype(int)
    expected = {
        "accuracy": skm.accuracy_score(labels, predicted, sample_weight=weights),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, predicted, sample_weight=weights),
        "precision": skm.precision_score(labels, predicted, sample_weight=weights),
        "recall": skm.recall_score(labels, predicted, sample_weight=weights),
        "f1": skm.f1_score(labels, predicted, sample_weight=weights),
        "macro_f1": skm.f1_score(labels, predicted, sample_weight=weights, average="macro"),
        "roc_auc": skm.roc_auc_score(labels, probabilities, sample_weight=weights),
        "pr_auc": skm.average_precision_score(labels, probabilities, sample_weight=weights),
    }
    for key, value in expected.items():
        assert scores[key][0] == pytest.approx(value), key


def test_bootstrap_is_seeded_and_brackets_estimate():
    first = metrics.bootstrap_intervals(LABELS, PROBABILITIES, PARTICIPANTS, resamples=300, seed=4)
    second = metrics.bootstrap_intervals(LABELS, PROBABILITIES, PARTICIPANTS, resamples=300, seed=4)
    other = metrics.bootstrap_intervals(LABELS, PROBABILITIES, PARTICIPANTS, resamples=300, seed=5)
    assert first["ci95"] == second["ci95"]
    assert first["ci95"] != other["ci95"]
    low, high = first["ci95"]["accuracy"]
    assert low <= 0.7 <= high
    assert low < high
    assert first["bootstrap"]["participants"] == 3


def test_single_class_split_gives_none_with_note():
    labels = np.zeros(6, dtype=int)
    probabilities = np.array([0.1, 0.7, 0.2, 0.3, 0.4, 0.2])
    result = metrics.classification_metrics(labels, probabilities)
    assert result["accuracy"] == pytest.approx(5 / 6)
    assert result["roc_auc"] is None
    assert result["balanced_accuracy"] is None
    assert result["per_class"]["4CV"]["recall"] is None
    assert any("only background" in note for note in result["notes"])
    intervals = metrics.bootstrap_intervals(labels, probabilities, ["a", "a", "b", "b", "c", "c"], 100, seed=1)
    assert intervals["ci95"]["roc_auc"] is None
    assert intervals["ci95"]["accuracy"] is not None


def test_single_participant_gives_no_interval():
    intervals = metrics.bootstrap_intervals(LABELS, PROBABILITIES, ["p1"] * LABELS.size, 100, seed=1)
    assert all(value is None for value in intervals["ci95"].values())
    assert any("1 participant" in note for note in intervals["notes"])


def test_empty_split_gives_none():
    result = metrics.classification_metrics(np.array([], dtype=int), np.array([]))
    assert result["accuracy"] is None
    assert result["n_clips"] == 0


def test_evaluate_segments_reads_provenance(tmp_path):
    path = tmp_path / "test.h5"
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 255, size=(8, 2, 6, 6), dtype=np.uint8)
    labels = np.array([0, 1] * 4, dtype=np.uint8)
    # Brighten 4CV clips so the mean-intensity classifier below separates the classes.
    clips[labels == 1] = np.clip(clips[labels == 1].astype(int) + 120, 0, 255).astype(np.uint8)
    strings = h5py.string_dtype()
    with h5py.File(path, "w") as store:
        store["clips"] = clips
        store["labels"] = labels
        store.create_dataset("video_id", data=[f"v{i % 2}" for i in range(8)], dtype=strings)
        store.create_dataset("participant", data=[f"p{i % 3}" for i in range(8)], dtype=strings)
        store["start_frame"] = np.arange(8, dtype=np.int64) * 10
        store.create_dataset("interval", data=[f"4CV-{i}" if i % 2 else f"bg-{i}" for i in range(8)], dtype=strings)

    def forward(batch):
        mean = batch.mean(axis=(1, 2, 3, 4))
        return np.stack([np.zeros_like(mean), (mean - 0.6) * 20], axis=1)

    result, predictions = metrics.evaluate_segments(forward, str(path), resamples=50, seed=0, batch_size=3)
    assert list(predictions["participant"]) == [f"p{i % 3}" for i in range(8)]
    assert list(predictions["start_frame"]) == list(range(0, 80, 10))
    assert result["accuracy"] == 1.0
    assert result["n_participants"] == 3
    assert not math.isnan(predictions["probability"].sum())
