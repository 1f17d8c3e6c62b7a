"""Secure by default: no open server on a reachable address; MODELPORT_API_KEY alone; protected
health; the operator CLI sending the key; a bad key file stopping the start."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from modelport.examples import onnx_models
from modelport.security.keys import generate_key
from tests.support import MODELPORT, Server, add_model, free_port, run_cli, spawn_server, wait_until


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    add_model(repo, "add_sub", onnx_models.add_sub("FP32", 16))
    return repo


@contextlib.contextmanager
def serving(repo: Path, log: Path, *args: str, key: str | None = None) -> Iterator[Server]:
    """A server started with `args` (after spawn_server's --host 127.0.0.1, so a --host here
    wins), ready once /v2/health/ready answers 200 to a request with `key`."""
    with pytest.MonkeyPatch.context() as patch:
        if key is not None:
            patch.setenv("MODELPORT_API_KEY", key)
        server = spawn_server(repo, log, *args)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        wait_until(lambda: _ready(server, headers), f"the server ({log.read_text()})")
        yield server
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=15)


def _ready(server: Server, headers: dict[str, str]) -> bool:
    if not server.alive():
        raise RuntimeError(f"modelport exited early:\n{server.log_text()}")
    with contextlib.suppress(httpx.TransportError):
        reply = httpx.get(f"{server.base}/v2/health/ready", headers=headers, timeout=1)
        return reply.status_code == 200
    return False


def serve_args(*args: str) -> list[str]:
    return ["serve", "--http-port", str(free_port()), "--grpc-port", str(free_port()), *args]


def test_a_reachable_address_without_keys_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli(*serve_args("--host", "0.0.0.0"), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in result.stderr
    assert "--api-keys" in result.stderr and "--allow-unauthenticated" in result.stderr
    result = run_cli(*serve_args("--host", "::"), cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "refusing to serve on ::" in result.stderr


def test_allow_unauthenticated_starts_it_open(small_repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "open.log"
    with serving(small_repo, log, "--host", "0.0.0.0", "--allow-unauthenticated") as server:
        assert httpx.get(f"{server.base}/v2/models/add_sub").status_code == 200
    assert "API keys: none configured" in log.read_text()


def test_a_bad_key_file_stops_the_start_naming_the_entry(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n- name: ci\n  sha256: {'a' * 64}\n  scopes: [inferense]\n")
    result = run_cli(*serve_args("--api-keys", str(keys)), cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert f"the key file {keys}, entry 1 ('ci'): scopes.0" in result.stderr


def test_the_environment_key_alone_with_protected_health(small_repo: Path, tmp_path: Path) -> None:
    key = generate_key()
    log = tmp_path / "env.log"
    args = ("--host", "0.0.0.0", "--protect-health", "--model-control-mode", "explicit")
    with serving(small_repo, log, *args, "--load-model", "*", key=key) as server:
        headers = {"authorization": f"Bearer {key}"}
        assert httpx.get(f"{server.base}/v2/health/live").status_code == 401
        assert httpx.get(f"{server.base}/v2/health/live", headers=headers).status_code == 200
        for path in ("/metrics", "/v2/models/add_sub", "/v2/models/stats"):  # every scope
            assert httpx.get(server.base + path, headers=headers).status_code == 200
            assert httpx.get(server.base + path).status_code == 401

        client = triton_grpc.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException, match="missing API key"):
            client.is_server_live()
        assert client.is_server_live(headers=headers)

        operator = operator_cli(["models", "--url", server.base, "--json"], key, tmp_path)
        assert operator.returncode == 0, operator.stderr
        assert '"name": "add_sub"' in operator.stdout
        refused = operator_cli(["models", "--url", server.base], None, tmp_path)
        assert refused.returncode == 1 and "401" in refused.stderr
    text = log.read_text()
    assert "API keys: 1; health needs a key" in text
    assert "management" not in text or "by key 'MODELPORT_API_KEY'" in text
    assert key not in text


def operator_cli(args: list[str], key: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "HOME": str(cwd)}
    if key is not None:
        env["MODELPORT_API_KEY"] = key
    return subprocess.run(
        [str(MODELPORT), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def test_no_api_key_flag_exists(tmp_path: Path) -> None:
    """A key given on the command line would show in `ps`: only the environment carries one."""
    result = run_cli("serve", "--api-key", "x", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "No such option '--api-key'" in result.stderr
