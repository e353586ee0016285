"""Score one experiment on the test split: metrics.json (with the latency block) and predictions.tsv."""

import json
import os

import torch

from echoflow.atomic import atomic_output, write_text
from echoflow.checkpoint import load_model
from echoflow.logs import log_to_file
from echoflow.metrics import evaluate_segments

log = log_to_file(snakemake.log[0])
torch.set_num_threads(max(1, min(snakemake.threads, os.cpu_count() or 1)))
model, checkpoint = load_model(snakemake.input.model)


def forward(batch):
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


metrics, predictions = evaluate_segments(forward, snakemake.input.test, resamples=snakemake.params.bootstrap,
                                         seed=snakemake.params.seed)
latency = json.loads(open(snakemake.input.latency, encoding="utf-8").read())
result = {"experiment": snakemake.wildcards.experiment, "split": "test", "segments": snakemake.input.test,
          "accuracy": metrics.pop("accuracy"), "f1": metrics.pop("f1"), "roc_auc": metrics.pop("roc_auc"),
          "latency_ms": latency["median_ms"], **metrics, "latency": latency,
          "checkpoint": {"arch": checkpoint["arch"], "arch_args": checkpoint["arch_args"],
                         "best_epoch": checkpoint["best_epoch"], "val_metrics": checkpoint["val_metrics"]}}
with atomic_output(snakemake.output.predictions) as temporary:
    predictions.to_csv(temporary, sep="\t", index=False, float_format="%.6g")
write_text(snakemake.output.metrics, json.dumps(result, indent=2, allow_nan=False) + "\n")
log.info("accuracy %s, 4CV F1 %s, ROC-AUC %s on %d clips", result["accuracy"], result["f1"], result["roc_auc"],
         result["n_clips"])
for note in result["notes"]:
    log.warning(note)
