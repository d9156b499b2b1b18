"""Test-session defaults: notebooks run in smoke mode and write their runs to a temp folder.

nbmake starts each notebook's kernel from this process, so the kernels inherit these variables.
Set them yourself to run the notebooks at full size under pytest (a CACR_LAB_RUNS of your own
is kept; the temp folder made here is removed when the session ends).
"""

import os
import shutil
import tempfile

os.environ.setdefault("CACR_LAB_SMOKE", "1")
_OWN_RUNS = None
if "CACR_LAB_RUNS" not in os.environ:
    _OWN_RUNS = tempfile.mkdtemp(prefix="cacr_lab_test_runs_")
    os.environ["CACR_LAB_RUNS"] = _OWN_RUNS


def pytest_unconfigure(config) -> None:
    if _OWN_RUNS is not None:  # every test session made one (~40 MB after the notebooks)
        shutil.rmtree(_OWN_RUNS, ignore_errors=True)
