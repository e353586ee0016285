"""Participant-level split: whole participants per split, both classes per split, clear errors."""

import pandas as pd
import pytest

from echoflow.split import SplitError, assign_splits, participant_classes, split_sizes

FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


def participants(n_with_4cv, n_without=0):
    table = {f"P{i:02d}": True for i in range(n_with_4cv)}
    table.update({f"N{i:02d}": False for i in range(n_without)})
    return table


def test_each_participant_in_one_split():
    table = assign_splits(participants(17, 3), FRACTIONS, seed=1)
    assert table["participant"].is_unique
    assert set(table["participant"]) == set(participants(17, 3))
    assert set(table["split"]) == {"train", "val", "test"}


def test_split_sizes_follow_fractions():
    assert split_sizes(20, FRACTIONS) == {"train": 14, "val": 3, "test": 3}
    assert split_sizes(6, FRACTIONS) == {"train": 4, "val": 1, "test": 1}
    assert split_sizes(3, FRACTIONS) == {"train": 1, "val": 1, "test": 1}
    assert split_sizes(4, {"train": 0.8, "val": 0.0, "test": 0.2}) == {"train": 3, "val": 0, "test": 1}


def test_every_split_gets_4cv_participant():
    # Three of ten participants have 4CV, so each split must get exactly one of them for every seed.
    classes = participants(3, 7)
    for seed in range(30):
        table = assign_splits(classes, FRACTIONS, seed=seed)
        with_4cv = table[table["participant"].map(classes)]
        assert sorted(with_4cv["split"]) == ["test", "train", "val"], f"seed {seed}"


def test_4cv_participants_stratified():
    classes = participants(10, 10)
    table = assign_splits(classes, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
    counts = table[table["participant"].map(classes)]["split"].value_counts().to_dict()
    assert counts == {"train": 5, "val": 3, "test": 2} or counts == {"train": 5, "val": 2, "test": 3}


def test_seed_decides_assignment():
    classes = participants(12, 4)
    first = assign_splits(classes, FRACTIONS, seed=11)
    again = assign_splits(classes, FRACTIONS, seed=11)
    other = assign_splits(classes, FRACTIONS, seed=12)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


def test_too_few_participants_error():
    with pytest.raises(SplitError) as error:
        assign_splits(participants(2), FRACTIONS, seed=0)
    message = str(error.value)
    assert "found 2 participant(s)" in message
    assert "3 are needed" in message


def test_folds_not_supported_yet():
    with pytest.raises(SplitError, match="split.folds is 5.*not supported yet"):
        assign_splits(participants(10), FRACTIONS, seed=0, folds=5)


def test_participant_classes_from_manifest():
    manifest = pd.DataFrame({
        "video_id": ["A_T1", "A_T2", "B_T1", "C_T1", "D_T1"],
        "participant": ["A", "A", "B", "C", "D"],
        "status": ["ok", "ok", "ok", "excluded", "ok"],
        "annotated_s": ["0.0", "3.5", "0.0", "9.0", ""],
    })
    assert participant_classes(manifest) == {"A": True, "B": False, "D": False}
