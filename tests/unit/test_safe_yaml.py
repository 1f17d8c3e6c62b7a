"""The bounded YAML reader for configs nobody vouches for (a load request's override)."""

from __future__ import annotations

import json

import pytest

from modelport.core.errors import InvalidInput
from modelport.frontends.model_control import load_config
from modelport.repository.safe_yaml import MAX_DEPTH, MAX_NODES, YamlRefused, load_bounded

WHAT = "the load request's config"


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """Each anchor's list repeats the previous anchor `width` times: width**levels strings."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{aliases}]")
    return "parameters:\n" + "".join(f"  {line}\n" for line in lines)


def test_a_normal_config_loads() -> None:
    text = (
        "platform: onnx\nmax_batch_size: 8\n"
        "inputs:\n  - {name: x, datatype: FP32, shape: [-1, 4]}\n"
        "defaults: &common {rate_limit: 10}\nparameters: *common\n"
    )
    assert load_bounded(text, what=WHAT) == {
        "platform": "onnx",
        "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "defaults": {"rate_limit": 10},
        "parameters": {"rate_limit": 10},
    }


def test_json_and_an_empty_text_load() -> None:
    document = {"name": "m", "parameters": {"labels": [f"class {i}" for i in range(5000)]}}
    assert load_bounded(json.dumps(document), what=WHAT) == document
    assert load_bounded("", what=WHAT) is None


def test_a_billion_laughs_is_refused_at_once() -> None:
    bomb = billion_laughs()
    assert len(bomb) < 700
    with pytest.raises(YamlRefused, match=f"more than {MAX_NODES} values with its aliases"):
        load_bounded(bomb, what=WHAT)
    load_bounded(billion_laughs(levels=3), what=WHAT)  # 729 strings: a fine use of aliases


def test_deep_nesting_is_refused() -> None:
    blocks = "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 80))
    for text in (blocks, "[" * 500 + "]" * 500):
        with pytest.raises(YamlRefused, match=f"nested deeper than {MAX_DEPTH} levels"):
            load_bounded(text, what=WHAT)
    # libyaml's scanner reads flow brackets ahead, and stops at its own limit of 1000
    with pytest.raises(YamlRefused, match="exceeded maximum nesting depth"):
        load_bounded("[" * 2000 + "]" * 2000, what=WHAT)
    load_bounded("[" * MAX_DEPTH + "]" * MAX_DEPTH, what=WHAT)


def test_depth_counts_through_aliases() -> None:
    half = "[" * 40 + "1" + "]" * 40
    with pytest.raises(YamlRefused, match=r"deeper than 64 levels \(with \*deep expanded\)"):
        load_bounded(f"a: &deep {half}\nb: {'[' * 30}*deep{']' * 30}\n", what=WHAT)


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    for text in ("&a [*a]", "a: &loop {b: [1, *loop]}"):
        with pytest.raises(YamlRefused, match="inside its own anchor"):
            load_bounded(text, what=WHAT)


def test_bad_yaml_and_undefined_aliases_are_named() -> None:
    with pytest.raises(YamlRefused, match="has no anchor before it"):
        load_bounded("a: *nowhere", what=WHAT)
    with pytest.raises(YamlRefused, match="not valid YAML or JSON"):
        load_bounded("a: [1, 2", what=WHAT)
    with pytest.raises(YamlRefused, match="not valid YAML or JSON"):
        load_bounded("!!python/object:os.system {}", what=WHAT)


def test_size_is_bounded_in_bytes() -> None:
    with pytest.raises(YamlRefused, match="larger than 100 bytes"):
        load_bounded("a: " + "é" * 60, what=WHAT, max_bytes=100)  # 60 characters, 120 bytes


def test_refusals_are_client_errors_and_value_errors() -> None:
    with pytest.raises(InvalidInput):
        load_bounded("&a [*a]", what=WHAT)
    with pytest.raises(ValueError, match=WHAT):
        load_bounded("&a [*a]", what=WHAT)


def test_a_load_request_with_a_bomb_is_refused() -> None:
    with pytest.raises(InvalidInput, match="the load request's config holds more than"):
        load_config({"config": billion_laughs()})
    assert load_config({"config": "max_batch_size: 4\n"}) == "max_batch_size: 4\n"
