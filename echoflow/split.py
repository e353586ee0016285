"""Assign whole participants to the train, val and test splits."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["participant", "split"]

log = logging.getLogger(__name__)


class SplitError(ValueError):
    """The participants cannot be split as configured."""


def participant_classes(manifest: pd.DataFrame) -> dict[str, bool]:
    """Map each participant with at least one ok video to whether any of its ok videos has 4CV.

    A video has 4CV when its manifest row has status ok and annotated_s > 0. Background is assumed in every
    video, because the annotations mark only the 4CV stretches of longer captures.
    """
    usable = manifest[manifest["status"] == "ok"]
    annotated = pd.to_numeric(usable["annotated_s"], errors="coerce").fillna(0.0) > 0
    has_4cv = annotated.groupby(usable["participant"].astype(str)).any()
    return {participant: bool(has_4cv[participant]) for participant in sorted(has_4cv.index)}


def split_sizes(n_participants: int, fractions: dict[str, float]) -> dict[str, int]:
    """Return how many participants each split gets.

    Every split with a fraction above 0 gets at least one participant, and train gets the rest.

    Raises:
        SplitError: when there are fewer participants than splits with a fraction above 0.
    """
    active = [name for name in SPLITS if fractions.get(name, 0) > 0]
    if n_participants < len(active):
        raise SplitError(
            f"found {n_participants} participant(s) with ok videos, but {len(active)} are needed: one for "
            f"each of the splits {', '.join(active)} (split.fractions {fractions}). Add participants to the "
            "raw tree, or set the fraction of val to 0.")
    sizes = {name: 0 for name in SPLITS}
    for name in ("val", "test"):
        if name in active:
            sizes[name] = max(1, int(round(n_participants * fractions[name])))
    while n_participants - sizes["val"] - sizes["test"] < 1:
        larger = "val" if sizes["val"] > sizes["test"] else "test"
        sizes[larger] -= 1
    sizes["train"] = n_participants - sizes["val"] - sizes["test"]
    return sizes


def positive_counts(sizes: dict[str, int], n_positive: int) -> dict[str, int]:
    """Spread the participants with 4CV over the splits in proportion to their sizes.

    Uses largest-remainder rounding, then moves participants so that every non-empty split has at least one
    with 4CV when there are enough of them.
    """
    total = sum(sizes.values())
    shares = {name: n_positive * size / total for name, size in sizes.items()}
    counts = {name: int(np.floor(share)) for name, share in shares.items()}
    by_remainder = sorted(SPLITS, key=lambda name: (-(shares[name] - counts[name]), SPLITS.index(name)))
    for name in by_remainder[: n_positive - sum(counts.values())]:
        counts[name] += 1
    non_empty = [name for name in SPLITS if sizes[name] > 0]
    if n_positive >= len(non_empty):
        for name in non_empty:
            if counts[name] == 0:
                donor = max(SPLITS, key=lambda other: counts[other])
                counts[donor] -= 1
                counts[name] += 1
    return counts


def assign_splits(participants: dict[str, bool], fractions: dict[str, float], seed: int,
                  folds: int = 0) -> pd.DataFrame:
    """Assign each participant to one split, stratified by whether the participant has 4CV.

    Args:
        participants: participant -> True if any of its videos has 4CV.
        fractions: share of participants for "train", "val" and "test"; they add up to 1.
        seed: seed of the shuffle.
        folds: 0 for one split; k-fold cross-validation (k >= 2) is not supported yet.

    Returns:
        Table with SPLIT_COLUMNS, one row per participant, sorted by participant.
    """
    if folds and folds >= 2:
        raise SplitError(
            f"split.folds is {folds}, but k-fold cross-validation by participant is not supported yet. "
            "Set split.folds to 0 to use one train/val/test split.")
    sizes = split_sizes(len(participants), fractions)
    rng = np.random.default_rng(seed)
    positives = [name for name in sorted(participants) if participants[name]]
    negatives = [name for name in sorted(participants) if not participants[name]]
    positives = [positives[i] for i in rng.permutation(len(positives))]
    negatives = [negatives[i] for i in rng.permutation(len(negatives))]

    counts = positive_counts(sizes, len(positives))
    rows = []
    for name in SPLITS:
        n_negative = sizes[name] - counts[name]
        rows += [(participant, name) for participant in positives[: counts[name]]]
        rows += [(participant, name) for participant in negatives[:n_negative]]
        positives, negatives = positives[counts[name]:], negatives[n_negative:]

    without_4cv = [name for name in SPLITS if sizes[name] > 0 and counts[name] == 0]
    if without_4cv:
        log.warning("only %d participant(s) have 4CV annotations, so the split(s) %s get no 4CV clips",
                    sum(participants.values()), ", ".join(without_4cv))
    table = pd.DataFrame(rows, columns=SPLIT_COLUMNS)
    return table.sort_values("participant", ignore_index=True)
