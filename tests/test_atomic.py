"""Atomic writes: a target appears complete or not at all, and leftovers of killed writers are removed."""

import pytest

from echoflow.atomic import atomic_output, write_text


def test_write_text_creates_target(tmp_path):
    target = tmp_path / "sub" / "table.tsv"

    write_text(target, "a\tb\n")

    assert target.read_text(encoding="utf-8") == "a\tb\n"
    assert list(target.parent.iterdir()) == [target]


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "store.h5"

    with pytest.raises(RuntimeError):
        with atomic_output(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("interrupted")

    assert list(tmp_path.iterdir()) == []


def test_stale_partial_files_removed(tmp_path):
    # A killed job leaves its temporary file behind. The next write of the same target deletes it.
    stale = tmp_path / ".video [1].h5.partial-999999"
    stale.write_bytes(b"half")
    other = tmp_path / ".other.h5.partial-999999"
    other.write_bytes(b"half")

    write_text(tmp_path / "video [1].h5", "done")

    assert not stale.exists()
    assert other.exists()
    assert (tmp_path / "video [1].h5").read_text(encoding="utf-8") == "done"
