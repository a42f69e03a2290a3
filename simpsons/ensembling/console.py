"""What `python -m simpsons.ensemble` prints: the candidates table, the run, and how to use its model."""

from __future__ import annotations

from dataclasses import dataclass

from simpsons.commands import command

DECIMALS = 4
NAME_WIDTH = 48  # run names can be long (the swept keys); the id tells them apart anyway


@dataclass(frozen=True)
class Row:
    label: str  # `backbone (run id)`, or `ensemble (method)`
    name: str  # the run's name
    weight: float  # 0: a candidate that is no member
    accuracies: dict[str, float]  # split -> accuracy


def table(rows: list[Row]) -> str:
    """A fixed-width table, values rounded to 4 decimals; a row per candidate, the ensemble last."""
    splits = list(rows[0].accuracies)
    headers = ["run", "name", "weight", *(f"{split}_accuracy" for split in splits)]
    cells = [
        [
            row.label,
            _shorten(row.name),
            f"{row.weight:.{DECIMALS}f}",
            *(f"{row.accuracies[split]:.{DECIMALS}f}" for split in splits),
        ]
        for row in rows
    ]
    widths = [max(len(header), *(len(line[i]) for line in cells)) for i, header in enumerate(headers)]

    def line(values: list[str]) -> str:
        text = [v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "  ".join(text).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _shorten(name: str) -> str:
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"


def calibration(temperature: float | None, ece: dict[str, float], ece_calibrated: dict[str, float]) -> str:
    """The ensemble's temperature, if any, and its expected calibration error (ECE) per split, before and after."""
    if temperature is None:
        errors = ", ".join(f"{split} {value:.{DECIMALS}f}" for split, value in ece.items())
        return f"not calibrated (calibrate=false); ECE {errors}"
    errors = ", ".join(
        f"{split} {value:.{DECIMALS}f} -> {ece_calibrated[split]:.{DECIMALS}f}" for split, value in ece.items()
    )
    return f"temperature {temperature:.{DECIMALS}f}, fitted on validation; ECE {errors}"


def next_steps(
    run_id: str,
    run_name: str,
    model_uri: str,
    serve_uri: str,
    registered: str | None,
    tracking_uri: str | None,
    calibrated: str | None = None,
    report: str = "",
) -> str:
    """The run id and model URI, its calibration, what happened in the registry, and the commands that
    use the model and report it, with the interpreter (or console script) this command ran with.

    `tracking_uri`: the store to name in the commands, or None for the one they find by default.
    `calibrated`: the calibration() line, if any. `report`: report's flags for the ensemble's
    sweep or experiment (the store's is added).
    """
    store_flag = f" --tracking-uri {tracking_uri}" if tracking_uri else ""
    store_variable = f"MLFLOW_TRACKING_URI={tracking_uri} " if tracking_uri else ""
    lines = [
        ("ensemble run", f"{run_id} ({run_name})"),
        ("model", model_uri),
        *([("calibration", calibrated)] if calibrated else []),
        ("registry", registered or "not registered (register=false)"),
        ("predict", f"{command('predict')} --run {run_id}{store_flag} photo.jpg folder/"),
        ("report", f"{command('report')}{report and ' ' + report}{store_flag}"),
        ("serve", f"{store_variable}mlflow models serve -m {serve_uri} --env-manager local -h 127.0.0.1 -p 5001"),
    ]
    width = max(len(key) for key, _ in lines)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in lines)
