"""Item 6 of issue 14: ``bin/fem-env`` makes every host path a user names visible at the same
path inside the environment (or refuses it with one line, exit 2).

This test drives ``bin/fem-env`` from the host, so it runs only where the environment is
entered through bubblewrap: ``python3 -m pytest tests/test_reliability_paths.py`` on the host
(it is skipped inside the environment, where ``bin/fem-env`` runs commands directly).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FEM_ENV = REPO / "bin" / "fem-env"

pytestmark = pytest.mark.skipif(
    os.environ.get("FEM_MFC_IN_ENV") == "1" or shutil.which("bwrap") is None,
    reason="drives bin/fem-env's bubblewrap sandbox from the host")

# writes argv[2] into the file argv[1] (creating its folders) and prints the file argv[3]
CODE = ("import os, sys; os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True); "
        "open(sys.argv[1], 'w', encoding='utf-8').write(sys.argv[2]); "
        "print(open(sys.argv[3], encoding='utf-8').read())")


def _fem_env(*args, cwd="/"):
    env = {k: v for k, v in os.environ.items() if k not in ("FEM_MFC_IN_ENV",)}
    env["FEM_MFC_FORCE_ROOTFS"] = "1"       # always through the sandbox, even if native works
    return subprocess.run([str(FEM_ENV), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _location(base: str, *parts: str):
    """A fresh folder under ``base`` on the host, or skip if it cannot be created there."""
    root = Path(base) / f"fem_mfc_paths_{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True)
    except OSError as e:
        pytest.skip(f"cannot create {root} on this host ({e.strerror})")
    return root, root.joinpath(*parts) if parts else root


@pytest.mark.parametrize("base,parts", [
    ("/var/tmp", ()), ("/srv", ()), ("/opt", ()), ("/mnt", ()),
    ("/tmp", ("with space", "and more")), ("/tmp", ("nön-äscii ü", "日本")),
    ("/srv", ("a b", "ü")),
], ids=["var-tmp", "srv", "opt", "mnt", "spaces", "non-ascii", "srv-space-non-ascii"])
def test_write_and_read_under(base, parts, tmp_path):
    root, folder = _location(base, *parts)
    try:
        src = root / "host file ü.txt"
        src.write_text("from the host", encoding="utf-8")
        dst = folder / "deeper" / "written inside.txt"
        p = _fem_env("python3", "-c", CODE, dst, "from inside", src)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "from the host"
        assert dst.read_text(encoding="utf-8") == "from inside"     # on the host, same path
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_run_out_under_var_tmp_lands_on_the_host(tmp_path):
    root, out = _location("/var/tmp", "run")
    try:
        cfg = root / "c.toml"
        cfg.write_text('[run]\nformulation = "heat"\n[mesh]\nkind = "interval"\ncells = 8\n'
                       'lower = [-3.0]\nupper = [3.0]\n[problem]\nT = 0.1\nsteps = 2\n'
                       '[rho0]\nmean = [0.0]\n[output]\nfigures = false\n')
        p = _fem_env("python3", "-m", "fem_mfc", "run", cfg, "--out", out, "--quiet",
                     cwd=str(REPO))
        assert p.returncode == 0, p.stderr
        assert (out / "summary.json").is_file()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("path", ["/usr/local/fem_mfc_paths_test/out", "/etc/fem_mfc_paths.toml",
                                  "/fem_mfc_paths_no_such_top/x", "/var/fem_mfc_paths_x/y"])
def test_unmappable_paths_are_refused(path):
    assert not Path(path).exists()
    p = _fem_env("python3", "-c", "print('ran')", path)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and path in lines[0] and "ran" not in p.stdout


def test_environment_paths_still_work():
    p = _fem_env("/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])")
    assert p.returncode == 0 and "(3, 13)" in p.stdout, p.stderr
