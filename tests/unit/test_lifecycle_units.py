"""Lifecycle pieces without a server: config.pbtxt parsing, repository publishing, draining."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from modelport.core.config import ModelConfig
from modelport.core.manager import served_versions
from modelport.core.versions import ModelVersion
from modelport.examples import onnx_models
from modelport.repository import publish
from modelport.repository.triton_pbtxt import PbtxtError, parse_pbtxt, to_model_config


def test_pbtxt_grammar() -> None:
    fields = parse_pbtxt(
        """
        name: "m"  # trailing comment
        max_batch_size: 4
        input [ { name: "a" data_type: TYPE_INT64 dims: [ -1, 3 ] } ]
        input { name: "b" data_type: TYPE_STRING dims: 1 }
        parameters { key: "k" value: { string_value: "say \\"hi\\"" } }
        optimization { execution_accelerators { cpu_execution_accelerator: [] } }
        """
    )
    assert fields["name"] == "m" and fields["max_batch_size"] == 4
    assert [i["name"] for i in fields["input"]] == ["a", "b"]
    config, ignored = to_model_config(fields, "m")
    assert [t.shape for t in config.inputs] == [(-1, -1, 3), (-1, 1)]
    assert [t.datatype.value for t in config.inputs] == ["INT64", "BYTES"]
    assert config.parameters == {"k": 'say "hi"'}
    assert ignored == ["optimization"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "m" input [ { name: "a" ', "missing"),
        ('platform: "tensorrt_plan"', "not one modelport serves"),
        ('input { name: "a" dims: [1] }', "no data_type"),
        ("name: @", "cannot read"),
        ("max_batch_size: -3", "greater than or equal to 0"),
    ],
)
def test_pbtxt_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises((PbtxtError, ValueError), match=message):
        to_model_config(parse_pbtxt(text), "m")


def test_labelled_and_split_versions_are_served_whatever_the_policy() -> None:
    config = ModelConfig(labels={"stable": 2}, traffic={3: 10, 9: 5})
    assert served_versions(config, [1, 2, 3, 4]) == [2, 3, 4]


def test_publish_is_atomic_and_numbers_versions(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    source.write_bytes(onnx_models.offset(1.0).SerializeToString())
    repo = tmp_path / "repo"
    repo.mkdir()
    first = publish.publish(repo, "svc", source)
    second = publish.publish(repo, "svc", source, label="canary", traffic=25)
    assert (first.version, second.version) == (1, 2)
    assert (repo / "svc" / "2" / "model.onnx").read_bytes() == source.read_bytes()
    config = yaml.safe_load((repo / "svc" / "config.yaml").read_text())
    assert config == {"labels": {"canary": 2}, "traffic": {1: 75.0, 2: 25.0}}
    assert sorted(p.name for p in (repo / "svc").iterdir()) == ["1", "2", "config.yaml"]


def test_promote_to_stable_ends_the_split(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    source.write_bytes(b"x")
    repo = tmp_path / "repo"
    repo.mkdir()
    publish.publish(repo, "svc", source)
    publish.publish(repo, "svc", source, label="canary", traffic=10)
    config = publish.set_label(repo, "svc", 2, "stable")
    assert config.labels == {"stable": 2} and config.traffic == {}


def test_rollback_moves_newer_versions_aside(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    source.write_bytes(b"x")
    repo = tmp_path / "repo"
    repo.mkdir()
    for _ in range(3):
        publish.publish(repo, "svc", source)
    target, retired = publish.rollback(repo, "svc", to=1)
    assert (target, retired) == (1, [2, 3])
    assert publish.versions_on_disk(repo / "svc") == [1]
    assert len(list((repo / "svc").glob(".retired-*"))) == 2
    with pytest.raises(publish.PublishError, match="no earlier version"):
        publish.rollback(repo, "svc")


def test_a_retired_version_waits_for_its_requests() -> None:
    async def scenario() -> list[str]:
        events: list[str] = []
        entry = ModelVersion("m", 1, Path(), ModelConfig())
        entry.enter()
        entry.enter()

        async def drain() -> None:
            await entry.drained()
            events.append("drained")

        task = asyncio.create_task(drain())
        await asyncio.sleep(0.01)
        events.append("one left")
        entry.leave()
        await asyncio.sleep(0.01)
        events.append("none left")
        entry.leave()
        await task
        return events

    assert asyncio.run(scenario()) == ["one left", "none left", "drained"]
