"""Render results/eval_report.html: one self-contained HTML file with tables and inline PNG figures."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import h5py
import jinja2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from echoflow import __version__
from echoflow.timeline import read_traces

log = logging.getLogger("echoflow.report")

# echoflow's own version has a row of its own in the provenance table.
PACKAGES = ("snakemake", "torch", "onnx", "onnxruntime", "numpy", "pandas", "scikit-learn", "h5py",
            "opencv-python-headless", "av", "isal", "matplotlib", "jinja2")
CLASS_NAMES = ("background", "4CV")
DPI = 80


@dataclass
class ExperimentFiles:
    """Evaluation outputs of one experiment."""

    metrics: Path
    predictions: Path
    history: Path
    timelines: Path
    traces: Path


@dataclass
class ReportInputs:
    """Every file the report reads."""

    manifest: Path
    ignored: Path
    annotations: Path
    videos: Path | None
    splits: Path
    summaries: dict[str, Path]
    sample_sets: dict[str, Path]
    experiments: dict[str, ExperimentFiles]
    selection: Path
    best_readme: Path
    config: dict = field(default_factory=dict)
    # Folder inside the workflow's source tree, whose git commit the provenance section names.
    source_dir: Path | None = None


# Figures ---------------------------------------------------------------------------------------------------------


def figure_data_uri(figure: Figure) -> str:
    """Render a matplotlib figure as a base64 PNG data URI."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def read_sample_clips(path: Path, per_class: int) -> dict[str, list[dict]]:
    """Read the first ``per_class`` clips of each class from a segment set, with their provenance."""
    samples: dict[str, list[dict]] = {name: [] for name in CLASS_NAMES}
    with h5py.File(path, "r") as store:
        labels = store["labels"][()]
        for label, name in enumerate(CLASS_NAMES):
            for index in np.flatnonzero(labels == label)[:per_class]:
                video_id = store["video_id"][index]
                samples[name].append({
                    "clip": store["clips"][index],
                    "video_id": video_id.decode() if isinstance(video_id, bytes) else str(video_id),
                    "start_frame": int(store["start_frame"][index]) if "start_frame" in store else -1,
                })
    return samples


def montage_figure(samples: dict[str, list[dict]]) -> Figure | None:
    """Lay out clips as rows of their K frames, grouped by class, in the model's input intensity scale."""
    rows = [(name, sample) for name in CLASS_NAMES for sample in samples[name]]
    if not rows:
        return None
    frames_per_clip = rows[0][1]["clip"].shape[0]
    figure = Figure(figsize=(1.3 * frames_per_clip + 0.3, 1.35 * len(rows)))
    axes = figure.subplots(len(rows), frames_per_clip, squeeze=False)
    for row, (name, sample) in enumerate(rows):
        for column in range(frames_per_clip):
            axis = axes[row, column]
            axis.imshow(sample["clip"][column], cmap="gray", vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(f"{name}\n{sample['video_id']}\nframe {sample['start_frame']}", fontsize=6)
            if row == 0:
                axis.set_title(f"frame {column + 1}", fontsize=7)
    figure.subplots_adjust(wspace=0.05, hspace=0.15)
    return figure


def training_figure(histories: dict[str, pd.DataFrame]) -> Figure:
    """Plot loss and accuracy per epoch of every experiment, training dashed and validation solid."""
    figure = Figure(figsize=(9, 3))
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    for index, (name, history) in enumerate(histories.items()):
        color = f"C{index % 10}"
        loss_axis.plot(history["epoch"], history["train_loss"], "--", color=color)
        loss_axis.plot(history["epoch"], history["val_loss"], "-", color=color, label=name)
        accuracy_axis.plot(history["epoch"], history["train_accuracy"], "--", color=color)
        accuracy_axis.plot(history["epoch"], history["val_accuracy"], "-", color=color, label=name)
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss (dashed: training, solid: validation)")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.title.set_fontsize(9)
        axis.grid(alpha=0.3)
    accuracy_axis.legend(fontsize=7)
    return figure


def confusion_figure(matrix: list[list[int]], title: str) -> Figure:
    """Draw a 2x2 confusion matrix with counts; rows are true classes, columns predicted classes."""
    values = np.asarray(matrix)
    figure = Figure(figsize=(2.8, 2.5))
    axis = figure.subplots()
    axis.imshow(values, cmap="Blues", vmin=0, vmax=max(1, values.max()))
    for (row, column), count in np.ndenumerate(values):
        color = "white" if count > values.max() / 2 else "black"
        axis.text(column, row, str(count), ha="center", va="center", color=color, fontsize=10)
    axis.set_xticks([0, 1], CLASS_NAMES, fontsize=8)
    axis.set_yticks([0, 1], CLASS_NAMES, fontsize=8)
    axis.set_xlabel("predicted", fontsize=8)
    axis.set_ylabel("true", fontsize=8)
    axis.set_title(title, fontsize=9)
    return figure


def roc_figure(predictions: dict[str, pd.DataFrame]) -> Figure | None:
    """Plot the test ROC curve of every experiment whose test split has both classes."""
    figure = Figure(figsize=(4.2, 4))
    axis = figure.subplots()
    drawn = 0
    for index, (name, table) in enumerate(predictions.items()):
        if table["label"].nunique() < 2:
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(table["label"], table["probability"])
        axis.plot(false_positive_rate, true_positive_rate, color=f"C{index % 10}", label=name)
        drawn += 1
    if not drawn:
        return None
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    axis.set_title("ROC on the test clips", fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
    return figure


def timeline_figure(trace: dict[str, np.ndarray], threshold: float, title: str) -> Figure:
    """Plot per-frame and smoothed 4CV probability with the threshold, and annotated vs predicted intervals."""
    figure = Figure(figsize=(9, 2.4))
    probability_axis, interval_axis = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    time_s = trace["time_s"]
    probability_axis.plot(time_s, trace["probability"], color="0.65", linewidth=0.6, label="per frame")
    probability_axis.plot(time_s, trace["smoothed"], color="C0", linewidth=1.2, label="smoothed")
    probability_axis.axhline(threshold, color="C3", linestyle="--", linewidth=0.8, label="threshold")
    probability_axis.set(ylim=(-0.02, 1.02), ylabel="P(4CV)")
    probability_axis.set_title(title, fontsize=9)
    probability_axis.legend(fontsize=6, loc="upper right", ncol=3)
    for row, (key, color) in enumerate((("annotated", "C2"), ("predicted", "C0"))):
        spans = [(start, end - start) for start, end in trace.get(key, np.empty((0, 2)))]
        interval_axis.broken_barh(spans, (1 - row - 0.4, 0.8), facecolors=color)
    interval_axis.set_yticks([1, 0], ["annotated", "predicted"], fontsize=7)
    interval_axis.set(ylim=(-0.6, 1.6), xlabel="time (s)")
    if time_s.size:
        interval_axis.set_xlim(time_s[0], time_s[-1])
    return figure


# Tables ----------------------------------------------------------------------------------------------------------


def read_table(path: Path | None) -> pd.DataFrame:
    """Read a TSV with every value kept as text, or return an empty table when there is no file."""
    if path is None or not Path(path).exists():
        return pd.DataFrame()
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def table_rows(table: pd.DataFrame) -> dict:
    """Convert a table for the template: {"columns": [...], "rows": [[...], ...]}."""
    return {"columns": [str(column) for column in table.columns], "rows": table.astype(str).values.tolist()}


def dataset_summary(inputs: ReportInputs) -> dict:
    """Count participants, videos and annotated seconds, and list exclusions and ignored files."""
    manifest = read_table(inputs.manifest)
    ok = manifest[manifest["status"] == "ok"] if not manifest.empty else manifest
    annotated_s = pd.to_numeric(ok.get("annotated_s", pd.Series(dtype=str)), errors="coerce").fillna(0).sum()
    exclusions = manifest[manifest["status"] != "ok"][["video_id", "participant", "status", "reason"]] \
        if not manifest.empty else manifest
    videos = read_table(inputs.videos)
    decode_exclusions = videos[videos["status"] != "ok"] if "status" in videos.columns else videos.iloc[0:0]
    if "stage" in decode_exclusions.columns:
        # Videos excluded by discovery are listed with the manifest's exclusions already.
        decode_exclusions = decode_exclusions[decode_exclusions["stage"] != "manifest"]
    decode_exclusions = decode_exclusions[[c for c in ("video_id", "status", "reason", "stage", "video")
                                           if c in decode_exclusions.columns]]
    splits = read_table(inputs.splits)
    participants_per_split = (splits.groupby("split")["participant"].apply(lambda p: ", ".join(sorted(p)))
                              .reindex(["train", "val", "test"]).fillna("").reset_index()) if not splits.empty else splits
    return {
        "participants": int(manifest["participant"].nunique()) if not manifest.empty else 0,
        "videos_total": int(len(manifest)),
        "videos_ok": int(len(ok)),
        "videos_excluded": int(len(manifest) - len(ok)),
        "annotated_s": float(annotated_s),
        "annotated_segments": int(len(read_table(inputs.annotations))),
        "exclusions": table_rows(exclusions),
        "decode_exclusions": table_rows(decode_exclusions),
        "ignored": table_rows(read_table(inputs.ignored)),
        "splits": table_rows(participants_per_split),
    }


def _ci(metrics: dict, key: str) -> list[float] | None:
    return (metrics.get("ci95") or {}).get(key)


def model_rows(metrics: dict[str, dict], timelines: dict[str, pd.DataFrame], selection: pd.DataFrame,
               best: str | None) -> list[dict]:
    """Collect one row per experiment for the model table."""
    select_column = next((column for column in ("val_loss", "val_accuracy") if column in selection.columns), None)
    rows = []
    for name, result in metrics.items():
        latency = result.get("latency") or {}
        stream = latency.get("sliding_window") or {}
        table = timelines.get(name, pd.DataFrame())
        iou = pd.to_numeric(table.get("iou", pd.Series(dtype=float)), errors="coerce").dropna()
        validation = None
        if select_column is not None:
            match = selection.loc[selection["experiment"] == name, select_column]
            validation = float(match.iloc[0]) if not match.empty else None
        rows.append({
            "name": name,
            "best": name == best,
            "arch": (result.get("checkpoint") or {}).get("arch", ""),
            "parameters": latency.get("parameters"),
            "checkpoint_mb": (latency.get("checkpoint_bytes") or 0) / 1e6,
            "latency_ms": result.get("latency_ms"),
            "latency_p95_ms": latency.get("p95_ms"),
            "runtime": latency.get("runtime", ""),
            "threads": latency.get("threads"),
            "realtime_factor": stream.get("realtime_factor"),
            "validation": validation,
            "accuracy": result.get("accuracy"), "accuracy_ci": _ci(result, "accuracy"),
            "balanced_accuracy": result.get("balanced_accuracy"),
            "balanced_accuracy_ci": _ci(result, "balanced_accuracy"),
            "f1": result.get("f1"), "f1_ci": _ci(result, "f1"),
            "macro_f1": (result.get("macro") or {}).get("f1"), "macro_f1_ci": _ci(result, "macro_f1"),
            "roc_auc": result.get("roc_auc"), "roc_auc_ci": _ci(result, "roc_auc"),
            "pr_auc": result.get("pr_auc"), "pr_auc_ci": _ci(result, "pr_auc"),
            "timeline_iou": float(iou.mean()) if len(iou) else None,
            "n_clips": result.get("n_clips"),
            "runtimes": latency.get("runtimes", {}),
            "load_average": latency.get("load_average_1min"),
        })
    return rows


def grouped_notes(metrics: dict[str, dict]) -> list[dict]:
    """Return each distinct metrics note once, with the experiments it applies to."""
    experiments_by_note: dict[str, list[str]] = {}
    for name, result in metrics.items():
        for note in result.get("notes", []):
            experiments_by_note.setdefault(note, []).append(name)
    return [{"note": note, "experiments": names} for note, names in experiments_by_note.items()]


# Provenance ------------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    """Return the hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(folder: Path) -> str | None:
    """Return the commit checked out in ``folder`` (with "+dirty" for local changes), or None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if status else "")


def package_versions() -> dict[str, str]:
    """Return the installed version of each package in PACKAGES ("not installed" when missing)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def input_checksums(paths: list[Path]) -> list[dict]:
    """Return path, size and SHA-256 of each input file."""
    return [{"path": str(path), "bytes": Path(path).stat().st_size, "sha256": sha256(Path(path))} for path in paths]


def all_input_paths(inputs: ReportInputs) -> list[Path]:
    """List every file the report reads, in a stable order."""
    paths = [inputs.manifest, inputs.ignored, inputs.annotations, inputs.splits, inputs.selection, inputs.best_readme]
    if inputs.videos is not None:
        paths.append(inputs.videos)
    paths += [inputs.summaries[name] for name in sorted(inputs.summaries)]
    paths += [inputs.sample_sets[name] for name in sorted(inputs.sample_sets)]
    for files in inputs.experiments.values():
        paths += [files.metrics, files.predictions, files.history, files.timelines, files.traces]
    return [Path(path) for path in paths]


# Assembly --------------------------------------------------------------------------------------------------------


def _format_number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _format_interval(interval, digits: int = 3) -> str:
    if not interval:
        return ""
    return f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def template_environment() -> jinja2.Environment:
    """Create the Jinja2 environment of echoflow/templates with HTML autoescaping on."""
    environment = jinja2.Environment(loader=jinja2.PackageLoader("echoflow", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)
    environment.filters["num"] = _format_number
    environment.filters["ci"] = _format_interval
    return environment


def build_context(inputs: ReportInputs, clips_per_class: int = 3) -> dict:
    """Read every input and draw every figure the template shows."""
    metrics = {name: json.loads(Path(files.metrics).read_text(encoding="utf-8"))
               for name, files in inputs.experiments.items()}
    predictions = {name: pd.read_csv(files.predictions, sep="\t") for name, files in inputs.experiments.items()}
    histories = {name: pd.read_csv(files.history, sep="\t") for name, files in inputs.experiments.items()}
    timelines = {name: pd.read_csv(files.timelines, sep="\t") for name, files in inputs.experiments.items()}
    selection = pd.read_csv(inputs.selection, sep="\t")
    best_rows = selection[selection["selected"].astype(str) == "True"]
    best = str(best_rows["experiment"].iloc[0]) if not best_rows.empty else None

    samples = []
    for sampling, path in sorted(inputs.sample_sets.items()):
        figure = montage_figure(read_sample_clips(Path(path), clips_per_class))
        samples.append({"sampling": sampling, "source": str(path),
                        "image": figure_data_uri(figure) if figure is not None else None})
    class_counts = [{"sampling": sampling, "table": table_rows(read_table(path))}
                    for sampling, path in sorted(inputs.summaries.items())]

    confusion = [{"name": name, "image": figure_data_uri(confusion_figure(result["confusion_matrix"]["matrix"], name))}
                 for name, result in metrics.items()]
    roc = roc_figure(predictions)

    timeline_sections = []
    for name, files in inputs.experiments.items():
        traces = read_traces(files.traces)
        videos = []
        for row in timelines[name].itertuples():
            trace = traces.get(str(row.video_id))
            image = figure_data_uri(timeline_figure(trace, float(row.threshold), f"{name}: {row.video_id}")) \
                if trace is not None else None
            videos.append({"video_id": row.video_id, "video": row.video, "image": image,
                           "iou": row.iou, "precision": row.detection_precision, "recall": row.detection_recall,
                           "onset_delay_s": row.onset_delay_s, "n_predicted": row.n_predicted,
                           "n_annotated": row.n_annotated, "frames_per_s": row.frames_per_s})
        timeline_sections.append({"name": name, "videos": videos})

    return {
        "title": "echoflow evaluation report",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dataset": dataset_summary(inputs),
        "class_counts": class_counts,
        "samples": samples,
        "best": best,
        "select_metric": next((c for c in ("val_loss", "val_accuracy") if c in selection.columns), ""),
        "models": model_rows(metrics, timelines, selection, best),
        "notes": grouped_notes(metrics),
        "training_image": figure_data_uri(training_figure(histories)),
        "confusion": confusion,
        "roc_image": figure_data_uri(roc) if roc is not None else None,
        "timelines": timeline_sections,
        "provenance": {
            "echoflow_version": __version__,
            "git_commit": git_commit(inputs.source_dir or Path.cwd()),
            "packages": package_versions(),
            "config": json.dumps(inputs.config, indent=2, sort_keys=False, default=str),
            "inputs": input_checksums(all_input_paths(inputs)),
        },
    }


def render(context: dict) -> str:
    """Render the report template with ``context``."""
    return template_environment().get_template("report.html.j2").render(**context)


def write_report(inputs: ReportInputs, output: str | Path) -> None:
    """Build the context, render the HTML and write it atomically to ``output``."""
    from echoflow.atomic import write_text

    html = render(build_context(inputs))
    write_text(output, html)
    log.info("wrote %s (%.0f kB)", output, len(html) / 1000)
