"""`python -m simpsons.predict`: its header names the model used; files, folders and bad paths; --help.

On tiny runs that really trained, in a private SQLite store (conftest.trained_store), and an
ensemble of them.
"""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
from conftest import ensemble_config, help_imports
from mlflow.tracking import MlflowClient

from simpsons import predict
from simpsons.ensembling.command import ensemble
from simpsons.tracking import reader, schema


def header_rows(printed: str) -> dict[str, str]:
    """The header's `label  value` lines, up to the blank line before the predictions."""
    head = printed.split("\n\n", 1)[0]
    return dict(line.split(maxsplit=1) for line in head.splitlines())


def test_the_header_names_the_single_run_and_files_folders_and_bad_paths_get_a_line_each(store, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    one_image = store.images / "test" / "red_circle" / "img_0000.jpg"
    paths = [str(one_image), str(store.images / "test" / "blue_square"), str(tmp_path / "notes.txt"), "missing.jpg"]
    run_id = store.children[0]
    status = predict.main(["--run", run_id[:8], "--top-k", "2", "--tracking-uri", store.uri, *paths])
    printed = capsys.readouterr().out
    assert status == 1
    run = MlflowClient(store.uri).get_run(run_id)
    assert header_rows(printed) == {
        "model": reader.model_uri(run),
        "run": f"{run_id} {run.info.run_name}",
        "kind": "single run",
        "data": "folder",
        "classes": "4",
    }
    lines = printed.split("\n\n", 1)[1].splitlines()
    assert len(lines) == 1 + 4 + 2
    assert lines[0].startswith(str(one_image)) and len(lines[0].split()) == 1 + 2 * 2
    assert any("notes.txt" in line and "error: not a decodable image" in line for line in lines)
    assert any(line.startswith("missing.jpg") and "error: no such file" in line for line in lines)


def test_the_json_header_of_a_registered_ensemble_says_what_answered(store, capsys):
    ensemble_run = ensemble(ensemble_config(store, f"sweep={store.sweep}", "top_n=2"))
    client = MlflowClient(store.uri)
    run = client.get_run(ensemble_run)
    version = mlflow.register_model(reader.model_uri(run), "predict-test")
    client.set_registered_model_alias("predict-test", "best", version.version)
    one_image = store.images / "test" / "red_circle" / "img_0000.jpg"
    capsys.readouterr()
    args = ["--model", "models:/predict-test@best", "--json", "--tracking-uri", store.uri, str(one_image)]
    assert predict.main(args) == 0
    answer = json.loads(capsys.readouterr().out)
    model = answer["model"]
    assert model["uri"] == "models:/predict-test@best"
    assert f"models:/{model['model_id']}" == reader.model_uri(run)
    assert (model["run_id"], model["run_name"], model["kind"]) == (ensemble_run, run.info.run_name, "ensemble")
    assert model["members"] == len(run.data.tags[schema.MEMBERS].split(","))
    assert model["class_count"] == len(reader.class_names(run)) == 4
    assert f"predict-test version {version.version} @best" in model["registered"]
    [result] = answer["predictions"]
    recorded = reader.outputs(ensemble_run, "test")
    row = recorded.probabilities[recorded.names.index("red_circle/img_0000.jpg")]
    assert result["top"][0]["class"] == reader.class_names(run)[int(row.argmax())]
    assert result["top"][0]["probability"] == pytest.approx(float(row.max()), abs=1e-5)


def test_an_unknown_run_and_a_bad_top_k_are_one_line_and_exit_2(store, capsys):
    assert predict.main(["--run", "deadbeef", "--tracking-uri", store.uri, "x.jpg"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert (
        line
        == f"error: --run 'deadbeef' is not a run in {store.uri}; give a run id (its first 8 characters are enough)"
    )
    assert predict.main(["--run", store.children[0], "--top-k", "0", "x.jpg"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == "error: --top-k 0 is invalid; expected an integer >= 1"


def test_help_explains_every_option_without_importing_tensorflow_or_mlflow():
    imported, printed = help_imports("simpsons.predict")
    assert {"simpsons.config", "simpsons.tracking.schema"} <= imported  # the log covers the help path
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "mlflow", "numpy")}
    actions = [action for action in predict.parser()._actions if action.dest != "help"]
    assert all(len(action.help) > 20 for action in actions)
    for action in actions:
        assert (action.option_strings or [action.metavar])[-1] in printed
    assert "a header names the model used" in " ".join(printed.split())


def test_a_flip_tta_run_predicts_what_it_logged(flips, capsys):
    """Its logged model scores each image and its mirror image itself (simpsons.model.with_flip_tta)."""
    one_image = flips.images / "test" / "red_circle" / "img_0000.jpg"
    assert predict.main(["--run", flips.flipped, "--json", "--tracking-uri", flips.uri, str(one_image)]) == 0
    [result] = json.loads(capsys.readouterr().out)["predictions"]
    recorded = reader.outputs(flips.flipped, "test")
    row = recorded.probabilities[recorded.names.index("red_circle/img_0000.jpg")]
    assert result["top"][0]["class"] == reader.class_names(MlflowClient(flips.uri).get_run(flips.flipped))[row.argmax()]
    assert result["top"][0]["probability"] == pytest.approx(float(row.max()), abs=1e-5)
    plain = reader.outputs(flips.plain, "test").probabilities[recorded.names.index("red_circle/img_0000.jpg")]
    assert abs(float(plain.max()) - float(row.max())) > 1e-5, "the plain run's answer would pass as well"


def test_class_folders_that_are_not_the_models_classes_get_one_warning_line(store, tmp_path, capsys):
    image = next((store.images / "test" / "red_circle").glob("*.jpg"))
    for name in ("bart_simpson", "homer_simpson"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        shutil.copy(image, tmp_path / "photos" / name / "a.jpg")
    args = ["--run", store.children[0], "--tracking-uri", store.uri]
    assert predict.main([*args, "--json", str(tmp_path / "photos")]) == 0
    printed = capsys.readouterr()
    assert len(json.loads(printed.out)["predictions"]) == 2  # classified all the same; stdout stays JSON
    [line] = [line for line in printed.err.splitlines() if line.startswith("warning:")]
    assert line.startswith(
        "warning: 2 of the 2 class folders (bart_simpson, homer_simpson) are not classes of this model "
        "(trained on data 'folder'), whose 4 classes are "
    )
    assert predict.main([*args, str(store.images / "test")]) == 0  # the model's own classes: no warning
    assert "warning:" not in capsys.readouterr().err
