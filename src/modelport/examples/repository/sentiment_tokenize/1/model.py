"""A Python model: text in (BYTES), features out. Counts words from two small word lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class Model:
    def load(self, context):
        # files beside model.py belong to this version; here, the word lists
        lexicon = json.loads((Path(context.version_dir) / "lexicon.json").read_text())
        self.positive = set(lexicon["positive"])
        self.negative = set(lexicon["negative"])

    def preprocess(self, inputs):
        return [text.decode("utf-8").lower().split() for text in inputs["TEXT"]]

    def predict(self, documents):
        features = np.zeros((len(documents), 2), np.float32)
        for row, words in enumerate(documents):
            features[row, 0] = sum(word.strip(".,!?") in self.positive for word in words)
            features[row, 1] = sum(word.strip(".,!?") in self.negative for word in words)
        return {"FEATURES": features}
