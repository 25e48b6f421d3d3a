"""Renamed config keys (fem_mfc/config.py, RENAMED): an old name still loads into the new key
with one deprecation line on stderr (rank 0 only); old and new name together are an error;
docs/config.md lists the renames."""
from __future__ import annotations

from mpi4py import MPI

import pytest

from fem_mfc import config
from fem_mfc.errors import ConfigError

FORMULATION = {"network": "classifier", "training": "classifier", "nls": "nls"}
CASES = [(s, old, new) for s, names in config.RENAMED.items() for old, new in names.items()]
IDS = [f"{s}.{old}" for s, old, _ in CASES]


def _value(section, new):
    """A valid value other than the default (so that the test sees where it went)."""
    default = config.SCHEMA[section][new].default
    return 2 * default if default else 1.5


# keys beside a renamed one that make the run read it (keys a run does not read are refused)
READS = {("network", "ridges"): {"kind": "dictionary", "dictionary": "random-tanh"},
         ("nls", "s0"): {"initial": "gaussian"}}


def _raw(section, keys):
    names = config.RENAMED.get(section, {})
    context = {}
    for k in keys:
        context.update(READS.get((section, names.get(k, k)), {}))
    return {"run": {"formulation": FORMULATION[section]}, section: {**context, **keys}}


def test_every_section_with_a_rename_is_covered():
    assert set(config.RENAMED) <= set(FORMULATION)


@pytest.mark.parametrize("section, old, new", CASES, ids=IDS)
def test_table_is_consistent(section, old, new):
    assert new in config.SCHEMA[section] and old not in config.SCHEMA[section]


@pytest.mark.parametrize("section, old, new", CASES, ids=IDS)
def test_old_name_loads_into_the_new_key_with_one_warning(section, old, new, capsys):
    v = _value(section, new)
    cfg = config.from_dict(_raw(section, {old: v}))
    assert cfg[section][new] == v and old not in cfg[section]
    assert cfg == config.from_dict(_raw(section, {new: v}))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines          # the old name warns, the new one does not
    assert f"[{section}] {old} is deprecated: use {new} (same meaning)" in lines[0]
    assert lines[0].startswith("fem-mfc: warning: ")


@pytest.mark.parametrize("section, old, new", CASES, ids=IDS)
def test_old_and_new_name_together_are_an_error(section, old, new):
    v = _value(section, new)
    with pytest.raises(ConfigError) as e:
        config.from_dict(_raw(section, {old: v, new: v}))
    assert e.value.key == f"{section}.{old}" and new in str(e.value)
    assert "\n" not in str(e.value)


def test_a_stored_config_uses_the_new_names(tmp_path):
    cfg = config.from_dict(_raw("network", {}))
    text = config.dumps(cfg)
    for section, old, new in CASES:
        table = text.split(f"[{section}]\n", 1)[1].split("\n\n", 1)[0]
        assert f"\n{new} = " in "\n" + table and f"\n{old} = " not in "\n" + table


def test_docs_list_the_renames(repo):
    doc = (repo / "docs" / "config.md").read_text()
    for section, old, new in CASES:
        assert f"| `[{section}]` | `{old}` | `{new}` |" in doc
        assert f"formerly `{old}`" in doc


@pytest.mark.mpi
def test_warning_on_rank_zero_only(capsys):
    section, old, new = CASES[0]
    config.from_dict(_raw(section, {old: _value(section, new)}))
    err = capsys.readouterr().err
    assert ("deprecated" in err) == (MPI.COMM_WORLD.rank == 0), err
