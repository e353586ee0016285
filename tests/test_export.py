"""Export: TorchScript and ONNX match the checkpoint, and the best model is chosen on validation only."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from echoflow import checkpoint, export, latency
from echoflow.models import build

PREPROCESS = {"crop": {"x": 0, "y": 0, "width": 64, "height": 48}, "mask": "auto", "size": [32, 24], "stride": 1,
              "frames_per_clip": 2, "clip_stride": 1}


def save_checkpoint(folder, name: str, val_loss: float, val_accuracy: float, seed: int = 0):
    """Write a checkpoint of an untrained squeezenet for clips of 2 frames of 24x32 pixels, and its history."""
    torch.manual_seed(seed)
    model = build("squeezenet", 2)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.save(folder / "model.pt", model, arch="squeezenet", arch_args={"frames_per_clip": 2},
                    preprocess=PREPROCESS, experiment={"model": "squeezenet"}, experiment_name=name, best_epoch=2,
                    val_metrics={"loss": val_loss, "accuracy": val_accuracy})
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.9, 0.5, 0.4], "train_accuracy": [0.5, 0.7, 0.8],
                  "val_loss": [0.8, val_loss, val_loss + 0.1], "val_accuracy": [0.5, val_accuracy, val_accuracy],
                  "learning_rate": 0.001, "seconds": 1.0}).to_csv(folder / "history.tsv", sep="\t", index=False)
    return folder / "model.pt"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    path = save_checkpoint(folder / "model", "tiny", 0.5, 0.8)
    paths = {name: folder / "out" / name for name in ("model.ts", "model.onnx", "preprocess.json", "verification.json")}
    verification = export.export_checkpoint(path, paths["model.ts"], paths["model.onnx"], paths["preprocess.json"],
                                            paths["verification.json"])
    return path, paths, verification


def test_exports_match_checkpoint(exported):
    path, paths, verification = exported
    model, _ = checkpoint.load_model(path)
    clip = torch.rand(5, 1, 2, 24, 32, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        reference = model(clip).numpy()
        scripted = torch.jit.load(str(paths["model.ts"]))(clip).numpy()
    onnx_logits = latency.onnx_runner(paths["model.onnx"], threads=1)(clip.numpy())
    assert np.allclose(scripted, reference, atol=1e-5)
    assert np.allclose(onnx_logits, reference, atol=1e-4)
    assert verification["passed"]
    assert verification["max_abs_diff"]["onnxruntime"] <= export.ATOL


def test_preprocess_json_describes_input(exported):
    path, paths, _ = exported
    description = json.loads(paths["preprocess.json"].read_text())
    assert description["input"]["shape"] == ["batch", 1, 2, 24, 32]
    assert description["clip"] == {"frames_per_clip": 2, "stride": 1, "window": description["clip"]["window"]}
    assert description["frames"]["size"] == [32, 24]
    assert description["checkpoint_sha256"] == export.sha256(path)
    assert description["output"]["class_names"] == ["background", "4CV"]


def test_verify_rejects_different_model(exported, tmp_path):
    _, paths, _ = exported
    torch.manual_seed(123)
    other = build("squeezenet", 2).eval()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.5)
    with pytest.raises(export.ExportError, match="differs from the checkpoint"):
        export.verify(other, paths["model.ts"], paths["model.onnx"], [1, 1, 2, 24, 32])


def test_latency_measures_every_runtime(exported):
    path, paths, _ = exported
    model, ckpt = checkpoint.load_model(path)
    frames = np.random.default_rng(0).integers(0, 255, size=(12, 24, 32), dtype=np.uint8)
    result = latency.measure(model, ckpt, frames, 30.0, path, paths["model.ts"], paths["model.onnx"],
                             repeats=5, threads=1, stream_frames=6)
    assert set(result["runtimes"]) == {"eager", "inference_mode", "channels_last", "torchscript", "onnxruntime"}
    assert result["median_ms"] == min(r["median_ms"] for r in result["runtimes"].values())
    assert result["runtime"] in result["runtimes"]
    assert result["parameters"] == sum(p.numel() for p in model.parameters())
    assert result["sliding_window"]["frames"] == 6
    assert result["input_shape"] == [1, 1, 2, 24, 32]


@pytest.mark.parametrize("metric, best", [("val_loss", "b"), ("val_accuracy", "c")])
def test_select_best_uses_validation(tmp_path, metric, best):
    candidates = {}
    for name, loss, accuracy in (("a", 0.6, 0.7), ("b", 0.3, 0.8), ("c", 0.4, 0.9)):
        save_checkpoint(tmp_path / name, name, loss, accuracy)
        candidates[name] = {"checkpoint": tmp_path / name / "model.pt", "history": tmp_path / name / "history.tsv"}
    chosen, table = export.select_best(candidates, metric)
    assert chosen == best
    assert table.loc[table["selected"], "experiment"].tolist() == [best]
    assert sorted(table["rank"]) == [1, 2, 3]


def test_select_best_tie_keeps_config_order(tmp_path):
    candidates = {}
    for name in ("second", "first"):
        save_checkpoint(tmp_path / name, name, 0.5, 0.5)
        candidates[name] = {"checkpoint": tmp_path / name / "model.pt", "history": tmp_path / name / "history.tsv"}
    assert export.select_best(candidates, "val_loss")[0] == "second"


def test_install_best_writes_readme(exported, tmp_path):
    _, paths, _ = exported
    table = pd.DataFrame({"experiment": ["tiny", "other"], "val_loss": [0.5, 0.7], "rank": [1, 2],
                          "selected": [True, False]})
    export.install_best("tiny", paths["model.ts"].parent, tmp_path / "best", table, "val_loss")
    readme = (tmp_path / "best" / "README.txt").read_text()
    assert "experiment tiny" in readme
    assert "val_loss = 0.5" in readme
    for name in ("model.ts", "model.onnx", "preprocess.json", "selection.tsv"):
        assert (tmp_path / "best" / name).exists()
    assert (tmp_path / "best" / "model.onnx").read_bytes() == paths["model.onnx"].read_bytes()


def test_stream_frames_skip_empty_store(tmp_path):
    import h5py

    empty, full = tmp_path / "empty.h5", tmp_path / "full.h5"
    with h5py.File(empty, "w") as store:
        store["frames"] = np.zeros((0, 4, 4), dtype=np.uint8)
        store["timestamps_ms"] = np.zeros(0)
    with h5py.File(full, "w") as store:
        store["frames"] = np.ones((10, 4, 4), dtype=np.uint8)
        store["timestamps_ms"] = np.arange(10) * 40.0
    frames, frame_rate, source = latency.read_stream_frames([empty, full], count=6)
    assert frames.shape == (6, 4, 4)
    assert frame_rate == pytest.approx(25.0)
    assert source == str(full)
    with pytest.raises(ValueError, match="frame store"):
        latency.read_stream_frames([empty], count=6)
