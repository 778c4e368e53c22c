"""Graph rows of the model zoo: the graph datasets, the "graph" and "node" data kinds (torch-geometric
`Batch`), GCN and GAT at graph and node level, model directories, and a GNN without torch-geometric
installed. Fast: no Ray."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raydl.batches import batch_len, build_kind, to_device
from raydl.cli import main
from raydl.data import prepare
from raydl.datasets import DATASETS
from raydl.datasets.graphs import SHAPE_CLASSES
from raydl.inference import evaluate, predict
from raydl.model_dir import manifest, write_model_dir
from raydl.models import build_model
from raydl.spec import DataSpec, ModelSpec, spec_from_dict
from raydl.tasks import build_task

GNNS = [("gcn", {"hidden": [8, 8]}), ("gat", {"hidden": [4, 4], "heads": 2}), ("gcn", {"hidden": [8], "pool": "max"}),
        ("gat", {"hidden": [4], "heads": 3, "pool": "sum"})]


def _shapes(n: int = 60, seed: int = 0):
    return DATASETS.get("graph_shapes").load(DataSpec(source="graph_shapes", n_samples=n, seed=seed))


def test_synthetic_graphs_are_cycles_stars_and_trees():
    a = _shapes(300)
    x, ei, nodes, edges, y = (a.cols[k] for k in ("x", "edge_index", "num_nodes", "num_edges", "y"))
    assert a.classes == SHAPE_CLASSES and set(y) == {0, 1, 2}
    for i in range(300):
        n, e = nodes[i], ei[i, :, : edges[i]]
        assert e.max() < n and (ei[i, :, edges[i] :] == 0).all() and (x[i, n:] == 0).all()
        assert sorted(map(tuple, e.T)) == sorted(map(tuple, e[::-1].T))  # both directions of every edge
        degree = np.bincount(e[0], minlength=n)
        undirected = edges[i] // 2
        if y[i] == 0:
            assert (degree == 2).all() and undirected == n
        elif y[i] == 1:
            assert sorted(degree)[-1] == n - 1 and undirected == n - 1
        else:
            assert undirected == n - 1 and degree.max() < n - 1 and (degree > 0).all()
    assert np.array_equal(_shapes(50, 3).cols["edge_index"], _shapes(50, 3).cols["edge_index"])


def test_the_graph_kind_batches_many_graphs_with_torch_geometric():
    p = prepare(DataSpec(source="graph_shapes", n_samples=60))
    kind = build_kind(p.prep)
    cols = {k: torch.as_tensor(v[:5]) for k, v in p.train.cols.items()}
    batch = to_device(kind.collate(cols), torch.device("cpu"))
    assert type(batch).__name__ == "DataBatch" and batch.num_graphs == batch_len(batch) == 5
    assert batch.x.shape == (int(cols["num_nodes"].sum()), 5) and batch["y"].tolist() == cols["y"].tolist()
    assert batch.edge_index.shape[1] == int(cols["num_edges"].sum())
    assert torch.bincount(batch.batch).tolist() == cols["num_nodes"].tolist()


@pytest.mark.parametrize("name, params", GNNS, ids=lambda v: v if isinstance(v, str) else "")
def test_graph_level_output_ignores_padding_and_node_order(name, params):
    p = prepare(DataSpec(source="graph_shapes", n_samples=60))
    kind = build_kind(p.prep)
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name, **params), kind, 3).eval()
    cols = {k: torch.as_tensor(v[:6]).clone() for k, v in p.train.cols.items()}
    with torch.no_grad():
        out = model(kind.collate(cols))
        assert out.shape == (6, 3)
        junk = dict(cols, x=cols["x"].clone())
        for i, n in enumerate(cols["num_nodes"].tolist()):
            junk["x"][i, n:] = 7.0  # padded node slots hold junk
        torch.testing.assert_close(model(kind.collate(junk)), out, atol=1e-5, rtol=1e-5)
        # Renumber graph 0's nodes: the same graph, so the same output.
        n, m = int(cols["num_nodes"][0]), int(cols["num_edges"][0])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
        moved = dict(cols, x=cols["x"].clone(), edge_index=cols["edge_index"].clone())
        moved["x"][0, perm] = cols["x"][0, :n]
        moved["edge_index"][0, :, :m] = perm[cols["edge_index"][0, :, :m]]
        torch.testing.assert_close(model(kind.collate(moved)), out, atol=1e-5, rtol=1e-5)
        # ...while a change to a real node does change it (the test can fail).
        other = dict(cols, x=cols["x"].clone())
        other["x"][0, 0] += 1.0
        assert not torch.allclose(model(kind.collate(other))[0], out[0], atol=1e-4)


@pytest.mark.parametrize("name, params", GNNS[:2], ids=["gcn", "gat"])
def test_node_level_models_score_the_whole_graph_and_read_out_the_batch_nodes(name, params):
    p = prepare(DataSpec(source="karate", seed=1, split={"train": 0.4, "val": 0.2, "test": 0.4}))
    kind = build_kind(p.prep)
    assert (kind.name, kind.shape, tuple(kind.edge_index.shape)) == ("node", (34,), (2, 156))
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name, **params), kind, 4).eval()
    every = kind.collate({"x": torch.arange(34), "y": torch.zeros(34, dtype=torch.long)})
    some = kind.collate({k: torch.as_tensor(v) for k, v in p.test.cols.items()})
    with torch.no_grad():
        assert model(every).shape == (34, 4) and batch_len(some) == len(p.test)
        torch.testing.assert_close(model(some), model(every)[torch.as_tensor(p.test.X)])
    assert set(p.train.X) | set(p.val.X) | set(p.test.X) == set(range(34))  # every member, in one split
    assert not set(p.train.X) & set(p.test.X)


@pytest.mark.parametrize("source, model", [("graph_shapes", {"name": "gat", "hidden": [4], "heads": 2}),
                                           ("karate", {"name": "gcn", "hidden": [8]})])
def test_predict_and_evaluate_read_a_graph_model_directory(tmp_path, source, model):
    spec = spec_from_dict({"data": {"source": source, "n_samples": 90}, "model": model, "tracking": "none"})
    p = prepare(spec.data)
    module = build_model(spec.model, build_kind(p.prep), build_task(p.prep, spec.loss).n_outputs())
    mdir = write_model_dir(tmp_path / "m", module.state_dict(), spec, p.prep, {"final": {}}, manifest(spec, p.fingerprint))
    assert 0.0 <= evaluate(mdir, source)["eval_accuracy"] <= 1.0
    table = pq.read_table(predict(mdir, source, tmp_path / "p.parquet"))
    # a built-in is regenerated with the settings the model was trained with: 90 graphs, 34 members
    assert table.num_rows == len(DATASETS.get(source).load(spec.data)) == (90 if source == "graph_shapes" else 34)
    assert set(table.column("prediction").to_pylist()) <= set(p.prep.classes)


@pytest.fixture
def without_torch_geometric(monkeypatch):
    """torch-geometric as if not installed: importing it raises ImportError."""
    for mod in [m for m in sys.modules if m == "torch_geometric" or m.startswith("torch_geometric.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "torch_geometric", None)


@pytest.mark.parametrize("source, model, line", [
    ("graph_shapes", "gcn", "raydl: error: model.name: gcn needs torch-geometric, which is not installed; "
                            "install it with: pip install 'raydl[gnn]' (or pip install torch-geometric)"),
    ("graph_shapes", "gat", "raydl: error: model.name: gat needs torch-geometric"),
    ("karate", "gcn", "raydl: error: data.source: 'karate' (torch-geometric's KarateClub) needs torch-geometric, "
                      "which is not installed; install it with: pip install 'raydl[gnn]'"),
])
def test_a_gnn_without_torch_geometric_says_how_to_install_it(tmp_path, capsys, without_torch_geometric, source, model, line):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"data: {{source: {source}, n_samples: 60}}\nmodel: {{name: {model}}}\ntracking: none\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line) and "\n" not in err, err


def test_a_gnn_on_tabular_data_is_one_line(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("data: {source: iris}\nmodel: {name: gcn}\ntracking: none\n")
    assert main(["validate", str(spec)]) == 2
    assert capsys.readouterr().err.strip() == "raydl: error: model.name: gcn takes graph or node data, not tabular data"
