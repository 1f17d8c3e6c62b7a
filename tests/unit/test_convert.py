"""Conversion to ONNX from every framework, each checked here against the framework's own
predictions, plus distillation and fine-tuning."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from modelport.optimize import (
    ConversionMismatch,
    Dataset,
    OptimizeError,
    TrainConfig,
    convert,
    distill,
    finetune,
)
from tests.digits import Digits, mlp, onnx_accuracy, train
from tests.frameworks import save_torchscript


def run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))


@pytest.fixture(scope="module")
def sample(digit_data: Digits) -> Dataset:
    return digit_data.val.take(slice(0, 40))


@pytest.fixture(scope="module")
def trained_mlp(digit_data: Digits):  # type: ignore[no-untyped-def]
    return train(mlp(32), digit_data.train, epochs=5)


def torch_scores(module, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_torch_files(trained_mlp, sample: Dataset, tmp_path: Path, kind: str):  # type: ignore[no-untyped-def]
    import torch

    if kind == "torchscript":
        source = tmp_path / "model.pt"
        save_torchscript(trained_mlp, source)
    else:
        source = tmp_path / "model.pt2"
        batch = torch.export.Dim("batch")
        program = torch.export.export(
            trained_mlp, (torch.zeros(2, 64),), dynamic_shapes=({0: batch},)
        )
        torch.export.save(program, str(source))
    report = convert(source, sample, tmp_path / "model.onnx")
    assert report.outputs == ("output",) and report.max_abs < 1e-4
    x = np.concatenate([sample.x, sample.x[:3]])  # a batch size the export never saw
    np.testing.assert_allclose(
        run(report.path, x)["output"], torch_scores(trained_mlp, x), atol=1e-4
    )


def test_torch_module_by_import_path(
    trained_mlp,
    sample: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
):
    import torch

    (tmp_path / "digits_net.py").write_text(
        textwrap.dedent("""
        import torch

        def build():
            return torch.nn.Sequential(
                torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                torch.nn.ReLU(), torch.nn.Linear(32, 10),
            )
    """)
    )
    weights = tmp_path / "weights.pt"
    torch.save(trained_mlp.state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    report = convert("digits_net:build", sample, tmp_path / "m.onnx", weights=weights)
    assert report.framework == "torch-module" and report.inputs == ("input",)
    np.testing.assert_allclose(
        run(report.path, sample.x)["output"], torch_scores(trained_mlp, sample.x), atol=1e-4
    )
    with pytest.raises(OptimizeError, match="cannot import digits_net:missing"):
        convert("digits_net:missing", sample, tmp_path / "n.onnx")


def test_sklearn_needs_trust_and_keeps_served_names(digit_data: Digits, tmp_path: Path):
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(20, max_depth=8, random_state=0)
    forest.fit(digit_data.train.x, digit_data.train.labels())
    source = tmp_path / "model.joblib"
    joblib.dump(forest, source)
    with pytest.raises(OptimizeError, match="--trust"):
        convert(source, digit_data.val, tmp_path / "f.onnx")
    report = convert(source, digit_data.val, tmp_path / "f.onnx", trust=True)
    assert report.inputs == ("input",) and report.outputs == ("predict", "predict_proba")
    out = run(report.path, digit_data.val.x)
    np.testing.assert_array_equal(out["predict"], forest.predict(digit_data.val.x))
    np.testing.assert_allclose(
        out["predict_proba"], forest.predict_proba(digit_data.val.x), atol=1e-5
    )


def test_beyond_tolerance_fails_with_the_differences(digit_data: Digits, tmp_path: Path):
    import joblib
    from sklearn.linear_model import Ridge

    ridge = Ridge().fit(digit_data.train.x, digit_data.train.labels().astype(float))
    source = tmp_path / "ridge.joblib"
    joblib.dump(ridge, source)  # float64 in scikit-learn, float32 in ONNX: tiny differences
    report = convert(source, digit_data.val, tmp_path / "r.onnx", trust=True)
    assert 0 < report.max_abs < 1e-4
    with pytest.raises(ConversionMismatch, match=r"predict: \d+/\d+ beyond tolerance"):
        convert(source, digit_data.val, tmp_path / "r0.onnx", trust=True, atol=0, rtol=0)


def test_xgboost_and_lightgbm(digit_data: Digits, tmp_path: Path):
    import lightgbm
    import xgboost

    x, y = digit_data.train.x, digit_data.train.labels()
    booster = xgboost.XGBClassifier(n_estimators=5, max_depth=3, n_jobs=1).fit(x, y)
    booster.save_model(tmp_path / "model.json")
    report = convert(tmp_path / "model.json", digit_data.val, tmp_path / "x.onnx")
    out = run(report.path, digit_data.val.x)
    np.testing.assert_array_equal(out["predict"], booster.predict(digit_data.val.x))
    np.testing.assert_allclose(
        out["predict_proba"], booster.predict_proba(digit_data.val.x), atol=1e-5
    )
    gbm = lightgbm.LGBMRegressor(n_estimators=10, n_jobs=1, verbose=-1).fit(x, y.astype(float))
    gbm.booster_.save_model(tmp_path / "model.txt")
    report = convert(tmp_path / "model.txt", digit_data.val, tmp_path / "l.onnx")
    assert report.outputs == ("predict",)
    np.testing.assert_allclose(
        run(report.path, digit_data.val.x)["predict"].ravel(),
        gbm.predict(digit_data.val.x),
        rtol=1e-4,
        atol=1e-4,
    )


def test_keras_and_saved_model(sample: Dataset, tmp_path: Path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    model.save(tmp_path / "model.keras")
    report = convert(tmp_path / "model.keras", sample, tmp_path / "k.onnx")
    assert report.inputs == ("pixels",) and report.outputs == ("logits",)
    expected = model(sample.x).numpy()
    np.testing.assert_allclose(run(report.path, sample.x)["logits"], expected, atol=1e-5)
    model.export(tmp_path / "saved", verbose=False)
    report = convert(tmp_path / "saved", sample, tmp_path / "s.onnx")
    assert report.framework == "tensorflow" and report.inputs == ("pixels",)
    np.testing.assert_allclose(run(report.path, sample.x)[report.outputs[0]], expected, atol=1e-5)


def test_unknown_sources_are_named(tmp_path: Path, sample: Dataset):
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(OptimizeError, match=r"cannot tell the framework of model\.bin"):
        convert(tmp_path / "model.bin", sample, tmp_path / "o.onnx")
    with pytest.raises(OptimizeError, match="already ONNX"):
        (tmp_path / "m.onnx").write_bytes(b"")
        convert(tmp_path / "m.onnx", sample, tmp_path / "o.onnx")


def test_distilled_student_is_smaller_and_close(
    digits_onnx: Path, digit_data: Digits, tmp_path: Path
):
    result = distill(
        digits_onnx,
        digit_data.train,
        tmp_path / "student.onnx",
        student="mlp:32",
        config=TrainConfig(epochs=25),
    )
    teacher_size, student_size = digits_onnx.stat().st_size, result.path.stat().st_size
    assert teacher_size / student_size > 4
    weights = sum(
        numpy_helper.to_array(i).size for i in onnx.load(str(result.path)).graph.initializer
    )
    assert weights == result.parameters == 64 * 32 + 32 + 32 * 10 + 10
    teacher = onnx_accuracy(digits_onnx, digit_data.val)
    assert onnx_accuracy(result.path, digit_data.val) >= teacher - 0.04
    with pytest.raises(OptimizeError, match="unknown student"):
        distill(digits_onnx, digit_data.train, tmp_path / "s.onnx", student="huge_transformer")


def test_distillation_uses_the_teacher(digits_onnx: Path, digit_data: Digits, tmp_path: Path):
    """With alpha=1 the student sees only the teacher's outputs; it must learn to agree
    with the teacher, which it cannot without the soft targets."""
    unlabelled = Dataset(digit_data.train.inputs, None)
    result = distill(
        digits_onnx,
        unlabelled,
        tmp_path / "s.onnx",
        student="small_mlp",
        alpha=1.0,
        config=TrainConfig(epochs=25),
    )
    agree = np.mean(
        run(result.path, digit_data.val.x)["output"].argmax(1)
        == run(digits_onnx, digit_data.val.x)["output"].argmax(1)
    )
    assert agree > 0.9


def test_finetune_trains_a_new_head_on_a_frozen_backbone(digit_data: Digits, tmp_path: Path):
    import torch

    half = len(digit_data.train) // 2  # pretrain on digit classes with half the rows ...
    backbone_net = train(mlp(128), digit_data.train.take(slice(0, half)), epochs=15)
    backbone = torch.nn.Sequential(*list(backbone_net)[:4])  # ... keep the trunk
    save_torchscript(backbone, tmp_path / "backbone.pt")
    rest = digit_data.train.take(slice(half, None))  # and learn a new task: the digit mod 3
    data = Dataset.of(rest.x, rest.labels() % 3)
    result = finetune(
        tmp_path / "backbone.pt",
        data,
        tmp_path / "tuned.onnx",
        num_classes=3,
        hidden=32,
        config=TrainConfig(epochs=20),
    )
    assert result.trainable == 128 * 32 + 32 + 32 * 3 + 3
    assert result.parameters == result.trainable + sum(p.numel() for p in backbone.parameters())
    held_out = Dataset.of(digit_data.val.x, digit_data.val.labels() % 3)
    assert onnx_accuracy(result.path, held_out) > 0.9
    exported = [numpy_helper.to_array(i) for i in onnx.load(str(result.path)).graph.initializer]
    for parameter in backbone.parameters():  # frozen: the backbone's weights are unchanged
        original = parameter.detach().numpy()
        assert any(
            w.shape in (original.shape, original.T.shape)
            and (np.array_equal(w, original) or np.array_equal(w, original.T))
            for w in exported
        )
    with pytest.raises(OptimizeError, match=r"labels must be 0\.\.1"):
        finetune(tmp_path / "backbone.pt", data, tmp_path / "x.onnx", num_classes=2)
