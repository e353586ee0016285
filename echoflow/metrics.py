"""Score clip predictions: classification metrics with participant-level bootstrap confidence intervals."""

from __future__ import annotations

import math
from typing import Callable

import h5py
import numpy as np
import pandas as pd
from sklearn import metrics as skm

CLASS_NAMES = ("background", "4CV")
# Metrics that get a bootstrap confidence interval; each has a vectorised implementation below.
BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "macro_f1", "roc_auc", "pr_auc")


def _none_if_nan(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict:
    """Compute clip-level metrics with scikit-learn; undefined values are None and explained in ``notes``.

    Args:
        labels: true classes [n], 1 = 4CV.
        probabilities: predicted 4CV probability [n].
        threshold: probability at or above which a clip is predicted 4CV.
    """
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = (probabilities >= threshold).astype(int)
    notes: list[str] = []
    result: dict = {"n_clips": int(labels.size), "threshold": threshold,
                    "class_counts": {name: int((labels == k).sum()) for k, name in enumerate(CLASS_NAMES)}}
    if labels.size == 0:
        notes.append("The test split has no clips, so no metric is defined.")
        for key in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"):
            result[key] = None
        result.update(per_class={}, macro={}, confusion_matrix={"labels": list(CLASS_NAMES), "matrix": [[0, 0], [0, 0]]},
                      notes=notes)
        return result

    present = sorted(set(labels.tolist()))
    result["accuracy"] = float(skm.accuracy_score(labels, predicted))
    if len(present) < 2:
        only = CLASS_NAMES[present[0]]
        notes.append(f"The test split contains only {only} clips, so balanced accuracy, ROC-AUC and PR-AUC are "
                     "undefined, and so are recall and F1 of the absent class.")
        result["balanced_accuracy"] = None
        result["roc_auc"] = None
        result["pr_auc"] = None
    else:
        result["balanced_accuracy"] = float(skm.balanced_accuracy_score(labels, predicted))
        result["roc_auc"] = float(skm.roc_auc_score(labels, probabilities))
        result["pr_auc"] = float(skm.average_precision_score(labels, probabilities))

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=[0, 1], zero_division=np.nan)
    result["per_class"] = {
        name: {"precision": _none_if_nan(precision[k]), "recall": _none_if_nan(recall[k]),
               "f1": _none_if_nan(f1[k]), "support": int(support[k])}
        for k, name in enumerate(CLASS_NAMES)}
    for k, name in enumerate(CLASS_NAMES):
        if support[k] > 0 and (predicted == k).sum() == 0:
            notes.append(f"No clip is predicted {name}, so its precision is undefined.")
    result["precision"] = result["per_class"]["4CV"]["precision"]
    result["recall"] = result["per_class"]["4CV"]["recall"]
    result["f1"] = result["per_class"]["4CV"]["f1"]
    defined = [k for k in range(2) if support[k] > 0]
    macro = {}
    for key, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        chosen = [values[k] for k in defined if not math.isnan(values[k])]
        macro[key] = float(np.mean(chosen)) if len(chosen) == 2 else None
    result["macro"] = macro
    result["confusion_matrix"] = {
        "labels": list(CLASS_NAMES), "rows": "true class", "columns": "predicted class",
        "matrix": skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()}
    result["notes"] = notes
    return result


def _weighted_confusion(labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> tuple:
    """Return weighted true/false positive/negative counts, each [r], for weight rows [r, n]."""
    positive = labels == 1
    called = predicted == 1
    tp = weights @ (positive & called)
    fp = weights @ (~positive & called)
    fn = weights @ (positive & ~called)
    tn = weights @ (~positive & ~called)
    return tp, fp, fn, tn


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _ranking_curves(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return weighted cumulative true and false positives [r, t] at each distinct score, highest first."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    positive = labels[order] == 1
    weights = weights[:, order]
    tps = np.cumsum(weights * positive, axis=1)
    fps = np.cumsum(weights * ~positive, axis=1)
    # Keep only the last clip of each run of equal scores, as sklearn's _binary_clf_curve does.
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), scores.size - 1]
    return tps[:, last], fps[:, last]


def weighted_scores(labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray,
                    threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Compute every metric of BOOTSTRAP_METRICS for each row of clip weights at once.

    Equal to scikit-learn with ``sample_weight`` set to one row (the tests check this), but vectorised so a
    thousand bootstrap resamples take milliseconds. Undefined values are NaN.

    Args:
        labels: true classes [n].
        probabilities: 4CV probabilities [n].
        weights: non-negative clip weights [r, n], for example how often each clip's participant was drawn.
    """
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    predicted = (probabilities >= threshold).astype(int)
    tp, fp, fn, tn = _weighted_confusion(labels, predicted, weights)
    total = tp + fp + fn + tn
    recall = _divide(tp, tp + fn)
    specificity = _divide(tn, tn + fp)
    precision = _divide(tp, tp + fp)
    f1 = _divide(2 * tp, 2 * tp + fp + fn)
    background_f1 = _divide(2 * tn, 2 * tn + fn + fp)
    both_classes = (tp + fn > 0) & (tn + fp > 0)
    scores = {
        "accuracy": _divide(tp + tn, total),
        "balanced_accuracy": np.where(both_classes, (recall + specificity) / 2, np.nan),
        "precision": precision,
        "recall": recall,
        "f1": np.where(tp + fn > 0, f1, np.nan),
        "macro_f1": np.where(both_classes, (f1 + background_f1) / 2, np.nan),
    }
    tps, fps = _ranking_curves(labels, probabilities, weights)
    positives, negatives = tps[:, -1:], fps[:, -1:]
    tpr = _divide(tps, positives)
    fpr = _divide(fps, negatives)
    tpr = np.concatenate([np.zeros((tpr.shape[0], 1)), tpr], axis=1)
    fpr = np.concatenate([np.zeros((fpr.shape[0], 1)), fpr], axis=1)
    roc_auc = np.trapezoid(tpr, fpr, axis=1)
    scores["roc_auc"] = np.where(both_classes, roc_auc, np.nan)
    # Average precision: sum over thresholds of (recall step) x precision, as sklearn.metrics.average_precision_score.
    curve_precision = _divide(tps, tps + fps)
    curve_recall = _divide(tps, positives)
    steps = np.diff(np.concatenate([np.zeros((tps.shape[0], 1)), curve_recall], axis=1), axis=1)
    pr_auc = np.nansum(steps * np.nan_to_num(curve_precision), axis=1)
    scores["pr_auc"] = np.where(positives[:, 0] > 0, pr_auc, np.nan)
    return scores


def bootstrap_intervals(labels: np.ndarray, probabilities: np.ndarray, participants: np.ndarray,
                        resamples: int, seed: int, threshold: float = 0.5, level: float = 0.95) -> dict:
    """Estimate percentile confidence intervals by resampling participants with replacement.

    Each resample draws as many participants as the test split has; a participant drawn twice contributes
    its clips twice. Resamples where a metric is undefined (one class only) are left out of that metric's
    interval, and the count used is recorded.

    Returns:
        {"ci95": {metric: [low, high] or None}, "bootstrap": {...settings and counts...}, "notes": [...]}
    """
    participants = np.asarray(participants).astype(str)
    names, index = np.unique(participants, return_inverse=True)
    info = {"unit": "participant", "resamples": int(resamples), "seed": int(seed), "level": level,
            "participants": int(names.size), "valid_resamples": {}}
    notes: list[str] = []
    empty = {"ci95": {key: None for key in BOOTSTRAP_METRICS}, "bootstrap": info, "notes": notes}
    if resamples == 0:
        notes.append("evaluation.bootstrap is 0, so no confidence interval was computed.")
        return empty
    if names.size < 2:
        notes.append(f"The test split has {names.size} participant(s); a bootstrap over participants needs at "
                     "least two, so no confidence interval was computed.")
        return empty

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, names.size, size=(resamples, names.size))
    multiplicity = np.zeros((resamples, names.size))
    np.add.at(multiplicity, (np.repeat(np.arange(resamples), names.size), draws.ravel()), 1)
    scores = weighted_scores(labels, probabilities, multiplicity[:, index], threshold)
    tail = (1 - level) / 2 * 100
    intervals = {}
    for key in BOOTSTRAP_METRICS:
        values = scores[key][~np.isnan(scores[key])]
        info["valid_resamples"][key] = int(values.size)
        if values.size < max(10, resamples // 10):
            intervals[key] = None
            notes.append(f"Only {values.size} of {resamples} resamples define {key}, so its interval is omitted.")
        else:
            intervals[key] = [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
    return {"ci95": intervals, "bootstrap": info, "notes": notes}


def predict_probabilities(forward: Callable[[np.ndarray], np.ndarray], clips: h5py.Dataset | np.ndarray,
                          batch_size: int = 64) -> np.ndarray:
    """Return the 4CV probability of every clip.

    Args:
        forward: maps a float32 batch [B, 1, K, H, W] in [0, 1] to logits [B, 2].
        clips: uint8 clips [n, K, H, W], read batch by batch so large sets need not fit in memory.
    """
    count = clips.shape[0]
    probabilities = np.empty(count, dtype=np.float64)
    for start in range(0, count, batch_size):
        batch = np.asarray(clips[start:start + batch_size], dtype=np.float32)[:, None] / 255.0
        logits = np.asarray(forward(batch), dtype=np.float64)
        probabilities[start:start + len(batch)] = softmax_positive(logits)
    return probabilities


def softmax_positive(logits: np.ndarray) -> np.ndarray:
    """Return the softmax probability of class 1 (4CV) from logits [n, 2]."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials[:, 1] / exponentials.sum(axis=1)


def _read_strings(dataset: h5py.Dataset) -> list[str]:
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in dataset[()]]


def read_segment_provenance(path: str) -> pd.DataFrame:
    """Read the clip labels and provenance datasets of a segment set into a table, one row per clip."""
    with h5py.File(path, "r") as store:
        missing = [name for name in ("clips", "labels", "video_id", "participant") if name not in store]
        if missing:
            raise ValueError(f"{path}: missing dataset(s) {', '.join(missing)}; expected a segment set written by "
                             "the segments rule. Delete the file and rerun the workflow to rebuild it.")
        table = pd.DataFrame({
            "clip": np.arange(store["labels"].shape[0]),
            "video_id": _read_strings(store["video_id"]),
            "participant": _read_strings(store["participant"]),
            "start_frame": store["start_frame"][()] if "start_frame" in store else -1,
            "interval": _read_strings(store["interval"]) if "interval" in store else "",
            "label": store["labels"][()].astype(int),
        })
    return table


def evaluate_segments(forward: Callable[[np.ndarray], np.ndarray], segments_path: str, resamples: int, seed: int,
                      batch_size: int = 64) -> tuple[dict, pd.DataFrame]:
    """Predict every clip of a segment set and score the predictions.

    Returns:
        (metrics dict, predictions table with provenance, label, probability and predicted class per clip)
    """
    predictions = read_segment_provenance(segments_path)
    with h5py.File(segments_path, "r") as store:
        predictions["probability"] = predict_probabilities(forward, store["clips"], batch_size)
    predictions["predicted"] = (predictions["probability"] >= 0.5).astype(int)
    result = classification_metrics(predictions["label"].to_numpy(), predictions["probability"].to_numpy())
    result["n_participants"] = int(predictions["participant"].nunique())
    result["n_videos"] = int(predictions["video_id"].nunique())
    intervals = bootstrap_intervals(predictions["label"].to_numpy(), predictions["probability"].to_numpy(),
                                    predictions["participant"].to_numpy(), resamples, seed)
    result["ci95"] = intervals["ci95"]
    result["bootstrap"] = intervals["bootstrap"]
    result["notes"] = result["notes"] + intervals["notes"]
    return result, predictions
