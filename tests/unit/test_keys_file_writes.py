"""`modelport keys add|revoke` rewriting the key file: owner, mode and symlinks kept, and no
entry lost when two commands run at once (security/keys.update_key_file, cli/keys.py)."""

from __future__ import annotations

import multiprocessing
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelport.cli.main import cli
from modelport.security.keys import read_key_file

PER_PROCESS = 10
"""Commands each racing process runs: two of them, 20 in all."""
OTHER_USER = 4242
"""A uid/gid no account has, for files that root hands to someone else."""


def run_keys(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["keys", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def add(path: Path, name: str) -> None:
    code, _, err = run_keys("add", name, "--api-keys", str(path))
    assert code == 0, err


def names(path: Path) -> list[str]:
    return [entry.name for entry in read_key_file(path)]


def strays(directory: Path) -> list[str]:
    """Temporary files a write left behind."""
    return sorted(item.name for item in directory.iterdir() if item.name.endswith(".tmp"))


# -- owner, mode, symlinks --------------------------------------------------------------------


def test_a_rewrite_keeps_the_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    add(path, "first")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a new file: its owner only
    path.chmod(0o640)  # the operator lets the server's group read it
    add(path, "second")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert run_keys("revoke", "first", "--api-keys", str(path))[0] == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert names(path) == ["second"]


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a file to another user needs root")
def test_a_rewrite_by_root_keeps_the_files_owner(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    add(path, "first")
    os.chown(path, OTHER_USER, OTHER_USER)  # owned by the server's user, edited by root
    add(path, "second")
    assert (path.stat().st_uid, path.stat().st_gid) == (OTHER_USER, OTHER_USER)
    assert run_keys("revoke", "first", "--api-keys", str(path))[0] == 0
    assert (path.stat().st_uid, path.stat().st_gid) == (OTHER_USER, OTHER_USER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.fixture
def shared_directory() -> Iterator[Path]:
    """A directory every user may write (pytest's tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="modelport-keys-"))
    directory.chmod(0o777)
    try:
        yield directory
    finally:
        for item in directory.iterdir():
            item.unlink()
        directory.rmdir()


def _revoke_as(uid: int, path: str, answers: multiprocessing.Queue[tuple[int, str]]) -> None:
    """`keys revoke first` in this (forked) process after it dropped root for `uid`."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    code, _, err = run_keys("revoke", "first", "--api-keys", path)
    answers.put((code, err))


@pytest.mark.skipif(os.geteuid() != 0, reason="running a command as another user needs root")
def test_a_user_who_cannot_keep_the_owner_is_refused_and_the_file_stays(
    shared_directory: Path,
) -> None:
    """Replacing the file would hand it to whoever ran the command, and a server running as
    the owner might no longer read it: refused, naming the owner, the file untouched."""
    path = shared_directory / "keys.yaml"
    add(path, "first")  # as root: the lock file beside it is root's
    path.chmod(0o644)
    os.chown(path, OTHER_USER, OTHER_USER)
    before = path.read_bytes()
    context = multiprocessing.get_context("fork")  # the child runs no new interpreter
    answers: multiprocessing.Queue[tuple[int, str]] = context.Queue()
    child = context.Process(target=_revoke_as, args=(OTHER_USER + 1, str(path), answers))
    child.start()
    code, err = answers.get(timeout=60)
    child.join(timeout=60)
    assert code == 1, err
    assert f"cannot keep the owner of {path} (uid {OTHER_USER}, gid {OTHER_USER})" in err
    assert path.read_bytes() == before
    assert path.stat().st_uid == OTHER_USER
    assert strays(shared_directory) == []


def test_a_symlinked_key_file_stays_a_link_and_its_target_is_rewritten(tmp_path: Path) -> None:
    """The Kubernetes-Secret layout: keys.yaml -> ..data/keys.yaml, a relative link."""
    data = tmp_path / "..data"
    data.mkdir()
    target = data / "keys.yaml"
    add(target, "first")
    target.chmod(0o640)
    link = tmp_path / "keys.yaml"
    link.symlink_to(Path("..data") / "keys.yaml")

    add(link, "second")
    assert link.is_symlink() and link.readlink() == Path("..data") / "keys.yaml"
    assert names(target) == ["first", "second"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert run_keys("revoke", "first", "--api-keys", str(link))[0] == 0
    assert link.is_symlink() and names(target) == ["second"]
    # the temporary file was made beside the target (os.replace cannot cross file systems)
    assert strays(tmp_path) == [] and strays(data) == []
    assert sorted(item.name for item in tmp_path.iterdir()) == ["..data", "keys.yaml"]


def test_a_link_to_a_file_not_there_yet_creates_the_target(tmp_path: Path) -> None:
    link = tmp_path / "keys.yaml"
    link.symlink_to(tmp_path / "real.yaml")
    add(link, "first")
    assert link.is_symlink() and names(tmp_path / "real.yaml") == ["first"]
    assert stat.S_IMODE((tmp_path / "real.yaml").stat().st_mode) == 0o600


def test_revoking_in_a_missing_file_names_it_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    code, _, err = run_keys("revoke", "ci", "--api-keys", str(path))
    assert code == 1 and f"cannot read the key file {path}" in err
    assert not path.exists()


# -- commands at once -------------------------------------------------------------------------


def _add_many(path: str, prefix: str, start: Barrier) -> None:
    start.wait()
    for number in range(PER_PROCESS):
        add(Path(path), f"{prefix}-{number}")


def _revoke_many(path: str, prefix: str, start: Barrier) -> None:
    start.wait()
    for number in range(PER_PROCESS):
        code, _, err = run_keys("revoke", f"{prefix}-{number}", "--api-keys", path)
        assert code == 0, err


Job = Callable[[str, str, Barrier], None]


def race(*jobs: tuple[Job, str, str]) -> None:
    """Run each (function, path, prefix) in its own process, all released at once."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(jobs))
    processes = [
        context.Process(target=function, args=(path, prefix, start))
        for function, path, prefix in jobs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * len(processes)


def test_adds_from_two_processes_at_once_lose_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    race((_add_many, str(path), "a"), (_add_many, str(path), "b"))
    expected = {f"{prefix}-{n}" for prefix in "ab" for n in range(PER_PROCESS)}
    assert len(names(path)) == 2 * PER_PROCESS and set(names(path)) == expected
    assert strays(tmp_path) == []


def test_adds_and_revokes_at_once_lose_nothing_and_revive_nothing(tmp_path: Path) -> None:
    """A revoke lost to a concurrent add would leave the key valid."""
    path = tmp_path / "keys.yaml"
    for number in range(PER_PROCESS):
        add(path, f"old-{number}")
    race((_revoke_many, str(path), "old"), (_add_many, str(path), "new"))
    assert sorted(names(path)) == sorted(f"new-{n}" for n in range(PER_PROCESS))
