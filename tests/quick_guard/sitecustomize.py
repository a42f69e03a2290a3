"""Put on PYTHONPATH by conftest.py for the quick tier's tests (not marked slow): a Python process
they start reports here, in a file under $SIMPSONS_QUICK_GUARD, if it imports TensorFlow or binds a
port of its own (a server: `mlflow server`, `mlflow ui`, `mlflow models serve`, uvicorn, Ray). conftest.py
then fails the test: such a test belongs to the slow tier. Nothing else changes in the process."""

import os
import sys

_FOLDER = os.environ.get("SIMPSONS_QUICK_GUARD")
_reported: set[str] = set()


def _report(kind: str) -> None:
    if kind in _reported:
        return
    _reported.add(kind)
    try:
        with open(os.path.join(_FOLDER, f"{os.getpid()}-{kind}"), "w") as note:
            note.write(f"{kind}: {' '.join(sys.argv)[:300]}")
    except OSError:
        pass  # the test has ended and its folder is gone: nothing left to fail


def _audit(event: str, args: tuple) -> None:
    # An audit hook sees every import and bind, whoever makes it, and changes neither.
    if event == "import" and args[0] == "tensorflow":
        _report("tensorflow")
    elif event == "socket.bind" and isinstance(args[1], tuple) and args[1][1] != 0:
        # A server binds its port, (host, port); urllib3 binds ('::1', 0) to probe for IPv6.
        _report("server")


if _FOLDER:
    sys.addaudithook(_audit)


def _next_sitecustomize() -> None:
    """Python imports one sitecustomize: this one shadows any other on the path (Debian's), so run it."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_next_sitecustomize()
