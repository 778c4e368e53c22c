"""Next-token prediction (a language model): one class per vocabulary token at every step.

`y` holds the next token at each step, -100 where there is none (padding). The additive
statistics are the summed negative log-likelihood, the token count, the correct next-token
guesses and the count of every target token. From those: the loss (mean NLL per token),
perplexity exp(loss), next-token accuracy, and the unigram baseline's perplexity: the
perplexity of the best unigram model for the scored tokens (their own frequencies, so no
unigram model fitted elsewhere does better), with `ppl_reduction` = 1 - perplexity / unigram.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydl.batches.sequence import IGNORE
from raydl.errors import DataError, SpecError
from raydl.spec import LossSpec
from raydl.tasks import TASKS, Task


def unigram_perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of the token frequencies: the perplexity of the unigram model fitted to them."""
    n = counts.sum()
    if n <= 0:
        return float("nan")
    p = counts[counts > 0] / n
    return float(np.exp(-(p * np.log(p)).sum()))


@dataclass(frozen=True)
class LanguageModel:
    vocab: list[str]
    label_smoothing: float = 0.0
    name: str = "language_model"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def n_outputs(self) -> int:
        return self.vocab_size

    def check_output(self, shape: tuple[int, ...]) -> None:
        """Raise (one line) unless a model's output is one vector of vocabulary logits per step."""
        if len(shape) != 3 or shape[2] != self.vocab_size:
            raise DataError(f"model: a language_model task needs next-token logits [batch, steps, {self.vocab_size}] "
                            f"(a causal transformer, or a unidirectional rnn, lstm or gru), got shape {list(shape)}")

    def loss(self, out: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.cross_entropy(out.float().reshape(-1, self.vocab_size), batch["y"].reshape(-1).long(),
                               ignore_index=IGNORE, label_smoothing=self.label_smoothing)

    def stats_size(self) -> int:
        return 3 + self.vocab_size  # [nll_sum, tokens, correct] + target-token counts

    def stats(self, out: torch.Tensor, batch: Mapping[str, Any]) -> np.ndarray:
        logits = out.float().reshape(-1, self.vocab_size)
        y = batch["y"].reshape(-1).long()
        real = y != IGNORE
        logits, y = logits[real], y[real]
        s = np.zeros(self.stats_size())
        s[0] = F.cross_entropy(logits, y, reduction="sum").item() if len(y) else 0.0
        s[1] = len(y)
        s[2] = (logits.argmax(1) == y).sum().item()
        s[3:] = np.bincount(y.cpu().numpy(), minlength=self.vocab_size)
        return s

    def summarize(self, s: np.ndarray, prefix: str) -> dict[str, float]:
        n = max(s[1], 1.0)
        loss = s[0] / n
        ppl = math.exp(min(loss, 700.0))
        uni = unigram_perplexity(s[3:])
        m = {"loss": loss, "perplexity": ppl, "accuracy": s[2] / n, "unigram_perplexity": uni,
             "ppl_reduction": 1.0 - ppl / uni if uni > 0 else float("nan")}
        return {f"{prefix}_{k}": float(v) for k, v in m.items()}

    def metric_names(self) -> list[str]:
        return ["loss", "perplexity", "accuracy", "unigram_perplexity", "ppl_reduction"]

    def encode_labels(self, values: np.ndarray, where: str) -> np.ndarray:
        y = np.asarray(values)
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: next-token targets must be integer token ids, got {y.dtype}")
        bad = (y != IGNORE) & ((y < 0) | (y >= self.vocab_size))
        if bad.any():
            raise DataError(f"{where}: {int(bad.sum())} target token id(s) outside the vocabulary [0, {self.vocab_size}) "
                            f"(first: {int(y[bad][0])}); -100 marks a step without a next token")
        return y.astype(np.int64)

    def prediction_columns(self, out: torch.Tensor) -> dict[str, Any]:
        """The most likely next token at every step (the steps past a sequence's end are padding),
        and its probability."""
        probs = torch.softmax(out.float(), dim=-1)
        p, idx = probs.max(dim=-1)
        return {"prediction": [[self.vocab[i] for i in row] for row in idx.tolist()],
                "probability": [row for row in p.numpy().astype(np.float64).tolist()]}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}


@TASKS.register("language_model")
def _language_model(prep: Any, spec: LossSpec) -> Task:
    if spec.name not in ("auto", "cross_entropy"):
        raise SpecError(f"loss.name: a language_model task is trained with cross_entropy (next-token NLL), not {spec.name!r}")
    vocab = (prep.kind_params or {}).get("vocab")
    if not vocab:
        raise DataError("data: a language_model task needs token data with a vocabulary (kind_params.vocab)")
    return LanguageModel(list(vocab), spec.label_smoothing)
