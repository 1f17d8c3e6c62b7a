"""A Python model: logits in, a label (BYTES) and its probability out."""

from __future__ import annotations

import numpy as np

LABELS = ("negative", "neutral", "positive")


class Model:
    def predict(self, inputs):
        logits = inputs["LOGITS"]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        best = probabilities.argmax(axis=1)
        return {
            "LABEL": [LABELS[i] for i in best],
            "SCORE": probabilities[np.arange(len(best)), best],
        }
