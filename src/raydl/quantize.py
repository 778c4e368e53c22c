"""Post-training quantisation of a model directory: `raydl quantize MODEL_DIR --method M --out DIR`.

Methods:
- `dynamic`: int8 weights of every `nn.Linear` (per-tensor scale), activations quantised on the fly
  per batch (fbgemm/x86 int8 kernels). Any model with linear layers (the MLP, every head).
- `static`: int8 weights (per-channel) and int8 activations with scales calibrated on train rows;
  conv-bn-relu and linear-relu fused first. Models that are a plain sequence of supported layers
  (the MLP, `cnn`, `mobilenet_v1`); residual additions (resnet, mobilenet_v2) are refused.
- `fp16` / `bf16`: the floating weights stored in half precision (half the size); loaded back to
  float32 for CPU inference.

The int8 kernels are PyTorch's eager-mode `torch.ao.quantization` (present in torch 2.13 but
deprecated in favour of torchao; torchao 0.18 installs beside torch 2.13 CPU but its int8 path ran
about 100x slower per sample here, see bench/RESULTS.md). Nothing is pickled: `weights.pt` holds
plain tensors (int8 values, scales, zero points, float biases) and `quantization.json` their
layout; loading rebuilds the quantised modules from the float architecture and fills them in.
The output is a model directory: `raydl predict` and `raydl evaluate` run it like any other.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raydl.errors import DataError, SpecError
from raydl.quantize_cli import METHODS

LAYOUT_FILE = "quantization.json"
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)


@contextmanager
def _quiet() -> Iterator[None]:
    """torch.ao.quantization warns on every call that it is deprecated; say it once, in the docs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class QuantIO(nn.Module):
    """Quantise the input tensor, run the model, dequantise the output (static int8)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.model, self.dequant = QuantStub(), model, DeQuantStub()

    def forward(self, batch: Any) -> torch.Tensor:
        from raydl.batches import model_input

        return self.dequant(self.model(self.quant(model_input(batch))))


def _static_ok(model: nn.Module) -> str | None:
    """The first module that eager static int8 cannot run in sequence, or None."""
    from raydl.models import OneTensor
    from raydl.models.cnn import ToImage

    plain = (nn.Sequential, OneTensor, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.MaxPool2d,
             nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity, ToImage)
    for name, m in model.named_modules():
        if type(m) not in plain:
            return f"{name or 'the model'} ({type(m).__name__})"
    return None


def _fusions(model: nn.Module) -> list[list[str]]:
    """Names of conv-bn-relu, conv-bn, conv-relu, linear-bn, linear-relu runs in every Sequential."""
    patterns = [(nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv2d, nn.ReLU),
                (nn.Linear, nn.BatchNorm1d), (nn.Linear, nn.ReLU)]
    groups = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        i = 0
        while i < len(kids):
            for pat in patterns:
                run = kids[i : i + len(pat)]
                if len(run) == len(pat) and all(type(m) is t for (_, m), t in zip(run, pat)):
                    groups.append([f"{prefix}.{n}" if prefix else n for n, _ in run])
                    i += len(pat) - 1
                    break
            i += 1
    return groups


def quantized_module(model: nn.Module, method: str, calibration: Iterator[Any] | None = None) -> nn.Module:
    """The quantised version of a float model (a copy; `model` is left as it is). `calibration`
    yields batches for static int8 (without it, one all-zero batch sets up the observers only;
    `rebuild` then loads the calibrated values)."""
    model = copy.deepcopy(model).eval()
    if method in HALF:
        return model
    recurrent = [n for n, m in model.named_modules() if isinstance(m, RECURRENT)]
    if recurrent:
        raise SpecError(f"--method {method}: the model has recurrent layers ({', '.join(recurrent)}); their int8 packed "
                        "cell parameters cannot be stored as plain tensors yet: use --method fp16 or bf16")
    with _quiet():
        from torch.ao import quantization as tq

        if method == "dynamic":
            return tq.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        bad = _static_ok(model)
        if bad is not None:
            raise SpecError(f"--method static: {bad} cannot run in eager int8 (static int8 takes a plain sequence of "
                            "conv/linear/batch-norm/ReLU/pooling layers, e.g. mlp, cnn, mobilenet_v1); use --method dynamic or fp16")
        tq.fuse_modules(model, _fusions(model), inplace=True)
        wrapped = QuantIO(model).eval()
        wrapped.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(wrapped, inplace=True)
        with torch.no_grad():
            for batch in calibration:
                wrapped(batch)
        return tq.convert(wrapped, inplace=True)


def flatten_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A quantised state_dict as plain tensors plus a JSON layout (quantised tensors become int8
    values + scales + zero points; packed (weight, bias) tuples their parts; dtypes their names)."""
    tensors: dict[str, torch.Tensor] = {}

    def put(key: str, v: Any) -> Any:
        if v is None:
            return {"none": True}
        if isinstance(v, torch.dtype):
            return {"dtype": str(v).removeprefix("torch.")}
        if isinstance(v, tuple | list):
            return {"tuple": [put(f"{key}.{i}", x) for i, x in enumerate(v)]}
        if not isinstance(v, torch.Tensor):
            raise SpecError(f"cannot store {key} ({type(v).__name__}) as plain tensors")
        v = v.detach()
        if not v.is_quantized:
            tensors[key] = v.clone()
            return {"tensor": key}
        tensors[f"{key}.int"] = v.int_repr().clone()
        if v.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            tensors[f"{key}.scale"] = v.q_per_channel_scales().clone()
            tensors[f"{key}.zero_point"] = v.q_per_channel_zero_points().clone()
            return {"qtensor": key, "dtype": str(v.dtype).removeprefix("torch."), "axis": int(v.q_per_channel_axis())}
        tensors[f"{key}.scale"] = torch.tensor([v.q_scale()], dtype=torch.float64)
        tensors[f"{key}.zero_point"] = torch.tensor([v.q_zero_point()], dtype=torch.int64)
        return {"qtensor": key, "dtype": str(v.dtype).removeprefix("torch."), "axis": None}

    layout = {k: put(k, v) for k, v in state.items()}
    return tensors, layout


def unflatten_state(tensors: dict[str, torch.Tensor], layout: dict[str, Any]) -> dict[str, Any]:
    def get(node: dict) -> Any:
        if "none" in node:
            return None
        if "dtype" in node and "qtensor" not in node:
            return getattr(torch, node["dtype"])
        if "tuple" in node:
            return tuple(get(x) for x in node["tuple"])
        if "tensor" in node:
            return tensors[node["tensor"]]
        k, dtype = node["qtensor"], getattr(torch, node["dtype"])
        ints, scale, zp = tensors[f"{k}.int"], tensors[f"{k}.scale"], tensors[f"{k}.zero_point"]
        with _quiet():
            if node["axis"] is None:
                q = torch._make_per_tensor_quantized_tensor(ints, float(scale[0]), int(zp[0]))
            else:
                q = torch._make_per_channel_quantized_tensor(ints, scale, zp, node["axis"])
        assert q.dtype == dtype
        return q

    return {k: get(v) for k, v in layout.items()}


def load_flat(skeleton: nn.Module, tensors: dict[str, torch.Tensor], layout: dict[str, Any]) -> nn.Module:
    """Fill a quantised skeleton from plain tensors and their layout (with the skeleton's own
    state-dict metadata: the quantised modules read their format version from it)."""
    from collections import OrderedDict

    state = OrderedDict(unflatten_state(tensors, layout))
    state._metadata = skeleton.state_dict()._metadata  # type: ignore[attr-defined]
    skeleton.load_state_dict(state)
    return skeleton


def save_quantized(module: nn.Module, method: str, d: Path) -> None:
    """weights.pt (plain tensors) and quantization.json (method + layout) into directory `d`."""
    state = module.state_dict()
    if method in HALF:
        tensors = {k: v.to(HALF[method]) if v.is_floating_point() else v for k, v in state.items()}
        layout: dict[str, Any] = {}
    else:
        tensors, layout = flatten_state(state)
    torch.save(tensors, d / "weights.pt")
    (d / LAYOUT_FILE).write_text(json.dumps({"method": method, "layout": layout}))


def quantization_of(path: Path) -> dict | None:
    """The method and layout of a quantised model directory, or None for a float one."""
    f = Path(path) / LAYOUT_FILE
    if not f.is_file():
        return None
    try:
        q = json.loads(f.read_text())
        if q["method"] not in METHODS or not isinstance(q["layout"], dict):
            raise ValueError(q["method"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{f}: not a raydl quantisation layout ({e}); quantise the model directory again") from None
    return q


def rebuild(module: nn.Module, q: dict, weights: Path, sample: torch.Tensor) -> nn.Module:
    """The quantised module of a quantised model directory, from its float architecture `module`,
    the stored tensors (loaded with weights_only=True) and one input `sample` (shapes only)."""
    tensors = torch.load(weights, map_location="cpu", weights_only=True)
    if q["method"] in HALF:
        module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
        return module.eval()
    skeleton = quantized_module(module, q["method"], iter([torch.zeros_like(sample)]))
    expected = set(skeleton.state_dict())
    if expected != set(q["layout"]):
        raise DataError(f"{weights}: the stored int8 tensors do not match this model's quantised layers "
                        f"({len(expected ^ set(q['layout']))} names differ); quantise the model directory again")
    return load_flat(skeleton, tensors, q["layout"]).eval()


def weights_bytes(d: Path) -> int:
    return (Path(d) / "weights.pt").stat().st_size


@torch.no_grad()
def latency_per_sample_ms(module: nn.Module, kind: Any, cols: dict[str, np.ndarray], batch: int, repeats: int = 20) -> float:
    """Median milliseconds per sample of `module` on CPU at a batch size (one thread, as one worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b = kind.collate({k: torch.as_tensor(v[:batch]) for k, v in cols.items()})
        n = len(b["x"]) if isinstance(b, dict) else batch
        module.eval()
        for _ in range(3):
            module(b)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            module(b)
            times.append(time.perf_counter() - t)
        return float(np.median(times)) * 1000 / n
    finally:
        torch.set_num_threads(threads)


def copy_model_files(src: Path, dst: Path) -> None:
    for f in Path(src).iterdir():
        if f.is_file() and f.name not in ("weights.pt", LAYOUT_FILE):
            shutil.copy2(f, dst / f.name)


def _batches(cols: dict[str, np.ndarray], kind: Any, size: int, limit: int | None = None) -> Iterator[Any]:
    n = len(cols["x"]) if limit is None else min(limit, len(cols["x"]))
    for i in range(0, n, size):
        yield kind.collate({k: torch.as_tensor(v[i : min(i + size, n)]) for k, v in cols.items()})


def _scores(module: nn.Module, model: Any, cols: dict[str, np.ndarray], prefix: str) -> dict[str, float]:
    from raydl.loop import evaluate_batches

    s = evaluate_batches(module, ({k: torch.as_tensor(v) for k, v in c.items()} for c in _chunks(cols)),
                         model.task, model.kind, torch.device("cpu"))
    return model.task.summarize(s, prefix)


def _chunks(cols: dict[str, np.ndarray], size: int = 512) -> Iterator[dict[str, np.ndarray]]:
    for i in range(0, len(cols["y"]), size):
        yield {k: v[i : i + size] for k, v in cols.items()}


def quantize_dir(model_dir: str | Path, out: str | Path, method: str, calibration_rows: int = 512) -> dict:
    """Quantise a model directory into `out` (a new model directory, written atomically) and report
    the metrics on the data's test split (validation if it has none), weight size and per-sample
    CPU latency at batch 1 and 256, before and after."""
    from raydl.data import prepare
    from raydl.model_dir import load_model, write_json_atomic
    from raydl.paths import dir_swapped_in, output_dir

    src, out = Path(model_dir), Path(out)
    if method not in METHODS:
        raise SpecError(f"--method: unknown method {method!r}; valid: {', '.join(METHODS)}")
    if calibration_rows < 1:
        raise SpecError(f"--calibration-rows: {calibration_rows} must be at least 1")
    if out.exists() and out.resolve() == src.resolve():
        raise SpecError(f"--out: {out} is the model directory itself; give a new directory")
    output_dir(out, "--out")
    if quantization_of(src) is not None:
        raise DataError(f"{src}: already quantised ({quantization_of(src)['method']}); quantise the float model directory")
    model = load_model(src)
    prepared = prepare(model.spec.data)
    split, name = (prepared.test, "test") if len(prepared.test) else (prepared.val, "val")
    calibration = _batches(prepared.train.cols, model.kind, 64, calibration_rows)
    qmod = quantized_module(model.module, method, calibration)
    inputs = {k: v for k, v in split.cols.items() if k != "y"}
    with dir_swapped_in(out) as tmp:
        copy_model_files(src, tmp)
        save_quantized(qmod, method, tmp)
        sample = model.kind.collate({k: torch.as_tensor(v[:1]) for k, v in inputs.items()})
        loaded = rebuild(copy.deepcopy(model.module), quantization_of(tmp), tmp / "weights.pt", sample["x"] if isinstance(sample, dict) else sample)
        report = {
            "method": method, "source": str(src), "split": name, "rows": len(split),
            "calibration_rows": min(calibration_rows, len(prepared.train)) if method == "static" else 0,
            "before": _scores(model.module, model, split.cols, name), "after": _scores(loaded, model, split.cols, name),
            "weights_bytes": {"before": weights_bytes(src), "after": weights_bytes(tmp)},
            "latency_ms_per_sample": {f"batch_{b}": {"before": latency_per_sample_ms(model.module, model.kind, inputs, b),
                                                     "after": latency_per_sample_ms(loaded, model.kind, inputs, b)}
                                      for b in (1, 256)},
        }
        metrics = json.loads((src / "metrics.json").read_text()) if (src / "metrics.json").is_file() else {}
        write_json_atomic(tmp / "metrics.json", {**metrics, "quantization": report})
    return {**report, "out": str(out)}

