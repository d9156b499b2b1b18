"""Test-session defaults: notebooks run in smoke mode and write their runs to a temp folder.

nbmake starts each notebook's kernel from this process, so the kernels inherit these variables.
Set them yourself to run the notebooks at full size under pytest.
"""

import os
import tempfile

os.environ.setdefault("CACR_LAB_SMOKE", "1")
os.environ.setdefault("CACR_LAB_RUNS", tempfile.mkdtemp(prefix="cacr_lab_test_runs_"))
