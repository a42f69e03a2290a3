"""`python -m simpsons.gc`: free the disk of the models no one will ensemble or serve.

    python -m simpsons.gc --keep 2 --sweep latest [--dry-run]
    python -m simpsons.gc --keep 5 --experiment simpsons-demo [--dry-run]

Ranks the training runs of a sweep (its jobs; a reused job stands for the run it reuses), or of a
whole experiment, by their monitor (best_val_accuracy; the kept epoch's val_loss for runs with
monitor=val_loss), keeps the model files of the best N that still have one, and deletes those of
the others, which keep their metrics, curves, predictions, reports and confusion matrices; each is
tagged `simpsons.model_deleted` saying why, and ensembles skip it. A run whose model is registered
keeps it. It prints one line per run and what it freed; `--dry-run` only says what it would free.
It is what `keep_models=N` does when a sweep ends.

MLflow is imported only once the arguments are parsed, so that --help answers at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from simpsons import startup
from simpsons.config import CONF_DIR, add_tracking_uri_argument
from simpsons.errors import ConfigError, SimpsonsError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from simpsons.tracking.retention import Verdict


def parser() -> argparse.ArgumentParser:
    tracking = OmegaConf.load(CONF_DIR / "tracking" / "default.yaml")  # the defaults train and report use
    result = argparse.ArgumentParser(
        prog="python -m simpsons.gc",
        description=__doc__.split("\n\nMLflow is")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="how many of the best runs keep their model files (an integer >= 1; default: the sweep's "
        "keep_models, where it set a number)",
    )
    result.add_argument(
        "--sweep", help="a sweep's parent run id, or 'latest' (the experiment's newest sweep); default: no sweep"
    )
    result.add_argument(
        "--experiment",
        default=tracking.experiment,
        help=f"the MLflow experiment (default: {tracking.experiment}); without --sweep, its training runs "
        "are ranked together",
    )
    result.add_argument("--dry-run", action="store_true", help="list what would be deleted and freed; delete nothing")
    add_tracking_uri_argument(result)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    startup.prepare_process()
    if args.keep is not None and args.keep < 1:
        print(f"error: --keep {args.keep} is invalid; expected an integer >= 1", file=sys.stderr)
        return 2
    # Imported now: --help and bad arguments answer without loading MLflow.
    from mlflow.tracking import MlflowClient

    from simpsons.tracking import reader, retention, store

    try:
        client = MlflowClient(store.configure(args.tracking_uri))
        experiment = reader.experiment_id(client, args.experiment)
        sweep = reader.resolve_sweep(client, experiment, args.sweep, "--experiment ")
        keep = _keep(client, args.keep, sweep)
    except SimpsonsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scope = f"sweep {sweep}" if sweep else f"experiment {args.experiment}"
    verdicts = retention.plan(client, reader.search(client, experiment, sweep), keep, scope)
    if not verdicts:
        print(f"error: no finished training runs in {scope}", file=sys.stderr)
        return 1
    print(table(verdicts))
    freeing = [v for v in verdicts if v.frees]
    size = retention.total_size(freeing)
    amount = retention.human_size(size) if size is not None else "an unknown size (files on a server)"
    if args.dry_run:
        print(f"would free {amount}: the models of {len(freeing)} run(s) of {scope} (--dry-run: nothing deleted)")
        return 0
    retention.apply(client, verdicts)
    print(f"freed {amount}: deleted the models of {len(freeing)} run(s) of {scope}, kept {_kept(verdicts)}")
    return 0


def _keep(client: MlflowClient, keep: int | None, sweep: str | None) -> int:
    """--keep, else the sweep's own keep_models when it set a number."""
    from simpsons.tracking import schema

    if keep is not None:
        return keep
    if sweep is not None:
        setting = client.get_run(sweep).data.tags.get(schema.KEEP_MODELS, "all")
        if setting.isdigit():
            return int(setting)
    raise ConfigError("give --keep N (an integer >= 1): how many of the best runs keep their model files")


def _kept(verdicts: list[Verdict]) -> str:
    return f"{sum(v.keep and bool(v.models) for v in verdicts)} model(s)"


def table(verdicts: list[Verdict]) -> str:
    """One line per run, best first: short id, name, score, what becomes of its model, its size."""
    from simpsons.tracking import retention

    lines = []
    for verdict in verdicts:
        run = verdict.run
        score = "-" if verdict.score is None else f"{verdict.score:.4f}"
        if verdict.keep:
            action = f"keep ({verdict.reason})" if verdict.models else f"keep: no model ({verdict.reason})"
        elif verdict.models:
            action = "delete"
        else:
            action = "model already deleted"
        size = "" if verdict.size is None or not verdict.models else retention.human_size(verdict.size)
        lines.append((run.info.run_id[:8], run.info.run_name or "", score, action, size))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:4], widths, strict=True)) + f"  {line[4]}".rstrip()
        for line in lines
    )


if __name__ == "__main__":
    sys.exit(main())
