"""What `modelport ray serve` / `modelport ray config` deploy: the applications, Ray's options,
the settings refused, and the Serve config file (checked against Ray's own schema)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from ray.serve.schema import ServeDeploySchema

from modelport.cli.main import cli
from modelport.ray_serve.options import (
    DeploymentOptions,
    RayOptionsFile,
    RayServeSettingsError,
    check_settings,
    ingress_environment,
    replica_settings,
)
from modelport.ray_serve.plan import FRONT_APP, model_groups, plan, serve_config
from modelport.settings import EXAMPLE_REPOSITORY


def test_a_pipeline_loads_its_steps() -> None:
    groups = model_groups(EXAMPLE_REPOSITORY)
    assert groups["sentiment"] == (
        "sentiment",
        "sentiment_tokenize",
        "sentiment_classify",
        "sentiment_label",
    )
    assert groups["add_sub"] == ("add_sub",)


def test_one_application_per_model_and_a_front() -> None:
    options = RayOptionsFile(
        default=DeploymentOptions(ray_actor_options={"num_cpus": 0.5}),
        models={
            "add_sub": DeploymentOptions(autoscaling_config={"min_replicas": 1, "max_replicas": 3})
        },
    )
    apps = plan({"model_repository": EXAMPLE_REPOSITORY}, options, replicas=2)
    assert apps[0].name == FRONT_APP and apps[0].route_prefix == "/"
    by_name = {app.name: app for app in apps[1:]}
    assert set(by_name) == set(model_groups(EXAMPLE_REPOSITORY))
    assert by_name["text_lower"].route_prefix == "/v2/models/text_lower"
    assert by_name["text_lower"].args["options"] == {
        "num_replicas": 2,
        "ray_actor_options": {"num_cpus": 0.5},
        "max_ongoing_requests": 256,
    }
    # an autoscaling model: the count given for the others does not apply to it
    assert by_name["add_sub"].args["options"] == {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3},
        "ray_actor_options": {"num_cpus": 0.5},
        "max_ongoing_requests": 256,
    }
    assert by_name["sentiment"].args["load"][0] == "sentiment"
    assert apps[0].args["models"] == list(by_name)


def test_options_for_unknown_models_are_refused() -> None:
    options = RayOptionsFile(models={"nope": DeploymentOptions(num_replicas=2)})
    with pytest.raises(RayServeSettingsError, match="nope"):
        plan({"model_repository": EXAMPLE_REPOSITORY}, options)


def test_a_count_and_autoscaling_together_are_refused() -> None:
    both = DeploymentOptions(num_replicas=2, autoscaling_config={"max_replicas": 2})
    with pytest.raises(RayServeSettingsError, match="not both"):
        both.serve_options()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"host": "0.0.0.0"}, "--http-host"),
        ({"workers": 2}, "replicas"),
        ({"queue": ("redis://x",)}, "message queues"),
        ({"model_control_mode": "explicit"}, "deploy again"),
        ({"tls_cert": Path("c.pem")}, "TLS"),
        ({"max_request_bytes": 5}, "greater than or equal"),
    ],
)
def test_settings_ray_decides_or_cannot_serve_are_refused(
    settings: dict[str, object], problem: str
) -> None:
    with pytest.raises(RayServeSettingsError, match=problem):
        check_settings({"model_repository": EXAMPLE_REPOSITORY, **settings})


def test_a_replica_loads_only_its_group() -> None:
    built = replica_settings({"model_repository": EXAMPLE_REPOSITORY}, ("sentiment", "step"))
    assert built.model_control_mode == "explicit"
    assert built.startup_models() == ("sentiment", "step")
    assert built.host == "127.0.0.1"


def test_haproxy_files_stay_under_the_given_directory(tmp_path: Path) -> None:
    assert ingress_environment("proxy", tmp_path) == {}
    env = ingress_environment("haproxy", tmp_path)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith(str(tmp_path))


def test_config_command_writes_what_ray_accepts(tmp_path: Path) -> None:
    (tmp_path / "ray.yaml").write_text("models: {add_sub: {num_replicas: 3}}\n")
    result = CliRunner().invoke(
        cli,
        [
            "ray",
            "config",
            "--model-repository",
            str(EXAMPLE_REPOSITORY),
            "--ray-options",
            str(tmp_path / "ray.yaml"),
            "--http-port",
            "9000",
        ],
    )
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.output)
    schema = ServeDeploySchema(**document)  # Ray's own model of a `serve deploy` file
    assert schema.http_options.port == 9000
    names = [app.name for app in schema.applications]
    assert names[0] == FRONT_APP and "add_sub" in names
    add_sub = document["applications"][names.index("add_sub")]
    assert add_sub["import_path"] == "modelport.ray_serve:model_app"
    assert add_sub["args"]["options"]["num_replicas"] == 3
    assert add_sub["args"]["settings"]["model_repository"] == str(EXAMPLE_REPOSITORY.resolve())


ROUND_TRIP = """
import json, sys
from modelport.ray_serve import front_app, model_app
for app in json.load(sys.stdin)["applications"]:
    builder = front_app if app["import_path"].endswith(":front_app") else model_app
    assert builder(app["args"]) is not None, app["name"]
print("built")
"""


def test_the_config_file_round_trips_through_the_builders() -> None:
    """The builders a config file names take the args it holds (Ray is imported, nothing runs).
    In a subprocess: the builders import modelport's app, whose generated gRPC messages register
    the same protobuf names as tritonclient's, which other tests import into this process."""
    apps = plan({"model_repository": EXAMPLE_REPOSITORY}, RayOptionsFile(), replicas=1)
    config = serve_config(apps, "127.0.0.1", 8000)
    done = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "built" in done.stdout


def test_a_reachable_address_without_keys_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELPORT_API_KEY", raising=False)
    runner = CliRunner()
    args = ["ray", "config", "--model-repository", str(EXAMPLE_REPOSITORY)]
    refused = runner.invoke(cli, [*args, "--http-host", "0.0.0.0"])
    assert refused.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in refused.output
    allowed = runner.invoke(cli, [*args, "--http-host", "0.0.0.0", "--allow-unauthenticated"])
    assert allowed.exit_code == 0, allowed.output
    monkeypatch.setenv("MODELPORT_API_KEY", "a-key-from-the-environment")
    with_key = runner.invoke(cli, [*args, "--http-host", "0.0.0.0"])
    assert with_key.exit_code == 0, with_key.output
    assert "a-key-from-the-environment" not in with_key.output
