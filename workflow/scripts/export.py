"""Export one checkpoint to TorchScript and ONNX and verify both against the checkpoint."""

import os

import torch

from echoflow.export import export_checkpoint
from echoflow.logs import log_to_file

log = log_to_file(snakemake.log[0])
torch.set_num_threads(max(1, min(snakemake.threads, os.cpu_count() or 1)))
verification = export_checkpoint(snakemake.input.model, snakemake.output.torchscript, snakemake.output.onnx,
                                 snakemake.output.preprocess, snakemake.output.verification)
log.info("largest logit difference: %s", verification["max_abs_diff"])
