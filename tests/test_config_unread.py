"""Keys the configured run does not read are refused at load, naming the key (each was
ignored: a copied config ran "successfully" with a key that had no effect).  A key equal to
its default stays accepted, as in the config.toml a run writes (it holds every key)."""
from __future__ import annotations

import pytest

from fem_mfc import config
from fem_mfc.errors import ConfigError


def refused(raw: dict, key: str) -> str:
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    assert e.value.key == key, str(e.value)
    assert "\n" not in str(e.value)
    return str(e.value)


def reloads(raw: dict) -> dict:
    """The config loads, and so does its full copy (every default filled in)."""
    full = config.from_dict(raw)
    assert config.from_dict(full) == full
    return full


HEAT = {"run": {"formulation": "heat"}}


@pytest.mark.parametrize("section,key,value", [
    ("problem", "V", "x0**2"), ("problem", "G", "rho**2"), ("problem", "Phi", "x0**2"),
    ("problem", "coupling", "mfg"), ("discretisation", "stabilisation", "monotone")])
def test_heat_refuses_the_control_problem_keys(section, key, value):
    """formulation 'heat' with [problem] V or G ran the uncontrolled flow all the same."""
    msg = refused({**HEAT, section: {key: value}}, f"{section}.{key}")
    assert "'heat'" in msg
    reloads({"run": {"formulation": "hjb-fp"}, section: {key: value}}
            if key != "stabilisation" else {section: {key: value}})
    reloads({**HEAT, "problem": {"V": "0", "G": "0", "Phi": "0", "coupling": "mftc"}})
