"""cxrfx's exceptions survive pickling and copying (DataLoader workers and multiprocessing pickle the errors they
raise) with their attributes, message and, for the exit, the line the interpreter prints."""

import copy
import pickle
import subprocess
import sys

import pytest

from cxrfx.errors import CXRFXError, CXRReadError, DatalistError, MissingWeightsError

CASES = [
    (CXRReadError("scans/a.dcm", "cannot decode\n  pixel data"), {"path": "scans/a.dcm",
                                                                  "problem": "cannot decode pixel data"},
     "scans/a.dcm: cannot decode pixel data"),
    (DatalistError("d.json", ["missing key 'image'"]), {"path": "d.json", "problems": ["missing key 'image'"]},
     "d.json: missing key 'image'"),
    (DatalistError("d.json", ["a", "b"]), {"path": "d.json", "problems": ["a", "b"]},
     "d.json: invalid datalist (2 problems):\n  - a\n  - b"),
    (MissingWeightsError("models/model.pt", "gone"), {"path": "models/model.pt", "problem": "gone",
                                                      "code": "error: models/model.pt: gone"},
     "models/model.pt: gone"),
]


@pytest.mark.parametrize("error, attrs, message", CASES, ids=lambda c: type(c).__name__ if isinstance(c, BaseException)
                         else None)
@pytest.mark.parametrize("roundtrip", [lambda e: pickle.loads(pickle.dumps(e)), copy.copy, copy.deepcopy],
                         ids=["pickle", "copy", "deepcopy"])
def test_round_trip_keeps_type_attributes_and_message(error, attrs, message, roundtrip):
    assert str(error) == message
    back = roundtrip(error)
    assert type(back) is type(error) and back is not error
    assert str(back) == message and back.args == error.args
    for name, value in attrs.items():
        assert getattr(back, name) == value


def test_default_missing_weights_problem_survives_pickling():
    back = pickle.loads(pickle.dumps(MissingWeightsError("m.pt")))
    assert back.problem.startswith("no weights file there") and back.code == f"error: m.pt: {back.problem}"


def test_errors_keep_their_families():
    assert isinstance(CXRReadError("a", "b"), (CXRFXError, ValueError))
    assert isinstance(DatalistError("a", ["b"]), (CXRFXError, ValueError))
    assert isinstance(MissingWeightsError("a"), SystemExit) and not isinstance(MissingWeightsError("a"), Exception)


def test_uncaught_missing_weights_prints_one_line_and_exits_1():
    code = "from cxrfx.errors import MissingWeightsError; raise MissingWeightsError('m.pt', 'gone')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr == "error: m.pt: gone\n" and run.stdout == ""
