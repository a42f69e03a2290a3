"""`python -m simpsons.predict`: classify image files or folders with a logged model.

    python -m simpsons.predict --run <training or ensemble run id> photo.jpg folder/ [--top-k 3] [--json]
    python -m simpsons.predict --model models:/<model id> photo.jpg

A path that is missing or not an image gets a one-line error; the others are still classified.
Exit status 1 when any path failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.pyfunc import PyFuncModel
from mlflow.tracking import MlflowClient

from simpsons.config import tracking_uri_from_environment
from simpsons.errors import SimpsonsError
from simpsons.pipeline import decode_rgb
from simpsons.tracking import reader, store


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]
    error: str | None = None


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


def classify(model: PyFuncModel, class_names: list[str], path: Path, top_k: int) -> Prediction:
    try:
        image = decode_rgb(tf.io.read_file(str(path))).numpy().astype(np.float32)
    except tf.errors.InvalidArgumentError:
        return Prediction(str(path), [], "not a decodable image")
    except tf.errors.OpError as error:
        return Prediction(str(path), [], error.message.splitlines()[0])
    probabilities = np.asarray(model.predict(image[None]))[0]
    best = np.argsort(-probabilities)[:top_k]
    return Prediction(str(path), [(class_names[i], float(probabilities[i])) for i in best])


def load(run_id: str | None, model_uri: str | None) -> tuple[PyFuncModel, list[str]]:
    """The model and its class names, from a run (training or ensemble) or a model URI."""
    if run_id:
        try:
            run = MlflowClient().get_run(run_id)
        except mlflow.exceptions.MlflowException as error:
            raise SimpsonsError(f"--run {run_id!r} is not a run in {mlflow.get_tracking_uri()}") from error
        model_uri = reader.model_uri(run)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (OSError, mlflow.exceptions.MlflowException) as error:
        raise SimpsonsError(f"--model {model_uri!r} cannot be loaded: {str(error).splitlines()[0]}") from error
    class_names = (model.metadata.metadata or {}).get("class_names")
    if not class_names:
        raise SimpsonsError(f"model {model_uri!r} does not say its class names; use a model that simpsons logged")
    return model, class_names


def render_table(predictions: list[Prediction]) -> str:
    width = max((len(p.path) for p in predictions), default=0)
    lines = []
    for p in predictions:
        result = f"error: {p.error}" if p.error else "  ".join(f"{name} {prob:.3f}" for name, prob in p.top)
        lines.append(f"{p.path:<{width}}  {result}")
    return "\n".join(lines)


def render_json(predictions: list[Prediction]) -> str:
    return json.dumps(
        [
            {"file": p.path, "error": p.error}
            if p.error
            else {"file": p.path, "top": [{"class": name, "probability": prob} for name, prob in p.top]}
            for p in predictions
        ],
        indent=2,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simpsons.predict", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a training or ensemble run id")
    source.add_argument("--model", help="a model URI, e.g. models:/<model id> or runs:/<run id>/model")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to show per image (3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--tracking-uri", default=tracking_uri_from_environment(), help="MLflow store")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k {args.top_k} is invalid; expected an integer >= 1")
    store.configure(args.tracking_uri)
    keras.utils.disable_interactive_logging()  # no Keras progress bar per image in the table
    try:
        model, class_names = load(args.run, args.model)
    except SimpsonsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    predictions = [
        Prediction(str(path), [], error) if error else classify(model, class_names, path, args.top_k)
        for path, error in expand(args.paths)
    ]
    print(render_json(predictions) if args.json else render_table(predictions))
    return 1 if any(p.error for p in predictions) else 0


if __name__ == "__main__":
    sys.exit(main())
