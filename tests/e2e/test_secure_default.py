"""Secure by default: no open server on a reachable address (from --host or MODELPORT_HOST);
MODELPORT_API_KEY alone; protected health; the operator CLI sending the key; a bad key file
stopping the start, and a key file that turns bad while serving refusing every key."""

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
from modelport.security.keys import KeyEntry, generate_key, key_digest, write_key_file
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


def test_modelport_host_from_the_environment_without_keys_refuses_to_start(
    tmp_path: Path,
) -> None:
    """No --host flag: the address comes from MODELPORT_HOST and is checked all the same."""
    env = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "HOME": str(tmp_path)}
    result = subprocess.run(
        [str(MODELPORT), *serve_args()],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "MODELPORT_HOST": "0.0.0.0"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to serve on 0.0.0.0 without API keys" in result.stderr
    assert "--api-keys" in result.stderr and "--allow-unauthenticated" in result.stderr


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


def test_a_key_file_that_turns_invalid_while_serving_refuses_every_key(
    small_repo: Path, tmp_path: Path
) -> None:
    """Fail closed: a broken edit must not leave in force a key it meant to revoke. Every key,
    the MODELPORT_API_KEY one too, is refused (401 / UNAUTHENTICATED) until the file is valid
    again; the log names the file and the problem, never a key."""
    filed, env_key = generate_key(), generate_key()
    key_file = tmp_path / "keys.yaml"
    entries = [KeyEntry(name="ci", sha256=key_digest(filed), scopes=("inference",))]
    write_key_file(key_file, entries)
    log = tmp_path / "server.log"
    url_path = "/v2/models/add_sub"

    def status(server: Server, key: str) -> int:
        headers = {"authorization": f"Bearer {key}"}
        return httpx.get(server.base + url_path, headers=headers, timeout=10).status_code

    def grpc_refused(server: Server, key: str) -> str:
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        try:
            client.get_model_metadata("add_sub", headers={"authorization": f"Bearer {key}"})
        except InferenceServerException as refusal:
            return str(refusal.status())
        finally:
            client.close()
        return "OK"

    with serving(small_repo, log, "--api-keys", str(key_file), key=env_key) as server:
        assert status(server, filed) == 200 and status(server, env_key) == 200

        key_file.write_text("keys: [{name: ci\n")  # a hand edit gone wrong
        wait_until(lambda: status(server, filed) == 401, "the broken file refusing the keys")
        assert status(server, env_key) == 401
        answer = httpx.get(server.base + url_path, headers={"authorization": f"Bearer {filed}"})
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert grpc_refused(server, filed) == "StatusCode.UNAUTHENTICATED"
        assert grpc_refused(server, env_key) == "StatusCode.UNAUTHENTICATED"
        assert httpx.get(f"{server.base}/v2/health/ready").status_code == 200  # probes: open

        key_file.unlink()  # gone: still refused
        wait_until(lambda: "No such file" in log.read_text(), "the missing file reported")
        assert status(server, filed) == 401 and status(server, env_key) == 401

        write_key_file(key_file, entries)  # repaired
        wait_until(lambda: status(server, filed) == 200, "the repaired file")
        assert status(server, env_key) == 200
        assert grpc_refused(server, filed) == "OK"
    text = log.read_text()
    refusals = "every API key is refused until the file is valid again"
    assert f"the key file {key_file} is not valid YAML" in text
    assert f"cannot read the key file {key_file}: No such file or directory" in text
    assert text.count(refusals) == 2  # once per change of the file, not per poll
    assert filed not in text and env_key not in text and key_digest(filed) not in text
    assert "Traceback" not in text


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
