"""Student architectures for distillation, by name.

- `tiny_mlp`, `small_mlp`, or `mlp:H1,H2,...` (hidden widths): a multilayer perceptron over the
  flattened input;
- `small_cnn`, or `cnn:C1,C2,...` (channels per 3x3 conv block, each followed by 2x2 pooling
  while the image is at least 2 pixels wide): for image inputs shaped [N, C, H, W] or [N, H, W];
- `package.module:Name`: the user's own torch module (a class or a function returning one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelport.optimize.errors import OptimizeError

NAMED = {"tiny_mlp": "mlp:32", "small_mlp": "mlp:64", "small_cnn": "cnn:8,16"}


def build_student(spec: str, input_shape: Sequence[int], classes: int) -> Any:
    """A torch module mapping inputs of `input_shape` (no batch dimension) to `classes` logits."""
    family, _, widths = NAMED.get(spec, spec).partition(":")
    if family in ("mlp", "cnn") and (widths == "" or widths.replace(",", "").isdigit()):
        sizes = [int(w) for w in widths.split(",") if w]
        if family == "mlp":
            return _mlp(input_shape, sizes, classes)
        return _cnn(input_shape, sizes, classes)
    if ":" in spec:
        from modelport.optimize.from_torch import import_object

        return import_object(spec)
    raise OptimizeError(
        f"unknown student {spec!r}: use {sorted(NAMED)}, mlp:WIDTHS, cnn:CHANNELS or "
        "package.module:Name"
    )


def _mlp(input_shape: Sequence[int], hidden: list[int], classes: int) -> Any:
    import torch

    features = 1
    for size in input_shape:
        features *= int(size)
    layers: list[Any] = [torch.nn.Flatten()]
    for width in hidden:
        layers += [torch.nn.Linear(features, width), torch.nn.ReLU()]
        features = width
    layers.append(torch.nn.Linear(features, classes))
    return torch.nn.Sequential(*layers)


def _cnn(input_shape: Sequence[int], channels: list[int], classes: int) -> Any:
    import torch

    if len(input_shape) not in (2, 3):
        raise OptimizeError(
            f"a cnn student takes images [N, C, H, W] or [N, H, W]; the data is "
            f"[N, {', '.join(map(str, input_shape))}]"
        )
    layers: list[Any] = []
    if len(input_shape) == 2:
        layers.append(torch.nn.Unflatten(1, (1, *input_shape)))
        width, depth = input_shape[-1], 1
    else:
        width, depth = input_shape[-1], input_shape[0]
    for count in channels or [8, 16]:
        layers += [torch.nn.Conv2d(depth, count, 3, padding=1), torch.nn.ReLU()]
        if width >= 2:
            layers.append(torch.nn.MaxPool2d(2))
            width //= 2
        depth = count
    layers += [
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(depth, classes),
    ]
    return torch.nn.Sequential(*layers)


def parameter_count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())
