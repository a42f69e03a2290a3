"""The names a run is written and read by: tags, run types and artifact paths, in one place."""

from __future__ import annotations

# Run types (tag RUN_TYPE)
TRAIN = "train"
SWEEP = "sweep"
ENSEMBLE = "ensemble"
REUSED = "reused"  # a sweep's pointer to an earlier FINISHED run of the same config

# Tags: what a run is and where it belongs
RUN_TYPE = "simpsons.run_type"
PARENT_RUN = "mlflow.parentRunId"
SWEEP_ID = "simpsons.sweep_id"  # unique per multirun, on the parent and each of its jobs
SWEEP_DIR = "simpsons.sweep_dir"
ENSEMBLE_SWEEP = "simpsons.sweep"  # the sweep an ensemble was drawn from ('' for the experiment)
# An ensemble's runs: its candidates are the top_n runs it chose from; its members are the candidates
# whose outputs it averages (weight > 0). With method=mean every candidate is a member.
CANDIDATES = "candidates"
MEMBERS = "members"
VAL_FILES = "simpsons.val_files"  # digest of the validation files (and data) an ensemble was scored on
REGISTERED_VERSION = "simpsons.registered_version"  # "<registered model>/<version>" of an ensemble's model
CHAMPION_DECISION = "simpsons.champion"  # what the ensemble did to the champion alias, and why
# A training run's headline metrics are its kept epoch's, named best_* (simpsons/training/recipe.py).
# Its per-epoch curves are logged under CURVE_PREFIX, Keras's names after it (epoch/val_accuracy):
# MLflow's Metrics tab shows a prefix as its own section, and every prefixed section before the
# unprefixed ones, so the curves come first and the one-value headline metrics below them.
KEPT_VAL_ACCURACY = "best_val_accuracy"
EPOCH_CURVES = ("loss", "accuracy", "val_loss", "val_accuracy")  # Keras's names; best_<name>: the kept epoch's
CURVE_PREFIX = "epoch/"


def curve(name: str) -> str:
    """The logged name of Keras's per-epoch `name`: epoch/val_loss for val_loss."""
    return f"{CURVE_PREFIX}{name}"


def kept(curve: str) -> str:
    """The name of a curve's value at the kept epoch: best_val_loss for val_loss."""
    return f"best_{curve}"


SCORE = "simpsons.score"  # on a registered version: what it is judged by, e.g. best_val_accuracy=0.9375
# On a registered version: what its model was trained and scored on (with DATA_FINGERPRINT, CLASS_NAMES and
# VAL_FILES): a registered model holds models of one class list (simpsons/ensembling/registry.py).
DATA_NAME = "data.name"
VAL_FILES_COUNT = "simpsons.val_files_count"
CONFIG_HASH = "simpsons.config_hash"  # resolved training config + data fingerprint + code version
CODE_VERSION = "simpsons.code_version"
REUSED_RUN = "simpsons.reused_run_id"
RESUMED_AT_EPOCH = "simpsons.resumed_at_epoch"
SWEPT_KEYS = "simpsons.swept_keys"  # on a sweep's parent: JSON list of the keys with several values, in sweep order
# A search (hydra/sweeper=optuna, simpsons/trials.py): each trial's run, and its sweep's parent.
TRIAL = "simpsons.trial"  # the trial's number in its study
STUDY = "simpsons.study"  # the study's name (on trial runs and the parent)
STUDY_STORAGE = "simpsons.study_storage"  # on the parent: the study's database (no password)
PRUNED = "simpsons.pruned"  # a run its trial's pruner stopped: the last epoch it trained
BEST_TRIAL = "simpsons.best_trial"  # on the parent: the study's best trial: its number, value, run and params
BEST_RUN = "simpsons.best_run_id"  # on a sweep's parent: the run holding its best job's model
KEEP_MODELS = "simpsons.keep_models"  # on a sweep's parent: its keep_models, which its end applies
# On a training run (and its logged model) whose model files were deleted (keep_models, simpsons-gc): why.
MODEL_DELETED = "simpsons.model_deleted"
REPRODUCES = "simpsons.reproduces"  # on a run of simpsons-reproduce: the run it trained again
NOTE = "mlflow.note.content"  # a run's description in the MLflow UI (Markdown)

# Tags: provenance
GIT_COMMIT = "git.commit"
GIT_DIRTY = "git.dirty"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
HYDRA_OVERRIDES = "hydra.overrides"
DATA_FINGERPRINT = "data.fingerprint"
CLASS_NAMES = "class_names"
DETERMINISTIC = "deterministic"
FEATURE_CACHE = "feature_cache"
PHASES = "phases"
XLA = "xla"
GPU = "gpu"  # which GPU the run's process used, and its memory growth (simpsons.training.runtime.configure_gpus)

# Tags: liveness (which process owns a RUNNING run, and when it last showed life)
HOST = "simpsons.host"
PID = "simpsons.pid"
PROCESS_START = "simpsons.process_start"  # psutil create_time: a reused pid is another process
SLURM_JOB_ID = "simpsons.slurm_job_id"
SLURM_ARRAY = "simpsons.slurm_array"  # a sweep's Slurm job array: its jobs run on without their driver
HEARTBEAT = "simpsons.heartbeat"  # Unix time of the last sign of life
HEARTBEAT_SECONDS = "simpsons.heartbeat_seconds"  # how often it beats
ENDED_BY = "simpsons.ended_by"  # why a command other than the run's own ended it
ERROR = "error"

# Dataset inputs (mlflow.log_input): one per split, named "<data.name>/<context>"
DATASET_CONTEXTS = {"train": "train", "val": "validation", "test": "test"}  # split -> MLflow input context

# Artifacts
CONFIG_YAML = "config.yaml"
HYDRA_FILES = "hydra"
MULTIRUN_YAML = "multirun.yaml"
GIT_DIFF = "git_diff.patch"
CLASS_NAMES_JSON = "class_names.json"
# A training run's wall seconds per step and its feature extraction's cost: an artifact, not metrics,
# which the UI's Metrics tab showed as one-bar charts above the learning curves.
TIMINGS_JSON = "timings.json"  # {"seconds": {step: s}, "feature_extraction_seconds": s, ...}
CLASS_WEIGHTS_JSON = "class_weights.json"  # class_weight=balanced: class name -> weight of its examples' loss
ERROR_TXT = "error.txt"
SKIPPED_FILES = "data/skipped_files.tsv"
DROPPED_CLASSES = "data/dropped_classes.json"
UNKNOWN_TEST_CLASSES = "data/unknown_test_classes.json"
CANDIDATES_JSON = "candidates.json"  # each candidate's run, weight (0: not a member) and accuracies
MEMBERS_JSON = "members.json"  # each member's run name, link, weight and metrics
MEMBERS_CSV = "members.csv"  # the same, as a table
MEMBERS_CHART = "evaluation/members_vs_ensemble.png"
MODEL = "model"

# Model Registry
CHAMPION = "champion"  # the alias of the best registered version on the same validation files


def predictions_csv(split: str) -> str:
    return f"predictions/{split}.csv"


def report_txt(split: str) -> str:
    return f"evaluation/{split}_report.txt"


def confusion_matrix_png(split: str) -> str:
    return f"evaluation/{split}_confusion_matrix.png"
