"""Runtime factories, and how one reaches a worker process.

A worker process (executor.ProcessHost) creates its own runtime, so it is sent the factory the
registry used, not a platform name it would have to look up in a registry of its own. The
factory travels pickled, which Python does by reference for functions and classes: a module-level
one goes as its module and name, while a lambda or a closure cannot go at all.

A factory is either a callable or a "module:qualname" reference. References are how the built-in
runtimes and the entry-point group are registered: naming a runtime imports neither its module
nor its framework until a model needs it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from importlib import import_module
from typing import TypeAlias, cast

from modelport.core.errors import ConfigError, ModelLoadError
from modelport.core.runtime import Runtime

RuntimeFactory: TypeAlias = Callable[[], Runtime]
FactoryRef: TypeAlias = RuntimeFactory | str
"""A callable that returns a Runtime, or a "module:qualname" string naming one."""


def resolve(reference: str) -> RuntimeFactory:
    """The callable a "module:qualname" reference names (importing its module)."""
    module_name, colon, qualname = (part.strip() for part in reference.partition(":"))
    if not colon or not module_name or not qualname:
        raise ConfigError(f"runtime factory '{reference}' is not of the form 'module:qualname'")
    target: object = import_module(module_name)
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"runtime factory '{reference}': {module_name} has no {qualname}"
            ) from None
    if not callable(target):
        raise ConfigError(
            f"runtime factory '{reference}' is a {type(target).__name__}, not callable"
        )
    return cast(RuntimeFactory, target)  # by the registrant's word: nothing checks its result


def create(factory: FactoryRef) -> Runtime:
    """A new runtime from a factory or a reference to one."""
    return (resolve(factory) if isinstance(factory, str) else factory)()


def describe(factory: FactoryRef) -> str:
    if isinstance(factory, str):
        return factory
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", None)
    return f"{module}.{name}" if module and name else repr(factory)


def for_worker(factory: FactoryRef, platform: str) -> bytes:
    """The factory pickled for a worker process; ModelLoadError if it cannot be sent."""
    try:
        return pickle.dumps(factory)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ModelLoadError(
            f"the runtime factory for platform '{platform}' ({describe(factory)}) cannot be sent "
            f"to a worker process ({exc}); register a module-level function or class, or a "
            "'module:qualname' string, or set `runtime: {executor: thread}` in config.yaml"
        ) from None
