"""Graph datasets: torch-geometric's KarateClub (node level) and seeded synthetic graphs (graph level).

- `karate`: Zachary's karate club (34 members, 78 friendships, 4 communities), as it ships inside
  torch-geometric. A row is one node: "x" its id, "y" its community. The one graph (its edges)
  travels in the data kind's parameters; the "node" kind scores every node on the whole graph
  and reads out the batch's nodes, so the seeded split decides which nodes are labelled in training.
- `graph_shapes`: cycles, stars and random trees of 6 to 16 nodes, one graph per row, padded:
  "x" [N, 16, 5] node features (the node's degree one-hot: 1, 2, 3, 4, 5 or more, plus Gaussian
  `noise`, default 0.5; a constant feature would leave attention, a weighted mean, blind to structure), "edge_index" [N, 2, 32]
  (both directions of every edge), "num_nodes" and "num_edges". The "graph" kind's collate turns
  a batch of rows into a torch-geometric `Batch`.
"""

from __future__ import annotations

import numpy as np

from raydl.batches.graph import require_pyg
from raydl.datasets import DATASETS, Arrays, Builtin
from raydl.errors import DataError
from raydl.spec import DataSpec

KARATE_NODES = 34


def _karate(spec: DataSpec) -> Arrays:
    require_pyg("data.source: 'karate' (torch-geometric's KarateClub)", DataError)
    from torch_geometric.datasets import KarateClub

    g = KarateClub()[0]
    return Arrays({"x": np.arange(g.num_nodes, dtype=np.int64), "y": g.y.numpy().astype(np.int64)},
                  classes=list(range(int(g.y.max()) + 1)),
                  params={"num_nodes": int(g.num_nodes), "edge_index": g.edge_index.tolist()})


SHAPE_CLASSES = ["cycle", "star", "tree"]
MAX_NODES = 16
DEGREE_BUCKETS = 5
MAX_EDGES = 2 * MAX_NODES  # a cycle has as many edges as nodes; both directions are stored


def shape_edges(kind: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """[E, 2] undirected edges of a cycle (0), a star (1) or a random tree (2) on nodes 0..n-1."""
    if kind == 0:
        return np.stack([np.arange(n), (np.arange(n) + 1) % n], axis=1)
    if kind == 1:
        return np.stack([np.zeros(n - 1, dtype=np.int64), np.arange(1, n)], axis=1)
    # A random recursive tree: node i hangs off a node before it; a tree that came out a star is drawn again.
    while True:
        parents = np.array([rng.integers(0, i) for i in range(1, n)])
        if np.bincount(parents, minlength=n).max() < n - 1:
            return np.stack([parents, np.arange(1, n)], axis=1)


def _graph_shapes(spec: DataSpec) -> Arrays:
    rng = np.random.default_rng(spec.seed)
    n = spec.n_samples or 1500
    noise = 0.5 if spec.noise is None else spec.noise
    y = rng.integers(0, len(SHAPE_CLASSES), n)
    sizes = rng.integers(6, MAX_NODES + 1, n)
    x = np.zeros((n, MAX_NODES, DEGREE_BUCKETS), dtype=np.float32)
    edge_index = np.zeros((n, 2, MAX_EDGES), dtype=np.int64)
    num_edges = np.zeros(n, dtype=np.int64)
    for i in range(n):
        perm = rng.permutation(sizes[i])  # node ids carry no hint of the shape
        e = perm[shape_edges(int(y[i]), int(sizes[i]), rng)]
        both = np.concatenate([e, e[:, ::-1]]).T
        num_edges[i] = both.shape[1]
        edge_index[i, :, : both.shape[1]] = both
        degree = np.bincount(e.reshape(-1), minlength=sizes[i])
        onehot = np.eye(DEGREE_BUCKETS)[np.minimum(degree, DEGREE_BUCKETS) - 1]
        x[i, : sizes[i]] = onehot + rng.normal(0.0, noise, onehot.shape)
    return Arrays({"x": x, "edge_index": edge_index, "num_nodes": sizes.astype(np.int64), "num_edges": num_edges, "y": y},
                  classes=list(SHAPE_CLASSES))


DATASETS.register("karate")(Builtin(_karate, "community", "classification", "node", (KARATE_NODES,)))
DATASETS.register("graph_shapes")(Builtin(_graph_shapes, "shape", "classification", "graph", (MAX_NODES, DEGREE_BUCKETS)))
