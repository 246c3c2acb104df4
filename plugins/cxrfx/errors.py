"""Exceptions that name the file and the problem, so users never read a deep library traceback."""

from __future__ import annotations

import os


class CXRFXError(Exception):
    """Base class of every error cxrfx raises on purpose; the CLI prints these as one line."""


class ConfigError(CXRFXError, ValueError):
    """An argument or configuration value is out of range or inconsistent."""


class CXRReadError(CXRFXError, ValueError):
    """A file could not be read as a chest radiograph (or mask); ``path`` and ``problem`` say why."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        # one line: problems often quote a library's message, and some span lines (nibabel's, pydicom's), which
        # would break ``validate``'s one-line-per-problem output
        self.problem = " ".join(line.strip() for line in str(problem).splitlines() if line.strip())
        # ``args`` are the constructor's arguments, so pickling (DataLoader workers, multiprocessing) and
        # ``copy.copy`` rebuild the error as ``cls(*args)``; the message is composed in ``__str__``
        super().__init__(self.path, self.problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DatalistError(CXRFXError, ValueError):
    """A datalist file is malformed; ``problems`` lists one message per defect."""

    def __init__(self, path: str | os.PathLike, problems: list[str]):
        self.path = os.fspath(path)
        self.problems = list(problems)
        super().__init__(self.path, self.problems)  # the constructor's arguments: see CXRReadError

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"{self.path}: {self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{self.path}: invalid datalist ({len(self.problems)} problems):\n{lines}"


class PhantomSourceError(CXRFXError, RuntimeError):
    """The chest CT behind the phantom could not be obtained (download or cache problem)."""


class CheckpointError(CXRFXError, RuntimeError):
    """A checkpoint cannot be loaded safely or does not fit the model."""


class DatasetLayoutError(CXRFXError, ValueError):
    """A dataset on disk does not have the layout its adapter expects (missing file, column, bad row)."""


class MissingWeightsError(SystemExit):
    """A bundle's weights file is not there when a run needs it. A ``SystemExit``, not a :class:`CXRFXError`:
    MONAI wraps every ``Exception`` raised inside a config expression in a ``RuntimeError`` (a chained traceback
    under ``python -m monai.bundle run``); an exit passes through and prints its one line. In-process callers
    catch it by name (``cxrfx predict`` turns it into a :class:`ConfigError`)."""

    def __init__(self, path: str | os.PathLike, problem: str | None = None):
        self.path = os.fspath(path)
        self.problem = problem or ("no weights file there (train the bundle, fetch its weights with "
                                   "`python -m monai.bundle download_large_files --bundle_path <bundle>`, "
                                   "or point the config at a file)")
        super().__init__(self.path, self.problem)  # the constructor's arguments: see CXRReadError
        # what the interpreter prints when the exit ends the process: a SystemExit prints ``code`` (by default
        # ``args``, here a tuple) to stderr; ``code`` is not pickled state, ``__init__`` sets it again on unpickling
        self.code = f"error: {self.path}: {self.problem}"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"
