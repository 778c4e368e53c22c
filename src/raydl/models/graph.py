"""Graph neural networks (torch-geometric): GCN and GAT, at node level or graph level.

On "graph" data (a torch-geometric `Batch` of many graphs) the node states are pooled per graph
(global mean, sum or max pooling) before the head; on "node" data (one graph, the batch's nodes
in `index`) the head reads the batch's nodes. torch-geometric is imported when a model is built.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from raydl.batches import DataKind
from raydl.batches.graph import require_pyg
from raydl.models import register_model
from raydl.models.mlp import ACTIVATIONS
from raydl.spec import Section


class GCNParams(Section):
    hidden: list[int] = Field(default_factory=lambda: [32, 32], description="width of each message-passing layer")
    activation: Literal["relu", "leaky_relu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1, description="on node states after each layer")
    pool: Literal["mean", "sum", "max"] = Field("mean", description="graph level: how node states become one per graph")

    @field_validator("hidden")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 or w > 4096 for w in v):
            raise ValueError("give at least one layer, each 1 to 4096 wide")
        return v


class GATParams(GCNParams):
    hidden: list[int] = Field(default_factory=lambda: [16, 16], description="width per head of each attention layer")
    heads: int = Field(4, ge=1, le=64, description="attention heads per layer (concatenated)")
    attn_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the attention coefficients")


class GNN(nn.Module):
    def __init__(self, convs: list[nn.Module], width: int, p: GCNParams, kind: DataKind, n_outputs: int, pool: Any) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.act = ACTIVATIONS[p.activation]()
        self.drop = nn.Dropout(p.dropout)
        self.node_level = kind.name == "node"
        self.pool_fn = pool
        self.head = nn.Linear(width, n_outputs)

    def forward(self, batch) -> torch.Tensor:
        h, edge_index = batch["x"], batch["edge_index"]
        for conv in self.convs:
            h = self.drop(self.act(conv(h, edge_index)))
        if self.node_level:
            return self.head(h[batch["index"]])
        return self.head(self.pool_fn(h, batch.batch, size=batch.num_graphs))


def _pool(name: str):
    from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

    return {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}[name]


@register_model("gcn", GCNParams, kinds=("graph", "node"))
def gcn(p: GCNParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """Graph convolutional network (Kipf & Welling): node or graph level (global pooling)."""
    require_pyg("model.name: gcn")
    from torch_geometric.nn import GCNConv

    widths = [kind.features, *p.hidden]
    convs = [GCNConv(a, b) for a, b in zip(widths[:-1], widths[1:])]
    return GNN(convs, widths[-1], p, kind, n_outputs, _pool(p.pool))


@register_model("gat", GATParams, kinds=("graph", "node"))
def gat(p: GATParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """Graph attention network (Velickovic et al.): multi-head attention over neighbours, node or graph level."""
    require_pyg("model.name: gat")
    from torch_geometric.nn import GATConv

    convs, width = [], kind.features
    for h in p.hidden:
        convs.append(GATConv(width, h, heads=p.heads, dropout=p.attn_dropout))
        width = h * p.heads
    return GNN(convs, width, p, kind, n_outputs, _pool(p.pool))
