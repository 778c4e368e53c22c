"""Post-training quantisation, fast: models trained in-process for a few seconds and written as
real model directories; quantised copies load without unpickling, and predict/evaluate run them."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raydl.batches import build_kind
from raydl.cli import main
from raydl.data import prepare
from raydl.errors import DataError, SpecError
from raydl.inference import evaluate
from raydl.model_dir import load_model, manifest, write_model_dir
from raydl.models import build_model
from raydl.quantize import (
    LAYOUT_FILE,
    flatten_state,
    load_flat,
    quantize_dir,
    quantized_module,
    unflatten_state,
)
from raydl.spec import spec_from_dict
from raydl.tasks import build_task


def _trained_dir(tmp_path, model: dict, epochs: int = 3):
    """A real model directory of `model` trained in-process on digits_images for a few epochs."""
    spec = spec_from_dict({"data": {"source": "digits_images", "standardize": "global"}, "model": model, "tracking": "none"})
    prepared = prepare(spec.data)
    task, kind = build_task(prepared.prep, spec.loss), build_kind(prepared.prep)
    torch.manual_seed(0)
    net = build_model(spec.model, kind, task.n_outputs())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    cols = {k: torch.as_tensor(v) for k, v in prepared.train.cols.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: one thread is as fast, and far faster on a crowded machine
    try:
        for _ in range(epochs):
            net.train()
            for i in range(0, len(cols["y"]), 32):
                batch = kind.collate({k: v[i : i + 32] for k, v in cols.items()})
                loss = task.loss(net(batch), batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    path = write_model_dir(tmp_path / f"model-{model['name']}", net.state_dict(), spec, prepared.prep,
                           {"final": {}, "history": []}, manifest(spec, prepared.fingerprint))
    return path


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    return _trained_dir(tmp_path_factory.mktemp("q"), {"name": "mlp", "hidden": [64]})


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory):
    return _trained_dir(tmp_path_factory.mktemp("q"), {"name": "cnn", "channels": [4, 8], "norm": "batch"}, epochs=2)


def test_quantised_state_dicts_become_plain_tensors_and_back():
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    q = quantized_module(net, "dynamic")
    tensors, layout = flatten_state(q.state_dict())
    assert all(isinstance(v, torch.Tensor) and not v.is_quantized for v in tensors.values())
    assert any(v.dtype == torch.int8 for v in tensors.values())
    json.dumps(layout)  # the layout is plain JSON
    assert set(unflatten_state(tensors, layout)) == set(q.state_dict())
    q2 = load_flat(quantized_module(net, "dynamic"), tensors, layout)
    x = torch.randn(5, 8)
    torch.testing.assert_close(q2(x), q(x))


@pytest.mark.parametrize("method", ["dynamic", "fp16", "bf16"])
def test_mlp_quantised_copy_keeps_its_accuracy_and_shrinks(mlp_dir, tmp_path, method):
    out = tmp_path / f"q-{method}"
    report = quantize_dir(mlp_dir, out, method)
    before, after = report["before"]["test_accuracy"], report["after"]["test_accuracy"]
    assert before > 0.9 and after >= before - 0.01
    assert report["weights_bytes"]["after"] < report["weights_bytes"]["before"] * (0.6 if method != "dynamic" else 0.45)
    assert set(report["latency_ms_per_sample"]) == {"batch_1", "batch_256"}
    # The copy is a model directory: its weights hold tensors only (loadable with weights_only=True) ...
    tensors = torch.load(out / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert json.loads((out / "metrics.json").read_text())["quantization"]["method"] == method
    # ... that load_model rebuilds, and evaluate scores as the report said (on the test split).
    loaded = load_model(out)
    assert evaluate(out, "digits_images")["eval_accuracy"] >= evaluate(mlp_dir, "digits_images")["eval_accuracy"] - 0.01
    assert loaded.module is not None


def test_cnn_static_int8_calibrates_fuses_and_runs_through_predict_and_evaluate(cnn_dir, tmp_path, capsys):
    out = tmp_path / "cnn-int8"
    assert main(["quantize", str(cnn_dir), "--method", "static", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calibration_rows"] == 512
    # a tiny, briefly trained net (the 1-point bar is checked on cnn_digits.yaml's model, slow test / bench)
    assert abs(report["after"]["test_accuracy"] - report["before"]["test_accuracy"]) <= 0.05
    def payload(d):  # tensor bytes (a net this small has as many bytes of file overhead as of weights)
        return sum(v.nbytes for v in torch.load(d / "weights.pt", weights_only=True).values())

    assert payload(out) < payload(cnn_dir) * 0.4
    module = load_model(out).module
    names = {type(m).__name__ for m in module.modules()}
    assert "ConvReLU2d" in names and "Quantize" in names and "BatchNorm2d" not in names  # conv-bn-relu fused, int8
    assert main(["predict", str(out), "digits_images", "--out", str(tmp_path / "p.parquet")]) == 0
    preds = pq.read_table(tmp_path / "p.parquet")
    assert preds.num_rows == 1797 and "prob_9" in preds.column_names
    assert main(["evaluate", str(out), "digits_images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval_accuracy"] > 0.3


def test_static_int8_refuses_residual_models_and_half_weights_load_back(tmp_path, capsys):
    resnet = build_model(spec_from_dict({"data": {"source": "digits_images"}, "model": {"name": "resnet", "widths": [4]}}).model,
                         build_kind(prepare(spec_from_dict({"data": {"source": "digits_images"}}).data).prep), 10)
    with pytest.raises(SpecError, match="static int8 takes a plain sequence"):
        quantized_module(resnet, "static", iter([]))
    lstm = torch.nn.Sequential(torch.nn.LSTM(4, 4))
    with pytest.raises(SpecError, match="recurrent layers"):
        quantized_module(lstm, "dynamic")


def test_bad_quantize_input_is_one_line_exit_2(mlp_dir, tmp_path, capsys):
    code = main(["quantize", str(tmp_path / "missing"), "--method", "dynamic", "--out", str(tmp_path / "o")])
    assert code == 2 and "not a raydl model directory" in capsys.readouterr().err
    out = tmp_path / "once"
    quantize_dir(mlp_dir, out, "fp16")
    code = main(["quantize", str(out), "--method", "dynamic", "--out", str(tmp_path / "twice")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "already quantised" in err and len(err.splitlines()) == 1
    assert main(["quantize", str(mlp_dir), "--method", "dynamic", "--out", str(mlp_dir)]) == 2
    assert "the model directory itself" in capsys.readouterr().err


def test_a_quantised_directory_with_a_pickle_or_a_tampered_layout_is_refused(mlp_dir, tmp_path):
    out = tmp_path / "dyn"
    quantize_dir(mlp_dir, out, "dynamic")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    good = (out / "weights.pt").read_bytes()
    (out / "weights.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="not loadable"):
        load_model(out)
    (out / "weights.pt").write_bytes(good)
    layout = json.loads((out / LAYOUT_FILE).read_text())
    layout["layout"].pop(next(iter(layout["layout"])))
    (out / LAYOUT_FILE).write_text(json.dumps(layout))
    with pytest.raises(DataError, match="do not match"):
        load_model(out)
    (out / LAYOUT_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not a raydl quantisation layout"):
        load_model(out)
    assert np.isfinite(evaluate(mlp_dir, "digits_images")["eval_accuracy"])
