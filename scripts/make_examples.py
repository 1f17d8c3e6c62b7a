"""Regenerate the bundled example repository's ONNX files: python scripts/make_examples.py

The Python models (sentiment_tokenize, sentiment_label) and the sentiment pipeline are source
files kept in the repository as they are.
"""

from __future__ import annotations

import numpy as np

from modelport.examples import onnx_models
from modelport.settings import EXAMPLE_REPOSITORY

CONFIGS = {
    "mlp_classifier": """\
# A tiny classifier (16 features -> 4 logits) with random weights. Everything below is optional:
# without this file the names, datatypes and shapes come from model.onnx itself.
platform: onnx
max_batch_size: 64
inputs:
  - {name: input, datatype: FP32, shape: [-1, 16]}
outputs:
  - {name: output, datatype: FP32, shape: [-1, 4]}
version_policy: {latest: 1}
runtime:
  intra_op_threads: 1
  graph_optimization_level: all
""",
}


# (positive words, negative words) -> (negative, neutral, positive) logits
SENTIMENT_WEIGHTS = np.array([[-1.5, 0.0, 1.5], [1.5, 0.0, -1.5]])
SENTIMENT_BIAS = np.array([0.0, 0.75, 0.0])


def main() -> None:
    models = {
        "add_sub": onnx_models.add_sub("FP32", 16),
        "mlp_classifier": onnx_models.mlp((16, 32, 4), seed=7),
        "text_lower": onnx_models.text_lower(),
        "sentiment_classify": onnx_models.linear(SENTIMENT_WEIGHTS, SENTIMENT_BIAS),
    }
    for name, model in models.items():
        version_dir = EXAMPLE_REPOSITORY / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        onnx_models.save(model, str(version_dir / "model.onnx"))
        if name in CONFIGS:
            (EXAMPLE_REPOSITORY / name / "config.yaml").write_text(CONFIGS[name])
        print(f"wrote {version_dir / 'model.onnx'}")


if __name__ == "__main__":
    main()
