"""The tests' conftest works without mpi4py: the README runs
``python3 -m pytest tests/test_reliability_paths.py`` on the host, where the environment's
packages (mpi4py, DOLFINx) are not installed; conftest's autouse MPI deadline fixture imported
mpi4py for every test and so errored each of them there."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from helpers import REPO


def test_conftest_runs_a_test_without_mpi4py(tmp_path):
    for name in ("conftest.py", "helpers.py"):
        shutil.copy(REPO / "tests" / name, tmp_path / name)
    (tmp_path / "test_probe.py").write_text("def test_probe():\n    pass\n")
    shim = tmp_path / "shim" / "mpi4py"           # an mpi4py that is not there, as on the host
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    env = {**os.environ, "PYTHONPATH": f"{shim.parent}{os.pathsep}{tmp_path}"}
    env.pop("FEM_MFC_SHARD", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(tmp_path / "test_probe.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout
