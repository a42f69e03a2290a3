"""`python -m simpsons.predict`: classify image files or folders with a logged model.

    python -m simpsons.predict --run <training or ensemble run id> photo.jpg folder/ [--top-k 3] [--json]
    python -m simpsons.predict --model models:/simpsons@champion photo.jpg

First a header names the model used (its URI, run, kind, data and class count), then one line per
image. A path that is missing or not an image gets a one-line error; the others are still
classified. A folder in the image-folder layout (<folder>/<class>/*) whose class folders are not
the model's classes gets one warning line: the model was trained on other data. Exit status 1
when any path failed, 2 when the model cannot be found or loaded.

TensorFlow and MLflow are imported only once the arguments are parsed, so that --help answers at
once.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from simpsons import startup
from simpsons.config import add_tracking_uri_argument
from simpsons.errors import SimpsonsError
from simpsons.tracking import schema

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.pyfunc import PyFuncModel
    from mlflow.tracking import MlflowClient

SHORT_ID = 8  # the run ids report and the ensemble print; enough to find a run
KINDS = {schema.ENSEMBLE: "ensemble", schema.TRAIN: "single run"}


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]
    error: str | None = None


@dataclass(frozen=True)
class ModelHeader:
    """Which model answered: what a reader needs to trust, or reproduce, the predictions."""

    uri: str  # as given, or the run's model
    model_id: str | None  # the MLflow logged model, models:/<model_id>
    run_id: str | None  # the run that logged it
    run_name: str | None
    kind: str  # ensemble, single run, or unknown for a model no simpsons run logged
    members: int | None  # an ensemble's training runs
    class_count: int
    registered: list[str] = field(default_factory=list)  # e.g. "simpsons version 3 @champion"
    data: str | None = None  # the data.name its run was trained on, e.g. demo, simpsons

    def rows(self) -> list[tuple[str, str]]:
        uri = (
            self.uri if self.model_id is None or self.model_id in self.uri else f"{self.uri} (models:/{self.model_id})"
        )
        run = " ".join(filter(None, [self.run_id, self.run_name])) or "none (not logged by a run)"
        kind = f"ensemble of {self.members} runs" if self.kind == "ensemble" and self.members else self.kind
        found = [("model", uri), ("run", run), ("kind", kind)] + [("data", self.data)] * bool(self.data)
        found += [("classes", str(self.class_count))]
        return found + [("registered", ", ".join(self.registered))] * bool(self.registered)


def expand(paths: list[str]) -> list[tuple[Path, str | None]]:
    """Files as given and every file under a folder (sorted), each with an error if it has one."""
    files: list[tuple[Path, str | None]] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append((path, None if path.is_file() else "no such file"))
            continue
        found = sorted(p for p in path.rglob("*") if p.is_file())
        files += [(p, None) for p in found] or [(path, "a folder with no files")]
    return files


def folder_classes(paths: list[str]) -> list[str]:
    """The class names that folders in the image-folder layout stand for: the names of their
    subfolders that hold files (a folder of images alone says no class)."""
    names: set[str] = set()
    for path in map(Path, paths):
        if path.is_dir():
            names |= {sub.name for sub in path.iterdir() if sub.is_dir() and any(p.is_file() for p in sub.iterdir())}
    return sorted(names)


def classes_warning(model: ModelHeader, class_names: list[str], folders: list[str]) -> str | None:
    """One line when class folders are not among the model's classes: it was trained on other data."""
    unknown = [name for name in folders if name not in class_names]
    if not unknown:
        return None
    shown = ", ".join(unknown[:5]) + (f", ... {len(unknown) - 5} more" if len(unknown) > 5 else "")
    data = f" (trained on data '{model.data}')" if model.data else ""
    return (
        f"warning: {len(unknown)} of the {len(folders)} class folders ({shown}) are not classes of this model"
        f"{data}, whose {len(class_names)} classes are {', '.join(class_names[:5])}"
        f"{', ...' if len(class_names) > 5 else ''}: use a model trained on this data"
    )


def classify(model: PyFuncModel, class_names: list[str], path: Path, top_k: int) -> Prediction:
    import numpy as np

    from simpsons.images import read_rgb  # Pillow: the pixels tf.data's decoder gives too, on any backend

    try:
        image = read_rgb(str(path)).astype(np.float32)
    except OSError as error:
        # Pillow's decoding errors carry no errno (unknown format, truncated data); the file system's do.
        reason = "not a decodable image" if error.errno is None else f"{error.strerror} ({error.errno})"
        return Prediction(str(path), [], reason)
    except ValueError:
        return Prediction(str(path), [], "not a decodable image")
    probabilities = np.asarray(model.predict(image[None]))[0]
    best = np.argsort(-probabilities)[:top_k]
    return Prediction(str(path), [(class_names[i], float(probabilities[i])) for i in best])


def find_run(client: MlflowClient, run_id: str) -> Run:
    """A run by its id, or by the first characters of it (at least SHORT_ID), as report prints them."""
    from simpsons.tracking import reader

    return reader.find_run(client, run_id, "--run")


def load(run_id: str | None, model_uri: str | None) -> tuple[PyFuncModel, ModelHeader]:
    """The model and its header, from a run (training or ensemble) or a model URI."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from simpsons.tracking import reader

    client = MlflowClient()
    if run_id:
        model_uri = reader.model_uri(find_run(client, run_id))
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (OSError, mlflow.exceptions.MlflowException) as error:
        raise SimpsonsError(f"--model {model_uri!r} cannot be loaded: {str(error).splitlines()[0]}") from error
    class_names = (model.metadata.metadata or {}).get("class_names")
    if not class_names:
        raise SimpsonsError(f"model {model_uri!r} does not say its class names; use a model that simpsons logged")
    return model, header(client, model, model_uri)


def header(client: MlflowClient, model: PyFuncModel, model_uri: str) -> ModelHeader:
    """What the loaded model says of itself (its logged model and run), and what its run says."""
    import mlflow

    run_id = model.metadata.run_id
    try:
        run = client.get_run(run_id) if run_id else None
    except mlflow.exceptions.MlflowException:
        run = None  # a model file copied from another store
    tags = run.data.tags if run else {}
    members = tags.get(schema.MEMBERS)
    return ModelHeader(
        uri=model_uri,
        model_id=model.metadata.model_id,
        run_id=run_id,
        run_name=run.info.run_name if run else None,
        kind=KINDS.get(tags.get(schema.RUN_TYPE, ""), "unknown"),
        members=len(members.split(",")) if members else None,
        class_count=len(model.metadata.metadata["class_names"]),
        registered=registrations(client, run_id),
        data=(run.data.params.get("data.name") or tags.get(schema.DATA_NAME)) if run else None,
    )


def registrations(client: MlflowClient, run_id: str | None) -> list[str]:
    """The registry's versions of the run's model, e.g. 'simpsons version 3 @champion'."""
    import mlflow

    if not run_id:
        return []
    try:
        found = client.search_model_versions(f"run_id = '{run_id}'")
        versions = [client.get_model_version(v.name, v.version) for v in found]  # a search leaves out aliases
    except mlflow.exceptions.MlflowException:
        return []  # a store without a model registry
    return [
        " ".join([f"{v.name} version {v.version}", *(f"@{alias}" for alias in sorted(v.aliases))])
        for v in sorted(versions, key=lambda v: (v.name, int(v.version)))
    ]


def render_table(model: ModelHeader, predictions: list[Prediction]) -> str:
    label_width = max(len(label) for label, _ in model.rows())
    lines = [f"{label:<{label_width}}  {value}" for label, value in model.rows()] + [""]
    width = max((len(p.path) for p in predictions), default=0)
    for p in predictions:
        result = f"error: {p.error}" if p.error else "  ".join(f"{name} {prob:.3f}" for name, prob in p.top)
        lines.append(f"{p.path:<{width}}  {result}")
    return "\n".join(lines)


def render_json(model: ModelHeader, predictions: list[Prediction]) -> str:
    return json.dumps(
        {
            "model": asdict(model),
            "predictions": [
                {"file": p.path, "error": p.error}
                if p.error
                else {"file": p.path, "top": [{"class": name, "probability": prob} for name, prob in p.top]}
                for p in predictions
            ],
        },
        indent=2,
    )


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m simpsons.predict",
        description=__doc__.split("\n\nTensorFlow")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = result.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run",
        metavar="RUN_ID",
        help=f"use the model of this training or ensemble run (a run id, or its first {SHORT_ID} characters "
        "as report prints them)",
    )
    source.add_argument(
        "--model",
        metavar="URI",
        help="use this model: models:/<model id> (a run's logged model), or models:/simpsons@champion (the registry's)",
    )
    result.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders to classify every file in")
    result.add_argument("--top-k", type=int, default=3, help="how many classes to show per image, best first (3)")
    result.add_argument(
        "--json", action="store_true", help='print JSON: {"model": {...the header...}, "predictions": [...]}'
    )
    add_tracking_uri_argument(result)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    startup.prepare_process()
    if args.top_k < 1:
        print(f"error: --top-k {args.top_k} is invalid; expected an integer >= 1", file=sys.stderr)
        return 2
    from simpsons.tracking import store

    try:  # a bad store (a password in its URI, no server) in one line, before TensorFlow loads
        store.configure(args.tracking_uri)
    except SimpsonsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Imported now: --help and bad arguments answer without loading TensorFlow.
    import keras

    keras.utils.disable_interactive_logging()  # no Keras progress bar per image in the table
    try:
        model, model_header = load(args.run, args.model)
    except SimpsonsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    class_names = model.metadata.metadata["class_names"]
    warning = classes_warning(model_header, class_names, folder_classes(args.paths))
    if warning:  # on stderr: --json's output stays JSON
        print(warning, file=sys.stderr)
    predictions = [
        Prediction(str(path), [], error) if error else classify(model, class_names, path, args.top_k)
        for path, error in expand(args.paths)
    ]
    print(render_json(model_header, predictions) if args.json else render_table(model_header, predictions))
    return 1 if any(p.error for p in predictions) else 0


if __name__ == "__main__":
    sys.exit(main())
