"""Sequence datasets: seeded synthetic series and token streams, and digits read row by row.

Every one is `Arrays` of kind "sequence": "x" is [N, T, F] floats or [N, T] token ids (0 is the
padding token), "length" [N] the number of real steps when lengths vary (padding comes after
them), "y" the target. All are generated from `spec.seed` (and `n_samples`, `noise`), so the same
spec gives the same rows anywhere; nothing is downloaded.

- `waveforms`: sine / square / sawtooth series of 64 steps with random frequency, phase,
  amplitude and Gaussian noise (`noise`, default 0.3); classify the shape.
- `digits_rows`: scikit-learn's 8x8 digits read as 8 steps of 8 pixels; classify the digit.
- `majority`: token sequences of 4 to 40 steps, padded to 40; the label is the marker token
  (a, b or c) that occurs most often among distractor tokens (`noise`: share of distractors, 0.5).
- `grammar`: sentences of a small probabilistic grammar with number agreement across
  prepositional phrases; "y" is the next token at every step (-100 where there is none).
"""

from __future__ import annotations

import numpy as np

from raydl.batches.sequence import IGNORE, PAD
from raydl.datasets import DATASETS, Arrays, Builtin
from raydl.spec import DataSpec

WAVE_STEPS = 64
WAVE_CLASSES = ["sine", "square", "sawtooth"]


def waveform(kind: int, t: np.ndarray, freq: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Unit-amplitude sine (0), square (1) or sawtooth (2) waves: t [T], freq and phase [N, 1]."""
    cycles = freq * t[None, :] + phase  # in periods
    if kind == 0:
        return np.sin(2 * np.pi * cycles)
    if kind == 1:
        return np.where((cycles % 1.0) < 0.5, 1.0, -1.0)
    return 2.0 * (cycles % 1.0) - 1.0


def _waveforms(spec: DataSpec) -> Arrays:
    rng = np.random.default_rng(spec.seed)
    n = spec.n_samples or 3000
    noise = 0.3 if spec.noise is None else spec.noise
    y = rng.integers(0, len(WAVE_CLASSES), n)
    freq = rng.uniform(1.5, 5.0, (n, 1)) / WAVE_STEPS  # 1.5 to 5 periods per window
    phase = rng.uniform(0.0, 1.0, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    t = np.arange(WAVE_STEPS, dtype=np.float64)
    x = np.zeros((n, WAVE_STEPS))
    for k in range(len(WAVE_CLASSES)):
        rows = y == k
        x[rows] = waveform(k, t, freq[rows], phase[rows])
    x = amp * x + rng.normal(0.0, noise, x.shape)
    return Arrays({"x": x[:, :, None].astype(np.float32), "y": y}, classes=list(WAVE_CLASSES))


def _digits_rows(spec: DataSpec) -> Arrays:
    from raydl.datasets.bundled import load_digits

    X, y = load_digits()
    return Arrays({"x": X.reshape(-1, 8, 8).astype(np.float32), "y": y}, classes=list(range(10)))


MAJORITY_STEPS = 40
MAJORITY_VOCAB = ["<pad>", "a", "b", "c", "d", "e", "f", "g", "h", "i"]  # a-c mark the class, d-i distract
MAJORITY_CLASSES = ["a", "b", "c"]
MAJORITY_BIAS = 0.4  # chance that a marker is the label's (the others share the rest)


def _majority(spec: DataSpec) -> Arrays:
    rng = np.random.default_rng(spec.seed)
    n = spec.n_samples or 3000
    distract = 0.5 if spec.noise is None else min(spec.noise, 0.9)
    k = len(MAJORITY_CLASSES)
    x = np.full((n, MAJORITY_STEPS), PAD, dtype=np.int64)
    length = rng.integers(4, MAJORITY_STEPS + 1, n)
    y = rng.integers(0, k, n)
    for i in range(n):
        while True:  # resample until the label's marker is the strict majority among the markers
            p = np.full(k, (1 - MAJORITY_BIAS) / (k - 1))
            p[y[i]] = MAJORITY_BIAS
            markers = 1 + rng.choice(k, size=length[i], p=p)
            others = 1 + k + rng.integers(0, len(MAJORITY_VOCAB) - 1 - k, length[i])
            seq = np.where(rng.random(length[i]) < distract, others, markers)
            counts = np.bincount(seq, minlength=1 + k)[1 : 1 + k]
            if counts[y[i]] > np.delete(counts, y[i]).max():
                break
        x[i, : length[i]] = seq
    return Arrays({"x": x, "length": length, "y": y}, classes=list(MAJORITY_CLASSES),
                  params={"vocab_size": len(MAJORITY_VOCAB)})


# A small probabilistic grammar. A symbol in GRAMMAR expands to one of its right-hand sides (with
# the given weights); anything else is a word. Singular and plural subjects agree with their verb
# across prepositional phrases ("the dog near the cats sees a bird ."), a dependency a unigram
# model cannot see.
GRAMMAR: dict[str, list[tuple[float, list[str]]]] = {
    "S": [(0.5, ["NP_sg", "VP_sg", "."]), (0.5, ["NP_pl", "VP_pl", "."])],
    "NP_sg": [(0.5, ["Det_sg", "N_sg"]), (0.25, ["Det_sg", "Adj", "N_sg"]), (0.25, ["Det_sg", "N_sg", "PP"])],
    "NP_pl": [(0.5, ["Det_pl", "N_pl"]), (0.25, ["Det_pl", "Adj", "N_pl"]), (0.25, ["Det_pl", "N_pl", "PP"])],
    "NP": [(0.5, ["NP_sg"]), (0.5, ["NP_pl"])],
    "PP": [(1.0, ["P", "NP"])],
    "VP_sg": [(0.4, ["V_sg", "NP"]), (0.3, ["Vi_sg"]), (0.3, ["Vi_sg", "Adv"])],
    "VP_pl": [(0.4, ["V_pl", "NP"]), (0.3, ["Vi_pl"]), (0.3, ["Vi_pl", "Adv"])],
    "Det_sg": [(0.5, ["the"]), (0.3, ["a"]), (0.2, ["this"])],
    "Det_pl": [(0.5, ["the"]), (0.3, ["some"]), (0.2, ["these"])],
    "N_sg": [(0.3, ["cat"]), (0.3, ["dog"]), (0.2, ["bird"]), (0.2, ["child"])],
    "N_pl": [(0.3, ["cats"]), (0.3, ["dogs"]), (0.2, ["birds"]), (0.2, ["children"])],
    "Adj": [(0.4, ["big"]), (0.3, ["small"]), (0.3, ["happy"])],
    "P": [(0.4, ["near"]), (0.3, ["with"]), (0.3, ["under"])],
    "V_sg": [(0.4, ["sees"]), (0.3, ["chases"]), (0.3, ["likes"])],
    "V_pl": [(0.4, ["see"]), (0.3, ["chase"]), (0.3, ["like"])],
    "Vi_sg": [(0.6, ["sleeps"]), (0.4, ["runs"])],
    "Vi_pl": [(0.6, ["sleep"]), (0.4, ["run"])],
    "Adv": [(0.5, ["quickly"]), (0.5, ["quietly"])],
}
GRAMMAR_STEPS = 24  # input steps: <s> and up to 23 words (longer sentences are drawn again)
BOS, EOS = "<s>", "</s>"


def grammar_vocab() -> list[str]:
    words = sorted({w for rules in GRAMMAR.values() for _, rhs in rules for w in rhs if w not in GRAMMAR})
    return ["<pad>", BOS, EOS, *words]


def sentence(rng: np.random.Generator, symbol: str = "S") -> list[str]:
    if symbol not in GRAMMAR:
        return [symbol]
    weights, options = zip(*GRAMMAR[symbol])
    rhs = options[rng.choice(len(options), p=np.asarray(weights) / sum(weights))]
    return [w for s in rhs for w in sentence(rng, s)]


def _grammar(spec: DataSpec) -> Arrays:
    rng = np.random.default_rng(spec.seed)
    n = spec.n_samples or 4000
    vocab = grammar_vocab()
    index = {w: i for i, w in enumerate(vocab)}
    x = np.full((n, GRAMMAR_STEPS), PAD, dtype=np.int64)
    y = np.full((n, GRAMMAR_STEPS), IGNORE, dtype=np.int64)
    length = np.zeros(n, dtype=np.int64)
    for i in range(n):
        words = sentence(rng)
        while len(words) + 1 > GRAMMAR_STEPS:
            words = sentence(rng)
        ids = [index[w] for w in (BOS, *words, EOS)]
        length[i] = len(ids) - 1
        x[i, : length[i]] = ids[:-1]
        y[i, : length[i]] = ids[1:]
    return Arrays({"x": x, "length": length, "y": y}, params={"vocab_size": len(vocab), "per_step": True, "vocab": vocab})


DATASETS.register("waveforms")(Builtin(_waveforms, "shape", "classification", "sequence", (WAVE_STEPS, 1)))
DATASETS.register("digits_rows")(Builtin(_digits_rows, "digit", "classification", "sequence", (8, 8)))
DATASETS.register("majority")(Builtin(_majority, "majority", "classification", "sequence", (MAJORITY_STEPS,)))
DATASETS.register("grammar")(Builtin(_grammar, "next_token", "language_model", "sequence", (GRAMMAR_STEPS,)))
