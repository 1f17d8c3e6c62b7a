"""torch's thread settings from config.yaml: setting them never fails a load (torch allows the
inter-op pool to be sized once per process; later settings are logged and kept)."""

from __future__ import annotations

import pytest

from modelport.core.config import ModelConfig, RuntimeOptions

pytest.importorskip("torch")

from modelport.runtimes import torch_runtime  # after the skip: it imports torch


def test_inter_op_threads_are_set_or_kept_not_an_error() -> None:
    options = RuntimeOptions(intra_op_threads=1, inter_op_threads=1)
    for _ in range(2):  # the second time torch refuses, and the first setting is kept
        torch_runtime._set_threads(ModelConfig(runtime=options))
