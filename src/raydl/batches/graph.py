"""Graph data kinds (torch-geometric, imported only where graphs are used).

- "graph": one graph per row, padded: "x" [max_nodes, F] node features, "edge_index"
  [2, max_edges], "num_nodes", "num_edges" (the real counts). The collate cuts each row to its real
  nodes and edges and batches the graphs with `torch_geometric.data.Batch` (one disjoint graph,
  `batch.batch` mapping nodes to graphs); `batch["y"]` is one label per graph.
- "node": one node per row ("x" is its id) of a single graph given in the kind parameters
  (`num_nodes`, `edge_index`). A batch is the whole graph, with one-hot node features, plus
  `index`, the batch's nodes: a model computes every node and reads out those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from raydl.batches import DATA_KINDS, Batch
from raydl.errors import DataError, SpecError

INSTALL = "pip install 'raydl[gnn]' (or pip install torch-geometric)"


def require_pyg(what: str, error: type[Exception] = SpecError) -> None:
    """Raise one line saying how to install torch-geometric when it cannot be imported."""
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        raise error(f"{what} needs torch-geometric, which is not installed; install it with: {INSTALL}") from None


@dataclass(frozen=True)
class GraphKind:
    shape: tuple[int, int]  # (max_nodes, node features)
    name: str = "graph"

    @property
    def features(self) -> int:
        return self.shape[1]

    def collate(self, cols: Mapping[str, Any]) -> Any:
        from torch_geometric.data import Batch as GraphBatch
        from torch_geometric.data import Data

        x, edges = torch.as_tensor(cols["x"]).float(), torch.as_tensor(cols["edge_index"]).long()
        nodes, n_edges = torch.as_tensor(cols["num_nodes"]).tolist(), torch.as_tensor(cols["num_edges"]).tolist()
        y = torch.as_tensor(cols["y"]) if "y" in cols else None
        graphs = [Data(x=x[i, : nodes[i]], edge_index=edges[i, :, : n_edges[i]],
                       **({"y": y[i : i + 1]} if y is not None else {}))
                  for i in range(len(x))]
        return GraphBatch.from_data_list(graphs)


@dataclass(frozen=True)
class NodeKind:
    shape: tuple[int]  # (node features,): one-hot node ids
    edge_index: torch.Tensor = field(repr=False, compare=False)  # the one graph, [2, edges]
    name: str = "node"

    @property
    def features(self) -> int:
        return self.shape[0]

    def collate(self, cols: Mapping[str, Any]) -> Batch:
        index = torch.as_tensor(cols["x"]).long()
        return {**cols, "x": torch.eye(self.shape[0], device=index.device), "edge_index": self.edge_index.to(index.device),
                "index": index}


def _graph(prep: Any) -> GraphKind:
    shape = tuple(prep.sample_shape)
    if len(shape) != 2:
        raise DataError(f"data: graph rows must hold node features [max_nodes, features], got shape {list(shape)}")
    return GraphKind(shape)


def _node(prep: Any) -> NodeKind:
    params = prep.kind_params or {}
    if "edge_index" not in params or "num_nodes" not in params:
        raise DataError("data: node-level data needs its graph in the kind parameters (num_nodes, edge_index)")
    edge_index = torch.tensor(params["edge_index"], dtype=torch.long)
    return NodeKind((int(params["num_nodes"]),), edge_index)


DATA_KINDS.register("graph")(_graph)
DATA_KINDS.register("node")(_node)
