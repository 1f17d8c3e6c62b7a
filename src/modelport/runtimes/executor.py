"""Where a model version's batches run, chosen from what its runtime declares.

Runtimes that release the GIL (onnxruntime, torch, xgboost, tensorflow) run on a thread per
instance in the server process. Runtimes that hold it (scikit-learn, plain Python models) would
starve the event loop that parses every request, so each instance is a worker process with its own
copy of the model, and batches travel to it pickled. `runtime.executor` in config.yaml overrides
the choice; benchmarks/runtimes.py measures it.

A worker creates its runtime with the factory that created the server's (factories.py), so a
registry's own runtimes work there too. What a worker raises comes back as a core error or a
WorkerException, which the server process can always unpickle.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from modelport.core import errors
from modelport.core.config import ModelConfig
from modelport.core.errors import InferenceFailed, ModelLoadError, ModelportError
from modelport.core.runtime import Arrays, LoadedModel, ModelHost, Runtime, Signature
from modelport.core.stats import MovingAverage
from modelport.runtimes.factories import FactoryRef, create, for_worker

log = logging.getLogger("modelport.executor")

Outputs = tuple[str, ...] | None
Infer = Callable[[Arrays, Outputs], Arrays]

PARENT_CHECK_SECS = 1.0
INLINE_MAX_NS = 150_000
"""Runs shorter than this (moving average) cost less than the two thread wake-ups around them,
so they run on the event loop: mlp at c=1, p50 620-710 -> 400-470 us; at c=32 +5-50 % (session
5, docs/architecture.md departure 17). A long run moves the average, and the next runs go back
to the instance threads."""
WARM_TIMEOUT_SECS = 300.0
WARM_TASK_SECS = 0.05


def host_model(
    runtime: Runtime,
    factory: FactoryRef | None,
    version_dir: Path,
    config: ModelConfig,
    label: str,
) -> ModelHost:
    """Load a version's instances where its runtime should run them (blocking). Worker
    processes create their runtime with `factory`, the one that created `runtime`."""
    model_file = runtime.find_model_file(version_dir, config)
    if config.sha256 is not None:
        check_sha256(model_file, config.sha256)
    mode = config.runtime.executor
    if mode == "auto":
        mode = "thread" if runtime.capabilities.releases_gil else "process"
    if mode == "process":
        if factory is None:
            raise ModelLoadError(
                f"{label}: runtime '{runtime.platform}' was not created by the registry, so a "
                "worker process cannot create it; set `runtime: {executor: thread}`"
            )
        return ProcessHost(for_worker(factory, runtime.platform), version_dir, config, label)
    copies = 1 if runtime.capabilities.thread_safe else config.instance_count
    models: list[LoadedModel] = []
    try:
        for _ in range(copies):
            models.append(runtime.load(version_dir, config))
    except BaseException:
        for model in models:
            model.close()
        raise
    return ThreadHost(models, config.instance_count, label)


def check_sha256(path: Path | None, expected: str) -> None:
    if path is None or not path.is_file():
        raise ModelLoadError("sha256 in config.yaml pins a single model file, and there is none")
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise ModelLoadError(
            f"{path.name} has sha256 {actual}, but config.yaml pins {expected.lower()}; "
            "the file changed since it was pinned"
        )


def _timed(infer: Infer, inputs: Arrays, outputs: Outputs) -> tuple[Arrays, int]:
    start = time.perf_counter_ns()
    result = infer(inputs, outputs)
    return result, time.perf_counter_ns() - start


class ThreadHost:
    """Instances as threads of this process. A runtime that is not thread-safe gets one copy of
    the model per instance, and each batch borrows a free copy.

    A model whose runs are shorter than INLINE_MAX_NS (moving average) runs on the event loop
    itself: handing it to an instance thread and back costs more than the run. Only a single,
    thread-safe copy does (borrowing a copy could block the loop)."""

    kind = "thread"

    def __init__(self, models: list[LoadedModel], instances: int, label: str) -> None:
        self._models = models
        self._pool = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=label)
        self._free: queue.SimpleQueue[LoadedModel] | None = None
        if len(models) > 1:
            self._free = queue.SimpleQueue()
            for model in models:
                self._free.put(model)
        self._infer = models[0].infer if self._free is None else self._borrowed
        self._run_time = MovingAverage(INLINE_MAX_NS)  # on the threads until measured

    def signature(self) -> Signature:
        return self._models[0].signature()

    async def run(self, inputs: Arrays, outputs: Outputs) -> tuple[Arrays, int]:
        if self._free is None and self._run_time.ns < INLINE_MAX_NS:
            result = _timed(self._infer, inputs, outputs)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._pool, _timed, self._infer, inputs, outputs)
        self._run_time.add(result[1])
        return result

    def _borrowed(self, inputs: Arrays, outputs: Outputs) -> Arrays:
        assert self._free is not None
        model = self._free.get()
        try:
            return model.infer(inputs, outputs)
        finally:
            self._free.put(model)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for model in self._models:
            model.close()


class ProcessHost:
    """Instances as worker processes (spawned, never forked: the server runs threads and gRPC),
    each loading its own copy of the model. A worker that dies is replaced by a fresh pool.

    `factory` is a pickled runtime factory (factories.for_worker): unpickled inside the worker,
    so a reference the worker cannot import fails the load with a message, not the pool."""

    kind = "process"

    def __init__(self, factory: bytes, version_dir: Path, config: ModelConfig, label: str) -> None:
        self._spec = (factory, str(version_dir), config)
        self._instances = config.instance_count
        self._label = label
        self._lock = threading.Lock()
        self._pool = self._start_pool()
        try:
            self._signature = self._warm(self._pool)
        except BaseException:
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise

    def _start_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._instances,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_load,
            initargs=(os.getpid(), *self._spec),
        )

    def _warm(self, pool: Executor) -> Signature:
        """Start every worker now and wait until each has loaded the model, so the first
        request does not pay for it and a load error fails the load, not a request. One worker
        may take several warm-up tasks while another is still starting: ask until each answered."""
        seen: dict[int, Signature] = {}
        deadline = time.monotonic() + WARM_TIMEOUT_SECS
        while len(seen) < self._instances:
            if time.monotonic() > deadline:
                raise ModelLoadError(
                    f"{self._label}: {len(seen)} of {self._instances} worker processes loaded "
                    f"the model within {WARM_TIMEOUT_SECS:g} s"
                )
            futures = [pool.submit(_worker_signature) for _ in range(self._instances - len(seen))]
            try:
                for future in futures:
                    pid, signature = future.result()
                    seen[pid] = signature
            except BrokenProcessPool:
                raise ModelLoadError(
                    f"a worker process for {self._label} exited while loading the model"
                ) from None
        return next(iter(seen.values()))

    def signature(self) -> Signature:
        return self._signature

    async def run(self, inputs: Arrays, outputs: Outputs) -> tuple[Arrays, int]:
        loop = asyncio.get_running_loop()
        pool = self._pool
        try:
            return await loop.run_in_executor(pool, _worker_infer, inputs, outputs)
        except BrokenProcessPool:
            await asyncio.to_thread(self._replace, pool)
            raise InferenceFailed(
                f"a worker process of {self._label} exited while running this batch; it has been "
                "replaced"
            ) from None

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken:
                return  # another failed batch already replaced it
            log.error("%s: a worker process died; starting a new pool", self._label)
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start_pool()

    def close(self) -> None:
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)


# ---- inside a worker process ---------------------------------------------------------------


class WorkerException(Exception):
    """An exception a model raised in a worker process, as the server process receives it when
    its own type cannot travel: its type's name and message. That type may live in a module
    only the worker has (a model.py), and a result the server cannot unpickle would break the
    whole pool. The worker's traceback comes with it, as its __cause__."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.original_type = type_name
        """The name of the type it stands for, which the batcher reports (core/batcher.py)."""

    def __reduce__(self) -> tuple[type[WorkerException], tuple[str, str]]:
        return WorkerException, (self.original_type, str(self))


def _portable(exc: Exception) -> Exception:
    """`exc`, or what stands for it, as the server process can always unpickle it."""
    if isinstance(exc, ModelportError):
        return _core_error(exc)
    if type(exc).__module__ == "builtins":
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # an argument that does not pickle, say
            pass
        else:
            return exc
    return WorkerException(type(exc).__name__, str(exc))


def _core_error(exc: ModelportError) -> ModelportError:
    """`exc` as its nearest class in core.errors, with its kind and message: one the server
    process can always unpickle (a subclass may live in a module only the worker has)."""
    for cls in type(exc).__mro__:
        if cls.__module__ == errors.__name__ and issubclass(cls, ModelportError):
            return exc if cls is type(exc) else cls(exc.message)
    raise AssertionError("ModelportError is in the MRO of every ModelportError")


_worker_model: LoadedModel | None = None
_worker_error: ModelportError | None = None


def _worker_load(server: int, factory: bytes, version_dir: str, config: ModelConfig) -> None:
    global _worker_model, _worker_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    threading.Thread(target=_exit_with_parent, args=(server,), daemon=True).start()
    try:
        runtime = create(pickle.loads(factory))
        _worker_model = runtime.load(Path(version_dir), config)
    except ModelportError as exc:
        _worker_error = _core_error(exc)
    except Exception as exc:
        _worker_error = ModelLoadError(f"{type(exc).__name__}: {exc}")


def _exit_with_parent(parent: int) -> None:
    """A server killed outright (SIGKILL, OOM) cannot stop its workers; they notice and exit."""
    while os.getppid() == parent:  # false at once if the server died while this one started
        time.sleep(PARENT_CHECK_SECS)
    os._exit(0)


def _loaded() -> LoadedModel:
    if _worker_error is not None:
        raise _worker_error
    assert _worker_model is not None
    return _worker_model


def _worker_signature() -> tuple[int, Signature]:
    signature = _loaded().signature()
    time.sleep(WARM_TASK_SECS)  # hold this worker so a sibling still starting takes the next
    return os.getpid(), signature


def _worker_infer(inputs: Arrays, outputs: Outputs) -> tuple[Arrays, int]:
    try:
        return _timed(_loaded().infer, inputs, outputs)
    except Exception as exc:
        portable = _portable(exc)
        if portable is exc:
            raise
        raise portable from exc
