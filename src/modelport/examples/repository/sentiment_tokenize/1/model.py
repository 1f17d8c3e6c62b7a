"""A Python model: text in (BYTES), features out. Counts words from two small word lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modelport.core.errors import InvalidInput


class Model:
    def load(self, context):
        # files beside model.py belong to this version; here, the word lists
        lexicon = json.loads((Path(context.version_dir) / "lexicon.json").read_text())
        self.positive = set(lexicon["positive"])
        self.negative = set(lexicon["negative"])

    def preprocess(self, inputs):
        return [_decode(i, text).lower().split() for i, text in enumerate(inputs["TEXT"])]

    def predict(self, documents):
        features = np.zeros((len(documents), 2), np.float32)
        for row, words in enumerate(documents):
            features[row, 0] = sum(word.strip(".,!?") in self.positive for word in words)
            features[row, 1] = sum(word.strip(".,!?") in self.negative for word in words)
        return {"FEATURES": features}


def _decode(index, text):
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        # InvalidInput answers 400 with this message; any other exception is a 500
        raise InvalidInput(
            f"input 'TEXT': element {index} is not valid UTF-8 "
            f"(byte 0x{text[exc.start]:02x} at offset {exc.start})"
        ) from None
