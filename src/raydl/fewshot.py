"""Evaluating an embedding model directory: k-NN accuracy and N-way K-shot episodes.

`knn_accuracy(model_dir)`: each test row of the model's own data classified by the majority of its
k nearest train rows in the embedding (cosine geometry: the embeddings are L2-normalised).

`fewshot(model_dir, data, way, shot)`: episodes on data the model may never have seen (by default
`digits_5to9` for a model trained on digits 0-4). Each episode draws `way` classes, then `shot`
support and `queries` query rows of each, without overlap; a class's prototype is the mean of its
support embeddings, and each query takes the class of the nearest prototype (Snell et al. 2017).
Episodes follow from `seed` alone. The result is the mean accuracy over the episodes and its 95%
interval (mean +- 1.96 standard errors). `raydl fewshot MODEL_DIR --way 5 --shot 1` prints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raydl.errors import DataError
from raydl.fewshot_cli import DEFAULT_DATA  # noqa: E402
from raydl.inference import encode_labels, load_data, model_inputs
from raydl.model_dir import LoadedModel, load_model
from raydl.tasks.embedding import KNN_K, knn_predict


@torch.no_grad()
def embed(model: LoadedModel, cols: dict[str, np.ndarray], size: int = 1024) -> np.ndarray:
    """L2-normalised embeddings of model-ready input columns."""
    model.module.eval()
    out = []
    for i in range(0, len(cols["x"]), size):
        batch = model.kind.collate({k: torch.as_tensor(v[i : i + size]) for k, v in cols.items() if k != "y"})
        out.append(F.normalize(model.module(batch).float(), dim=1).numpy().astype(np.float64))
    return np.concatenate(out)


def _embedding_model(model_dir: str | Path) -> LoadedModel:
    model = load_model(model_dir)
    if model.task.name != "embedding":
        raise DataError(f"MODEL_DIR: {model_dir} is a {model.task.name} model; this needs an embedding model "
                        "(a run on an embedding dataset such as digits_metric)")
    return model


def knn_accuracy(model_dir: str | Path, k: int = KNN_K) -> float:
    """Test rows classified by their k nearest train rows (the run's own content-hashed split)."""
    from raydl.data import prepare

    model = _embedding_model(model_dir)
    data = prepare(model.spec.data)
    ref, query = embed(model, data.train.cols), embed(model, data.test.cols)
    return float((knn_predict(ref, data.train.y, query, k) == data.test.y).mean())


@dataclass(frozen=True)
class FewShotResult:
    way: int
    shot: int
    queries: int
    episodes: int
    accuracy: float
    ci95: float  # half-width of the 95% interval
    data: str


def episode_accuracy(z: np.ndarray, y: np.ndarray, way: int, shot: int, queries: int,
                     rng: np.random.Generator) -> float:
    """One episode on embeddings `z` with labels `y`: nearest-prototype accuracy on its queries."""
    classes = rng.choice(np.unique(y), size=way, replace=False)
    protos, q_z, q_y = [], [], []
    for i, c in enumerate(classes):
        rows = rng.choice(np.flatnonzero(y == c), size=shot + queries, replace=False)
        protos.append(z[rows[:shot]].mean(axis=0))
        q_z.append(z[rows[shot:]])
        q_y.append(np.full(queries, i))
    protos_a, q = np.stack(protos), np.concatenate(q_z)
    d = (q**2).sum(1)[:, None] - 2.0 * q @ protos_a.T + (protos_a**2).sum(1)[None, :]
    return float((d.argmin(1) == np.concatenate(q_y)).mean())


def check_episode(y: np.ndarray, way: int, shot: int, queries: int, data: str) -> None:
    """One line when `way` classes with `shot` + `queries` rows each cannot be drawn from `y`."""
    classes, counts = np.unique(y, return_counts=True)
    if way > len(classes):
        raise DataError(f"--way {way}: {data!r} has {len(classes)} classes; an episode draws at most that many (2..{len(classes)})")
    need = shot + queries
    enough = int((counts >= need).sum())
    if enough < way:
        raise DataError(f"--shot {shot} with --queries {queries}: an episode needs {need} rows of each of {way} classes, "
                        f"but only {enough} class(es) of {data!r} have that many (the smallest has {counts.min()}); "
                        f"at most --shot {int(np.sort(counts)[-way]) - queries} here")


def fewshot(model_dir: str | Path, data: str = DEFAULT_DATA, way: int = 5, shot: int = 1, queries: int = 15,
            episodes: int = 600, seed: int = 0) -> FewShotResult:
    if way < 2 or shot < 1 or queries < 1 or episodes < 1:
        raise DataError(f"--way {way} --shot {shot} --queries {queries} --episodes {episodes}: "
                        "way must be at least 2, shot, queries and episodes at least 1")
    model = _embedding_model(model_dir)
    table = load_data(data, model.spec.data)
    y = encode_labels_any(model, table)
    check_episode(y, way, shot, queries, data)
    z = embed(model, model_inputs(model, table))
    rng = np.random.default_rng(seed)
    accs = np.array([episode_accuracy(z, y, way, shot, queries, rng) for _ in range(episodes)])
    ci = 1.96 * accs.std(ddof=1) / math.sqrt(episodes) if episodes > 1 else float("nan")
    return FewShotResult(way, shot, queries, episodes, float(accs.mean()), float(ci), data)


def encode_labels_any(model: LoadedModel, data) -> np.ndarray:
    """The labels of `data` as they are (the episode's classes need not be the model's)."""
    label = model.prep.label
    if hasattr(data, "column_names"):
        if label not in data.column_names:
            raise DataError(f"--data: label column {label!r} not in the data; columns: {data.column_names}")
        return np.asarray(data.column(label).to_numpy(zero_copy_only=False))
    return encode_labels(model, data)
