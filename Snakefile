# echoflow: learn to recognise the apical four-chamber view (4CV) in echocardiography screen captures.
#
# Outputs (all under results/, built in this order):
#   manifest.tsv, qc/                         videos paired with annotations; ignored files and exclusions
#   frames/{video_id}.h5                      decoded, masked, cropped and resized grayscale frames
#   labels/{video_id}.tsv                     per-frame 4CV labels from the annotation intervals
#   splits.tsv                                participant-level train/val/test assignment
#   segments/{sampling}/{split}.h5            sampled clips with provenance, summary.tsv with class counts
#   models/{experiment}/model.pt              trained checkpoint and history.tsv
#   eval/{experiment}/                        metrics.json, predictions.tsv, timelines, via/{video_id}.json
#   best_model/                               deployable export of the experiment chosen on validation
#   eval_report.html                          self-contained report

import os

from snakemake.utils import min_version

min_version("9.0")

# HDF5 locks every file it opens, and that lock fails on many network file systems (NFS, Lustre) with
# "unable to lock file". Jobs inherit this variable, also on SLURM (sbatch --export=ALL), and a value
# exported before the run is kept. Outputs are written under a temporary name and renamed, so no job
# reads an HDF5 file while another writes it.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


# The defaults; a --configfile given on the command line is merged over them.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/manifest.smk"
include: "rules/frames.smk"
include: "rules/split.smk"
include: "rules/segments.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        "results/eval_report.html",
    default_target: True
