"""Item 10 of issue 14 (messages): a config with a UTF-8 byte-order mark is read, and an empty
config (nothing, blank lines or only comments) is refused with one line (exit 2) instead of
silently running the default problem."""
from __future__ import annotations

import pytest

from fem_mfc import config
from fem_mfc.errors import UserError
from helpers import run_cli

SMALL = """\
[run]
formulation = "heat"
[mesh]
kind = "interval"
cells = 8
lower = [-1.0]
upper = [1.0]
[problem]
T = 0.1
steps = 2
[rho0]
std = 0.4
[output]
figures = false
vtx = false
"""


def _one_error_line(p):
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("fem-mfc: error: "), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    return lines[0]


def test_config_with_byte_order_mark_is_read(tmp_path):
    f = tmp_path / "bom.toml"
    f.write_bytes(b"\xef\xbb\xbf" + SMALL.encode())
    cfg = config.load(f)
    assert cfg["run"]["formulation"] == "heat" and cfg["mesh"]["cells"] == 8
    p = run_cli(["run", f, "--out", tmp_path / "out", "--quiet"], timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "out" / "summary.json").is_file()


@pytest.mark.parametrize("text", [b"", b"\n\n  \n", b"# only a comment\n\n# and another\n",
                                  b"\xef\xbb\xbf", b"\xef\xbb\xbf# comment\n"],
                         ids=["empty", "blank", "comments", "bom", "bom-comment"])
def test_empty_config_is_refused(tmp_path, text):
    f = tmp_path / "empty.toml"
    f.write_bytes(text)
    with pytest.raises(UserError, match="the config file is empty") as e:
        config.load(f)
    assert "\n" not in str(e.value) and str(f) in str(e.value)


def test_empty_config_on_the_command_line_runs_nothing(tmp_path):
    f = tmp_path / "empty.toml"
    f.write_text("# nothing here yet\n")
    out = tmp_path / "out"
    line = _one_error_line(run_cli(["run", f, "--out", out, "--quiet"], timeout=120))
    assert "empty" in line and str(f) in line
    assert not out.exists()


@pytest.mark.mpi
def test_bom_and_empty_config_on_every_rank(tmp_path_factory):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    d = tmp_path_factory.mktemp(f"rank{comm.rank}")
    bom, empty = d / "bom.toml", d / "empty.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + SMALL.encode())
    empty.write_text("# nothing\n")
    assert config.load(bom)["mesh"]["cells"] == 8
    refused = False
    try:
        config.load(empty)
    except UserError as e:
        refused = "empty" in str(e)
    assert comm.allgather(refused) == [True] * comm.size


def test_a_folder_or_device_given_as_the_config_is_named_so(tmp_path):
    """``fem-mfc run results/`` (or /dev/null) said "config file not found" of a path that was
    there."""
    with pytest.raises(UserError, match="is a folder") as e:
        config.load(tmp_path)
    assert "not found" not in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(UserError, match="/dev/null: not a regular file"):
        config.load("/dev/null")
