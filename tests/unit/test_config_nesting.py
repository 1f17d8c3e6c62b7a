"""The repository reader: config files nested deeper than 64 levels (YAML bounded before it is
parsed, config.pbtxt walked without recursion), or that cannot be read, fail their own model."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.repository.local import LocalRepository
from modelport.repository.nesting import check_nesting


def nested_flow(depth: int) -> str:
    return "parameters: " + "[" * (depth - 1) + "]" * (depth - 1)


def test_parsed_values_are_walked_without_recursion() -> None:
    value: object = 1
    for _ in range(100_000):  # far past Python's recursion limit
        value = {"x": [value]}
    with pytest.raises(ValueError, match=r"config\.pbtxt is nested deeper than 64 levels"):
        check_nesting(value, "config.pbtxt")
    check_nesting({"a": [{"b": 1}]}, "config.pbtxt")


def test_a_config_link_to_nothing_fails_the_model(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").symlink_to(tmp_path / "m" / "missing.yaml")
    definition = LocalRepository(tmp_path).read("m")
    assert definition.error == "cannot read config.yaml: No such file or directory"


def test_a_deep_config_fails_only_its_model(tmp_path: Path) -> None:
    for name in ("deep", "aliased", "deep_pbtxt", "fine"):
        (tmp_path / name / "1").mkdir(parents=True)
    (tmp_path / "deep" / "config.yaml").write_text(nested_flow(500))
    chain = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 70))
    (tmp_path / "aliased" / "config.yaml").write_text(chain)
    pbtxt = 'name: "deep_pbtxt"\n' + "parameters {" * 100 + "}" * 100
    (tmp_path / "deep_pbtxt" / "config.pbtxt").write_text(pbtxt)
    (tmp_path / "fine" / "config.yaml").write_text("max_batch_size: 4\n")
    repository = LocalRepository(tmp_path)
    assert repository.read("deep").error == "config.yaml is nested deeper than 64 levels"
    assert "nested deeper than 64 levels" in str(repository.read("aliased").error)
    assert repository.read("deep_pbtxt").error == "config.pbtxt is nested deeper than 64 levels"
    assert repository.read("fine").error is None
