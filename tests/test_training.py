"""Training loop on real HDF5 segment sets: determinism, resume, checkpoints, weights and augmentation."""

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import update_config

from echoflow import checkpoint, training
from echoflow import config as echoflow_config
from echoflow.augment import Augmentation, augment_batch, equalize
from echoflow.training import TrainingJob

SETTINGS = {"model": "squeezenet", "model_args": {"width_mult": 0.25}, "batch_size": 8, "max_epochs": 3,
            "patience": 3, "learning_rate": 0.003, "seed": 11, "augment": True}


def write_segments(path, n, seed, frames=2, size=64, balance="downsample", positive=0.5):
    """Write a segment set whose 4CV clips contain a bright centred square that moves by one pixel a frame."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) < round(n * positive)).astype(np.uint8)
    rng.shuffle(labels)
    clips = rng.integers(0, 60, size=(n, frames, size, size), dtype=np.uint8)
    for index in np.flatnonzero(labels):
        for frame in range(frames):
            clips[index, frame, 16:48, 16 + frame:48 + frame] = 200
    with h5py.File(path, "w") as store:
        store["clips"] = clips
        store["labels"] = labels
        store.attrs["balance"] = balance
        store.attrs["frames_per_clip"] = frames
        store.attrs["stride"] = 1
        store.attrs["sampling"] = json.dumps({"frames_per_clip": frames, "balance": balance})
    return path


@pytest.fixture
def segment_dir(tmp_path):
    write_segments(tmp_path / "train.h5", 20, seed=1)
    write_segments(tmp_path / "val.h5", 10, seed=2)
    return tmp_path


def make_job(folder, name="exp", settings=None, segments=None):
    segments = segments or folder
    return TrainingJob(
        train_path=segments / "train.h5", val_path=segments / "val.h5",
        model_path=folder / name / "model.pt", history_path=folder / name / "history.tsv",
        resume_path=folder / f"{name}.resume" / "state.pt", experiment_name=name,
        settings=dict(settings or SETTINGS), sampling={"frames_per_clip": 2, "stride": 1},
        preprocess={"crop": "auto", "mask": "auto", "size": [64, 64], "stride": 1}, threads=1)


def state_dict(path):
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_same_seed_same_history(segment_dir):
    training.run(make_job(segment_dir, "first"))
    training.run(make_job(segment_dir, "second"))
    first = pd.read_csv(segment_dir / "first" / "history.tsv", sep="\t")
    second = pd.read_csv(segment_dir / "second" / "history.tsv", sep="\t")
    columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"]
    assert list(first.columns) == columns + ["seconds"]
    assert len(first) == 3
    pd.testing.assert_frame_equal(first[columns], second[columns])
    assert_same_weights(state_dict(segment_dir / "first" / "model.pt"), state_dict(segment_dir / "second" / "model.pt"))


def test_other_seed_other_history(segment_dir):
    training.run(make_job(segment_dir, "first"))
    training.run(make_job(segment_dir, "other", {**SETTINGS, "seed": 12}))
    first = pd.read_csv(segment_dir / "first" / "history.tsv", sep="\t")
    other = pd.read_csv(segment_dir / "other" / "history.tsv", sep="\t")
    assert not np.allclose(first["train_loss"], other["train_loss"])


class Interrupted(Exception):
    pass


def stop_after_first_epoch(epoch):
    if epoch == 1:
        raise Interrupted


def test_resume_matches_uninterrupted_run(segment_dir):
    settings = {**SETTINGS, "model": "mobilenet_v2"}
    training.run(make_job(segment_dir, "whole", settings))

    job = make_job(segment_dir, "resumed", settings)
    with pytest.raises(Interrupted):
        training.run(job, epoch_callback=stop_after_first_epoch)
    assert job.resume_path.exists()
    assert not job.model_path.exists()

    epochs = []
    training.run(job, epoch_callback=epochs.append)
    assert epochs == [2, 3]
    assert not job.resume_path.parent.exists()
    assert_same_weights(state_dict(segment_dir / "whole" / "model.pt"), state_dict(job.model_path))
    whole = pd.read_csv(segment_dir / "whole" / "history.tsv", sep="\t").drop(columns="seconds")
    resumed = pd.read_csv(job.history_path, sep="\t").drop(columns="seconds")
    pd.testing.assert_frame_equal(whole, resumed)


def test_resume_state_for_other_settings_ignored(segment_dir):
    job = make_job(segment_dir, "exp")
    with pytest.raises(Interrupted):
        training.run(job, epoch_callback=stop_after_first_epoch)
    changed = make_job(segment_dir, "exp", {**SETTINGS, "learning_rate": 0.001})
    epochs = []
    training.run(changed, epoch_callback=epochs.append)
    assert epochs == [1, 2, 3]


def test_checkpoint_loads_weights_only_and_predicts(segment_dir):
    job = make_job(segment_dir)
    progress = training.run(job)
    raw = torch.load(job.model_path, weights_only=True)
    for key in checkpoint.REQUIRED_KEYS:
        assert key in raw, key
    assert raw["arch"] == "squeezenet"
    assert raw["arch_args"] == {"frames_per_clip": 2, "width_mult": 0.25}
    assert raw["preprocess"]["frames_per_clip"] == 2
    assert raw["preprocess"]["clip_stride"] == 1
    assert raw["preprocess"]["size"] == [64, 64]
    assert raw["class_names"] == ["background", "4CV"]
    assert raw["experiment_name"] == "exp"
    assert raw["experiment"]["optimizer"] == "adam"
    history = pd.read_csv(job.history_path, sep="\t")
    best = history.loc[history["val_loss"].idxmin()]
    assert raw["best_epoch"] == progress.best_epoch == best["epoch"]
    assert raw["val_metrics"]["loss"] == pytest.approx(best["val_loss"])

    model, loaded = checkpoint.load_model(job.model_path)
    assert not model.training
    with h5py.File(segment_dir / "val.h5") as store:
        clips = torch.from_numpy(store["clips"][()]).unsqueeze(1).float() / 255
    with torch.no_grad():
        probabilities = model(clips).softmax(1)
    assert probabilities.shape == (10, 2)
    assert torch.allclose(probabilities.sum(1), torch.ones(10))
    assert loaded["best_epoch"] == raw["best_epoch"]


def test_learns_synthetic_views(tmp_path):
    write_segments(tmp_path / "train.h5", 48, seed=3)
    write_segments(tmp_path / "val.h5", 16, seed=4)
    settings = {**SETTINGS, "model": "mobilenet_v1", "max_epochs": 6, "patience": 6, "augment": False,
                "learning_rate": 0.01}
    training.run(make_job(tmp_path, settings=settings))
    history = pd.read_csv(tmp_path / "exp" / "history.tsv", sep="\t")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["val_accuracy"].max() >= 0.8


def test_early_stopping_keeps_best_epoch():
    progress = training.Progress()
    model = torch.nn.Linear(1, 1)
    for epoch, loss in enumerate([0.9, 0.5, 0.6, 0.7], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        progress.record({"epoch": epoch}, model, loss)
    assert progress.best_epoch == 2
    assert progress.best_state["weight"].item() == 2
    assert progress.epochs_without_improvement == 2


def test_patience_stops_training(segment_dir):
    # A learning rate this high makes the validation loss diverge after the first epochs.
    settings = {**SETTINGS, "max_epochs": 8, "patience": 1, "learning_rate": 5.0, "optimizer": "sgd"}
    progress = training.run(make_job(segment_dir, settings=settings))
    history = pd.read_csv(segment_dir / "exp" / "history.tsv", sep="\t")
    assert len(history) < 8
    assert progress.epochs_without_improvement == 1
    assert progress.best_epoch == len(history) - 1


def test_class_weights_from_balance(tmp_path):
    balanced = training.read_segments(write_segments(tmp_path / "a.h5", 10, seed=1))
    assert training.class_weights(balanced) is None
    weighted = training.read_segments(write_segments(tmp_path / "b.h5", 12, seed=1, balance="weights", positive=0.25))
    assert training.class_weights(weighted).tolist() == pytest.approx([12 / 18, 12 / 6])
    unbalanced = training.read_segments(write_segments(tmp_path / "c.h5", 12, seed=1, balance="none", positive=0.25))
    assert training.class_weights(unbalanced) is not None


def test_single_class_training_set_rejected(tmp_path):
    write_segments(tmp_path / "train.h5", 8, seed=1, positive=0.0)
    write_segments(tmp_path / "val.h5", 8, seed=2)
    with pytest.raises(ValueError, match=r"train\.h5 has 8 background and 0 4CV"):
        training.run(make_job(tmp_path))


def test_frames_per_clip_mismatch_rejected(tmp_path):
    write_segments(tmp_path / "train.h5", 8, seed=1, frames=3)
    write_segments(tmp_path / "val.h5", 8, seed=2, frames=3)
    with pytest.raises(ValueError, match="frames_per_clip 3"):
        training.run(make_job(tmp_path))


def test_augmentation_same_for_all_frames():
    frame = torch.rand(1, 1, 1, 64, 64)
    clips = frame.expand(3, 1, 5, 64, 64).contiguous()
    settings = Augmentation(vflip=0.5, equalize=0.5)
    out = augment_batch(clips, settings, torch.Generator().manual_seed(0))
    assert out.shape == clips.shape
    for index in range(3):
        for k in range(1, 5):
            assert torch.equal(out[index, 0, k], out[index, 0, 0])
    assert not torch.allclose(out, clips)
    assert out.min() >= 0
    assert out.max() <= 1


def test_augmentation_repeats_with_seed():
    clips = torch.rand(4, 1, 2, 64, 64)
    first = augment_batch(clips, Augmentation(), torch.Generator().manual_seed(5))
    second = augment_batch(clips, Augmentation(), torch.Generator().manual_seed(5))
    assert torch.equal(first, second)


def test_flip_only_augmentation_mirrors():
    clips = torch.rand(2, 1, 2, 64, 64)
    settings = Augmentation(hflip=1.0, rotation_deg=0, translate=0, scale=(1, 1), brightness=0, contrast=0)
    out = augment_batch(clips, settings, torch.Generator().manual_seed(0))
    assert torch.allclose(out, clips.flip(-1), atol=1e-5)


def test_equalize_spreads_nonzero_pixels():
    clips = torch.zeros(1, 2, 8, 8)
    clips[0, :, :4] = torch.linspace(0.4, 0.5, 32).view(2, 4, 4).repeat_interleave(2, -1)[:, :, :8]
    out = equalize(clips)
    assert out[0, :, 4:].eq(0).all()
    assert out.max().item() == pytest.approx(1.0)
    assert out[0, :, :4].min().item() == 0


def test_augment_setting_forms():
    assert Augmentation.from_setting(False) is None
    assert Augmentation.from_setting(True) == Augmentation()
    assert Augmentation.from_setting({"equalize": 0.3}).equalize == 0.3
    assert Augmentation.from_setting({"enabled": False}) is None
    with pytest.raises(ValueError, match="rotation"):
        Augmentation.from_setting({"rotation": 5})


def test_empty_validation_set_uses_training_loss(tmp_path):
    write_segments(tmp_path / "train.h5", 12, seed=1)
    write_segments(tmp_path / "val.h5", 0, seed=2)
    progress = training.run(make_job(tmp_path, settings={**SETTINGS, "max_epochs": 2}))
    history = pd.read_csv(tmp_path / "exp" / "history.tsv", sep="\t")
    assert history["val_loss"].isna().all()
    assert progress.best_epoch == history["train_loss"].idxmin() + 1
    assert math.isnan(torch.load(tmp_path / "exp" / "model.pt", weights_only=True)["val_metrics"]["loss"])


def test_paper_config_valid_over_defaults():
    root = Path(__file__).resolve().parents[1]
    merged = yaml.safe_load((root / "config" / "config.yaml").read_text())
    update_config(merged, yaml.safe_load((root / "config" / "paper.yaml").read_text()))
    echoflow_config.validate(merged, echoflow_config.load_schema(root / "config" / "schema.yaml"))
    experiments = echoflow_config.experiments(merged)
    assert experiments["mobilenet_v2_sampling-k40"]["sampling"] == "k40"
    assert merged["sampling"]["k40"]["frames_per_clip"] == 40
