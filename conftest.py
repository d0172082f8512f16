"""What `pytest` collects from the repository (pyproject: testpaths `tests` and `grpcrpc`, with
`--doctest-modules`, so the docstring examples of grpcrpc's modules run with the suite).

`--doctest-modules` imports every module under those paths to look for examples. Some must not
be imported into the test runner; each is left out here, deliberately, with the reason.
"""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent
TESTS = ROOT / "tests"

collect_ignore = [
    # Imports eventlet (a dev-only dependency) at module level and exists to re-point modules
    # inside an eventlet-monkey-patched process; it has no examples, and importing it here
    # would load eventlet into every test run. tests/oslo/test_eventlet.py runs it for real.
    "grpcrpc/oslo/_eventlet.py",
]
if importlib.util.find_spec("oslo_messaging") is None:
    # The oslo.messaging driver needs the `oslo` extra: without it its modules cannot import
    # (tests/oslo skips itself the same way).
    collect_ignore.append("grpcrpc/oslo")


def pytest_ignore_collect(collection_path: pathlib.Path) -> bool | None:
    """Modules under tests/ other than test files and conftests are programs the tests start
    as subprocesses, or helpers the tests import: never collected. (Imported for doctests,
    `tests/oslo/eventlet_main.py` would monkey-patch the whole test run with eventlet.)"""
    path = collection_path
    if (path.suffix == ".py" and TESTS in path.parents and not path.name.startswith("test_")
            and path.name not in ("conftest.py", "__init__.py")):
        return True
    return None
