# Configuration checks and input functions shared by the rules.

import hashlib
import os

import pandas as pd
from snakemake.exceptions import WorkflowError

import echoflow.config as echoflow_config
from echoflow.codeversion import code_digest

try:
    echoflow_config.validate(config, echoflow_config.load_schema(workflow.source_path("../config/schema.yaml")))
    EXPERIMENTS = echoflow_config.experiments(config)
except echoflow_config.ConfigError as error:
    raise WorkflowError(f"Invalid configuration. {error}") from None

RAW_DIR = echoflow_config.raw_dir(config)
DEMO_STAMP = "resources/demo/raw.sha256"


wildcard_constraints:
    video_id=r"[A-Za-z0-9._-]+",
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    sampling=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    split=r"train|val|test",


def package_code(script):
    """Return the digest of the echoflow modules that workflow/scripts/<script> runs.

    Every rule passes it as its ``code`` param, so a change in those modules reruns the rule, as an edit of
    the script itself does (Snakemake's code trigger sees only the script).
    """
    return code_digest(workflow.source_path(f"../workflow/scripts/{script}"))


def raw_tree_inputs(wildcards):
    """Return the demo tree's checksum list when the demo tree is used; a user's tree is tracked by params."""
    return {"demo": DEMO_STAMP} if config["raw_dir"] == "demo" else {}


def raw_tree_fingerprint():
    """Return a SHA-256 digest of the path, size and modification time of every file in a user's raw tree.

    Passed as params, so adding, removing or editing a file reruns the manifest; a digest keeps Snakemake's
    rerun reason short on trees with thousands of files. The demo tree is tracked by its checksum list
    instead, because it does not exist yet when a fresh clone is first planned.
    """
    if config["raw_dir"] == "demo" or not os.path.isdir(RAW_DIR):
        return ""
    digest = hashlib.sha256()
    for folder, _, names in sorted(os.walk(RAW_DIR)):
        for name in sorted(names):
            path = os.path.join(folder, name)
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, RAW_DIR)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


_MANIFEST_CACHE = {}


def manifest_table():
    """Read the manifest written by the manifest checkpoint; return a copy that callers may change.

    Input functions call this once or more per job, so the parsed table is kept for as long as the file's
    modification time and size stay the same (a rerun of the manifest within one invocation changes them).
    """
    path = checkpoints.manifest.get().output.manifest
    status = os.stat(path)
    key = (path, status.st_mtime_ns, status.st_size)
    if key not in _MANIFEST_CACHE:
        _MANIFEST_CACHE.clear()
        _MANIFEST_CACHE[key] = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return _MANIFEST_CACHE[key].copy()


def ok_video_ids():
    """Return the ids of the videos whose status is ok, in manifest order."""
    table = manifest_table()
    return table.loc[table["status"] == "ok", "video_id"].tolist()


def manifest_row(video_id):
    table = manifest_table()
    rows = table[table["video_id"] == video_id]
    if rows.empty:
        raise WorkflowError(f"video_id {video_id!r} is not in results/manifest.tsv; see the manifest for valid ids.")
    return rows.iloc[0]


def video_path(wildcards):
    return manifest_row(wildcards.video_id)["video"]


def annotation_path(wildcards):
    return manifest_row(wildcards.video_id)["annotation"]


# Split and segment sets.

from echoflow.split import assign_splits, participant_classes

SPLIT_NAMES = ["train", "val", "test"]


def manifest_ready(wildcards):
    """Make a rule wait for the manifest checkpoint without depending on the manifest file's time."""
    checkpoints.manifest.get()
    return []


def split_participants(wildcards):
    """Map each participant with an ok video to whether any of its videos has 4CV."""
    return participant_classes(manifest_table())


def split_settings():
    """Return the split section of the config with defaults filled in."""
    return {
        "seed": config["split"].get("seed", 0),
        "fractions": config["split"].get("fractions", {"train": 0.70, "val": 0.15, "test": 0.15}),
        "folds": config["split"].get("folds", 0),
    }


def split_assignment():
    """Compute the table that the split rule writes to results/splits.tsv, from the same params.

    The segment sets use it to list only the videos of their own split as input. A checkpoint would do the
    same, but Snakemake 9 then leaves the segment jobs unresolved when the manifest reruns and the split does
    not, so they would miss changed labels.
    """
    settings = split_settings()
    return assign_splits(participant_classes(manifest_table()), settings["fractions"], settings["seed"],
                         settings["folds"])


def split_video_participants(wildcards):
    """Map each ok video of the participants in the wildcard's split to its participant."""
    table = split_assignment()
    members = set(table.loc[table["split"] == wildcards.split, "participant"])
    manifest = manifest_table()
    manifest = manifest[(manifest["status"] == "ok") & manifest["participant"].isin(members)]
    return dict(zip(manifest["video_id"], manifest["participant"]))


def segment_inputs(wildcards):
    """Return the split table, and the frame stores, label and interval tables of the wildcard's split."""
    video_ids = list(split_video_participants(wildcards))
    return {
        "frames": [f"results/frames/{video_id}.h5" for video_id in video_ids],
        "labels": [f"results/labels/{video_id}.tsv" for video_id in video_ids],
        "intervals": [f"results/labels/{video_id}.intervals.tsv" for video_id in video_ids],
        "splits": "results/splits.tsv",
    }


def sampling_settings(wildcards):
    """Return the config block of the sampling named by the wildcard."""
    if wildcards.sampling not in config["sampling"]:
        raise WorkflowError(
            f"sampling {wildcards.sampling!r} is not defined under 'sampling' in the config; defined: "
            f"{', '.join(sorted(config['sampling']))}. Request results/segments/<one of these>/... instead.")
    return config["sampling"][wildcards.sampling]


def experiment_sampling(experiment):
    """Return the name of the sampling an experiment trains on."""
    return EXPERIMENTS[experiment].get("sampling", "default")


def used_samplings():
    """Return the samplings that some experiment names, sorted; only these are built."""
    return sorted({experiment_sampling(name) for name in EXPERIMENTS})


def segment_sets(wildcards=None):
    """List the segment set files that downstream rules need.

    With an ``experiment`` wildcard, return {"train", "val", "test"} -> results/segments/<sampling>/<split>.h5
    for that experiment's sampling (use with unpack()); otherwise list the files of every used sampling.
    """
    if wildcards is not None and "experiment" in wildcards.keys():
        sampling = experiment_sampling(wildcards.experiment)
        return {split: f"results/segments/{sampling}/{split}.h5" for split in SPLIT_NAMES}
    return [f"results/segments/{sampling}/{split}.h5" for sampling in used_samplings() for split in SPLIT_NAMES]


def segment_summaries(wildcards=None):
    """List results/segments/<sampling>/summary.tsv of every used sampling."""
    return [f"results/segments/{sampling}/summary.tsv" for sampling in used_samplings()]


# Evaluation and report.


def evaluation_config():
    """Return the evaluation section with the defaults of config/config.yaml filled in."""
    section = dict(config.get("evaluation") or {})
    timeline = {"smooth_s": 1.0, "threshold": 0.5, "min_interval_s": 1.0, "min_iou": 0.3}
    timeline.update(section.get("timeline") or {})
    defaults = {"seed": 0, "bootstrap": 1000, "latency_repeats": 200, "latency_threads": 1, "select_metric": "val_loss"}
    return {**defaults, **section, "timeline": timeline}


EVALUATION = evaluation_config()


def ok_frame_stores(wildcards):
    """Return the frame store of every ok video; the scripts pick the test videos after the split."""
    return [f"results/frames/{video_id}.h5" for video_id in ok_video_ids()]


def timeline_inputs(wildcards):
    """Return the checkpoint and its ONNX export, the manifest, the split table, and the frame stores and labels
    of every ok video."""
    video_ids = ok_video_ids()
    return {
        "model": f"results/models/{wildcards.experiment}/model.pt",
        "onnx": f"results/export/{wildcards.experiment}/model.onnx",
        "manifest": "results/manifest.tsv",
        "splits": "results/splits.tsv",
        "frames": [f"results/frames/{video_id}.h5" for video_id in video_ids],
        "labels": [f"results/labels/{video_id}.tsv" for video_id in video_ids],
        "intervals": [f"results/labels/{video_id}.intervals.tsv" for video_id in video_ids],
    }


def report_inputs(wildcards):
    """Return every file the report reads, grouped as the report script expects."""
    samplings = used_samplings()
    return {
        "manifest": "results/manifest.tsv",
        "ignored": "results/qc/ignored_files.tsv",
        "annotations": "results/qc/annotations.tsv",
        "videos": "results/qc/videos.tsv",
        "splits": "results/splits.tsv",
        "summaries": [f"results/segments/{sampling}/summary.tsv" for sampling in samplings],
        "samples": [f"results/segments/{sampling}/train.h5" for sampling in samplings],
        "metrics": expand("results/eval/{experiment}/metrics.json", experiment=EXPERIMENTS),
        "predictions": expand("results/eval/{experiment}/predictions.tsv", experiment=EXPERIMENTS),
        "histories": expand("results/models/{experiment}/history.tsv", experiment=EXPERIMENTS),
        "timelines": expand("results/eval/{experiment}/timelines.tsv", experiment=EXPERIMENTS),
        "traces": expand("results/eval/{experiment}/timelines.npz", experiment=EXPERIMENTS),
        "selection": "results/best_model/selection.tsv",
        "best_readme": "results/best_model/README.txt",
    }


# Training

import echoflow.training_settings as echoflow_training


def train_inputs(wildcards):
    """Return the train and val segment sets of the experiment's sampling."""
    if wildcards.experiment not in EXPERIMENTS:
        raise WorkflowError(
            f"Experiment {wildcards.experiment!r} is not defined; defined experiments: {', '.join(EXPERIMENTS)}. "
            "Add it under 'experiments' or 'sweep' in the config.")
    sampling = experiment_sampling(wildcards.experiment)
    return {split: f"results/segments/{sampling}/{split}.h5" for split in ("train", "val")}


def train_settings(wildcards):
    """Return the experiment's settings with defaults filled in; a change reruns only this experiment."""
    return echoflow_training.resolve_settings(EXPERIMENTS[wildcards.experiment])
