"""Making models smaller and faster, measured: convert to ONNX, optimize the graph, quantize,
prune, distill and fine-tune, with a report of size, quality, latency and memory before and
after, an accuracy gate, and deployment into a model repository.

Every function works on files and returns what it measured; the `modelport convert | optimize
| distill | finetune` commands are a thin layer over them.
"""

from modelport.optimize.convert import ConversionReport, convert
from modelport.optimize.data import Dataset, load_data
from modelport.optimize.errors import (
    ConversionMismatch,
    DataError,
    GateRefused,
    OptimizeError,
)
from modelport.optimize.measure import Measurement, MeasureOptions, measure, run_model
from modelport.optimize.prune import PruneResult, prune
from modelport.optimize.report import GateVerdict, Report, Variant, check_gate
from modelport.optimize.train import TrainConfig, TrainResult, distill, finetune
from modelport.optimize.transforms import optimize_graph, quantize, to_fp16
from modelport.optimize.workflow import Deployment, Outcome, Plan, assess, finish, optimize_model

__all__ = [
    "ConversionMismatch",
    "ConversionReport",
    "DataError",
    "Dataset",
    "Deployment",
    "GateRefused",
    "GateVerdict",
    "MeasureOptions",
    "Measurement",
    "OptimizeError",
    "Outcome",
    "Plan",
    "PruneResult",
    "Report",
    "TrainConfig",
    "TrainResult",
    "Variant",
    "assess",
    "check_gate",
    "convert",
    "distill",
    "finetune",
    "finish",
    "load_data",
    "measure",
    "optimize_graph",
    "optimize_model",
    "prune",
    "quantize",
    "run_model",
    "to_fp16",
]
