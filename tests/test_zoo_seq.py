"""Sequence rows of the model zoo: datasets, the sequence data kind, 1-D CNN, RNN/LSTM/GRU and
Transformer (shapes, padding never changes an output, causality, parameters), the language-model
task, and the bad input that belongs to them. Fast: no Ray."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raydl.batches import build_kind
from raydl.batches.sequence import IGNORE, SequenceKind
from raydl.cli import main
from raydl.data import prepare
from raydl.datasets import DATASETS
from raydl.datasets.sequences import GRAMMAR, MAJORITY_CLASSES, grammar_vocab, sentence
from raydl.errors import DataError, SpecError
from raydl.inference import evaluate, predict
from raydl.model_dir import load_model, manifest, write_model_dir
from raydl.models import build_model
from raydl.spec import DataSpec, LossSpec, ModelSpec, spec_from_dict
from raydl.tasks import build_task
from raydl.tasks.language_model import LanguageModel, unigram_perplexity

FEATURES = SequenceKind((12, 3))
TOKENS = SequenceKind((12,), vocab_size=9)
NEXT_TOKEN = SequenceKind((12,), vocab_size=9, per_step=True)


def _model(name: str, kind: SequenceKind, n_out: int = 4, **params) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(name=name, **params), kind, n_out).eval()


def _batch(kind: SequenceKind, length: list[int], pad_with: str = "zeros", seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n, steps = len(length), kind.steps
    if kind.vocab_size is not None:
        x = torch.randint(1, kind.vocab_size, (n, steps), generator=g)
    else:
        x = torch.randn(n, steps, kind.features, generator=g)
    length_t = torch.tensor(length)
    pad = torch.arange(steps)[None, :] >= length_t[:, None]
    junk = torch.randint(1, kind.vocab_size, x.shape, generator=g) if kind.vocab_size else torch.randn(x.shape, generator=g) * 5
    if kind.vocab_size is None:
        pad = pad[..., None].expand_as(x)
    x = torch.where(pad, junk if pad_with == "junk" else torch.zeros_like(x), x)
    return kind.collate({"x": x, "length": length_t})


SEQUENCE_MODELS = [
    ("cnn1d", {"channels": [8, 8, 8], "kernel_size": 3}),
    ("cnn1d", {"channels": [8, 8], "norm": "none", "pool": "none"}),
    ("rnn", {"hidden": 8}),
    ("lstm", {"hidden": 8, "bidirectional": True, "layers": 2}),
    ("gru", {"hidden": 8, "bidirectional": True, "pool": "mean"}),
    ("transformer", {"d_model": 16, "heads": 2, "ff": 16}),
    ("transformer", {"d_model": 16, "heads": 2, "ff": 16, "positional": "learned", "pool": "cls"}),
    ("transformer", {"d_model": 16, "heads": 2, "ff": 16, "causal": True, "pool": "last"}),
]


@pytest.mark.parametrize("kind", [FEATURES, TOKENS], ids=["features", "tokens"])
@pytest.mark.parametrize("name, params", SEQUENCE_MODELS, ids=lambda v: v if isinstance(v, str) else "")
def test_padding_never_changes_the_output(name, params, kind):
    model = _model(name, kind, **params)
    length = [12, 3, 7, 1, 10]
    with torch.no_grad():
        zeros = model(_batch(kind, length))
        junk = model(_batch(kind, length, "junk"))
        assert zeros.shape == (5, 4)
        torch.testing.assert_close(zeros, junk, atol=1e-5, rtol=1e-5)
        # Each sequence alone, cut to its own length, gives what it gives inside the padded batch.
        full = _batch(kind, length)
        for i, n in enumerate(length):
            alone = {"x": full["x"][i : i + 1, :n], "length": torch.tensor([n])}
            torch.testing.assert_close(model(alone)[0], zeros[i], atol=1e-5, rtol=1e-5)
    # ...and the padded steps really were different inputs (the test can fail).
    assert not torch.equal(_batch(kind, length)["x"], _batch(kind, length, "junk")["x"])


def test_a_model_that_ignores_the_lengths_would_fail_the_padding_test():
    model = _model("transformer", FEATURES, d_model=16, heads=2, ff=16)
    b = _batch(FEATURES, [12, 3, 7, 1, 10], "junk")
    with torch.no_grad():
        masked = model(b)
        unmasked = model({**b, "length": torch.full((5,), 12)})
    assert not torch.allclose(masked[1:4], unmasked[1:4], atol=1e-3)


@pytest.mark.parametrize("name, params", [("transformer", {"d_model": 16, "heads": 2, "ff": 16, "causal": True}),
                                          ("lstm", {"hidden": 8}), ("gru", {"hidden": 8, "layers": 2})])
def test_next_token_models_are_causal_and_give_one_output_per_step(name, params):
    model = _model(name, NEXT_TOKEN, n_out=9, **params)
    b = _batch(NEXT_TOKEN, [12, 9, 5])
    later = b["x"].clone()
    later[:, 4:] = (later[:, 4:] % 8) + 1  # change every step from 4 on
    with torch.no_grad():
        out = model(b)
        changed = model({**b, "x": later})
    assert out.shape == (3, 12, 9)
    torch.testing.assert_close(out[:, :4], changed[:, :4], atol=1e-5, rtol=1e-5)  # steps 0-3 never see step 4
    assert not torch.allclose(out[0, 4:], changed[0, 4:], atol=1e-4)


@pytest.mark.parametrize("name, params, fix", [
    ("transformer", {}, "set causal: true"),
    ("lstm", {"bidirectional": True}, "set bidirectional: false"),
    ("cnn1d", {}, "use transformer \\(causal: true\\), rnn, lstm or gru"),
])
def test_a_model_that_would_see_the_next_token_is_refused(name, params, fix):
    with pytest.raises(SpecError, match=fix):
        build_model(ModelSpec(name=name, **params), NEXT_TOKEN, 9)


@pytest.mark.parametrize("model, problem", [
    ({"name": "transformer", "d_model": 30, "heads": 4}, "model: d_model (30) must be a multiple of heads (4)"),
    ({"name": "transformer", "causal": True, "pool": "cls"}, "model: pool 'cls' with causal: true would see only itself"),
    ({"name": "transformer", "positional": "rotary"}, "model.positional: Input should be 'sinusoidal' or 'learned'"),
    ({"name": "cnn1d", "kernel_size": 4}, "model.kernel_size: kernel_size must be odd (got 4)"),
    ({"name": "cnn1d", "channels": []}, "model.channels: give at least one block, each with 1 to 4096 channels (got [])"),
    ({"name": "gcn", "hidden": [8, 0]}, "model.hidden: give at least one layer, each 1 to 4096 wide (got [8, 0])"),
    ({"name": "lstm", "hidden": 0}, "model.hidden: Input should be greater than or equal to 1"),
    ({"name": "gru", "cell": "lstm"}, "model.cell: unknown parameter of model gru (its parameters: hidden, layers, bidirectional"),
])
def test_sequence_model_parameters_are_checked_with_dotted_paths(model, problem):
    with pytest.raises(SpecError) as err:
        spec_from_dict({"data": {"source": "digits_rows"}, "model": model})
    assert problem in str(err.value)


def test_the_models_learnable_positions_and_embeddings_are_parameters():
    learned = _model("transformer", TOKENS, d_model=16, heads=2, ff=16, positional="learned")
    fixed = _model("transformer", TOKENS, d_model=16, heads=2, ff=16)
    assert "pos" in dict(learned.named_parameters()) and "pos" not in fixed.state_dict()
    assert learned.embed.proj.padding_idx == 0


# ---- datasets and the data kind ---------------------------------------------------------------


def test_sequence_datasets_are_seeded_and_shaped():
    for name, x_shape in [("waveforms", (64, 1)), ("digits_rows", (8, 8)), ("majority", (40,)), ("grammar", (24,))]:
        a = DATASETS.get(name).load(DataSpec(source=name, n_samples=200, seed=3))
        b = DATASETS.get(name).load(DataSpec(source=name, n_samples=200, seed=3))
        assert a.cols["x"].shape[1:] == x_shape and DATASETS.get(name).kind == "sequence"
        assert all(np.array_equal(a.cols[k], b.cols[k]) for k in a.cols)
        c = DATASETS.get(name).load(DataSpec(source=name, n_samples=200, seed=4))
        assert name == "digits_rows" or not np.array_equal(a.cols["x"], c.cols["x"])


def test_majority_labels_are_the_most_frequent_marker_and_lengths_vary():
    a = DATASETS.get("majority").load(DataSpec(source="majority", n_samples=300))
    x, length, y = a.cols["x"], a.cols["length"], a.cols["y"]
    assert length.min() < 10 and length.max() == 40
    for i in range(300):
        assert (x[i, length[i] :] == 0).all() and (x[i, : length[i]] > 0).all()
        counts = np.bincount(x[i, : length[i]], minlength=4)[1:4]
        assert counts.argmax() == y[i] and (counts == counts.max()).sum() == 1
    assert a.classes == MAJORITY_CLASSES


def test_grammar_targets_are_the_next_tokens_and_subjects_agree_with_verbs():
    a = DATASETS.get("grammar").load(DataSpec(source="grammar", n_samples=300))
    vocab = grammar_vocab()
    x, y, length = a.cols["x"], a.cols["y"], a.cols["length"]
    assert a.params == {"vocab_size": len(vocab), "per_step": True, "vocab": vocab}
    for i in range(300):
        n = length[i]
        assert x[i, 0] == vocab.index("<s>") and y[i, n - 1] == vocab.index("</s>")
        assert np.array_equal(x[i, 1:n], y[i, : n - 1])  # y is x shifted by one step
        assert (y[i, n:] == IGNORE).all() and (x[i, n:] == 0).all()
    rng = np.random.default_rng(0)
    verbs = {w: num for num in ("sg", "pl") for rule in ("V", "Vi") for _, (w,) in GRAMMAR[f"{rule}_{num}"]}
    for _ in range(200):
        words = sentence(rng)
        subject = "sg" if words[1] in {w for _, (w,) in GRAMMAR["N_sg"]} or words[2] in {w for _, (w,) in GRAMMAR["N_sg"]} else "pl"
        first_verb = next(w for w in words if w in verbs)
        assert verbs[first_verb] == subject, words


def test_the_sequence_kind_fills_in_lengths_and_types():
    kind = build_kind(prepare(DataSpec(source="digits_rows", standardize="global")).prep)
    assert (kind.name, kind.shape, kind.vocab_size, kind.per_step) == ("sequence", (8, 8), None, False)
    b = kind.collate({"x": torch.zeros(3, 8, 8, dtype=torch.float64), "y": torch.tensor([1, 2, 3])})
    assert b["x"].dtype == torch.float32 and b["length"].tolist() == [8, 8, 8]
    p = prepare(DataSpec(source="majority", n_samples=300))
    kind = build_kind(p.prep)
    assert kind.vocab_size == 10 and p.prep.mean == [] and p.train.X.dtype == np.int64  # token ids are not scaled
    assert kind.collate({k: torch.as_tensor(v[:4]) for k, v in p.train.cols.items()})["x"].dtype == torch.long


# ---- the language-model task --------------------------------------------------------------------


def test_language_model_statistics_add_up_and_perplexity_is_exp_nll():
    task = LanguageModel(["<pad>", "a", "b", "c"])
    g = torch.Generator().manual_seed(0)
    out = torch.randn(6, 5, 4, generator=g)
    y = torch.randint(0, 4, (6, 5), generator=g)
    y[2, 3:] = IGNORE
    whole = task.stats(out, {"y": y})
    parts = task.stats(out[:2], {"y": y[:2]}) + task.stats(out[2:], {"y": y[2:]})
    np.testing.assert_allclose(whole, parts, rtol=1e-6)
    m = task.summarize(whole, "val")
    real = y != IGNORE
    nll = torch.nn.functional.cross_entropy(out[real], y[real]).item()
    assert m["val_loss"] == pytest.approx(nll, rel=1e-5) and m["val_perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert whole[1] == real.sum().item() == 28
    assert task.loss(out, {"y": y}).item() == pytest.approx(nll, rel=1e-5)


def test_the_unigram_baseline_is_the_best_unigram_model_of_the_scored_tokens():
    assert unigram_perplexity(np.array([5, 5, 5, 5])) == pytest.approx(4.0)
    assert unigram_perplexity(np.array([10, 0, 0])) == pytest.approx(1.0)
    counts = np.array([0, 30, 10, 60])
    task = LanguageModel(["<pad>", "a", "b", "c"])
    # A model that predicts the token frequencies at every step scores exactly the unigram perplexity.
    logp = torch.log(torch.tensor([1e-9, 0.3, 0.1, 0.6]))
    y = torch.tensor([1] * 30 + [2] * 10 + [3] * 60).reshape(10, 10)
    m = task.summarize(task.stats(logp.expand(10, 10, 4), {"y": y}), "t")
    assert m["t_perplexity"] == pytest.approx(m["t_unigram_perplexity"], rel=1e-4)
    assert m["t_ppl_reduction"] == pytest.approx(0.0, abs=1e-4) and task.summarize(np.r_[0, 100, 0, counts], "t")["t_unigram_perplexity"] == pytest.approx(unigram_perplexity(counts))


def test_the_language_model_task_takes_cross_entropy_only():
    prep = prepare(DataSpec(source="grammar", n_samples=200)).prep
    assert build_task(prep, LossSpec()).n_outputs() == len(grammar_vocab())
    with pytest.raises(SpecError, match="loss.name: a language_model task is trained with cross_entropy"):
        build_task(prep, LossSpec(name="mse"))
    task = build_task(prep, LossSpec())
    task.check_output((2, 24, 35))
    with pytest.raises(DataError, match=r"model: a language_model task needs next-token logits \[batch, steps, 35\]"):
        task.check_output((2, 35))  # one vector per sequence


# ---- model directories: predict and evaluate ----------------------------------------------------


@pytest.mark.parametrize("source, model", [("grammar", {"name": "transformer", "d_model": 16, "heads": 2, "causal": True}),
                                           ("majority", {"name": "gru", "hidden": 8, "bidirectional": True}),
                                           ("waveforms", {"name": "cnn1d", "channels": [4]})])
def test_predict_and_evaluate_read_a_sequence_model_directory(tmp_path, source, model):
    spec = spec_from_dict({"data": {"source": source, "n_samples": 120}, "model": model, "tracking": "none"})
    p = prepare(spec.data)
    kind = build_kind(p.prep)
    module = build_model(spec.model, kind, build_task(p.prep, spec.loss).n_outputs())
    mdir = write_model_dir(tmp_path / "m", module.state_dict(), spec, p.prep, {"final": {}}, manifest(spec, p.fingerprint))
    assert load_model(mdir).kind == kind
    metrics = evaluate(mdir, source)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and math.isfinite(metrics["eval_loss"])
    table = pq.read_table(predict(mdir, source, tmp_path / "p.parquet"))
    if source == "grammar":
        assert "eval_unigram_perplexity" in metrics and metrics["eval_perplexity"] > 1.0
        row = table.column("prediction")[0].as_py()
        assert len(row) == 24 and set(row) <= set(grammar_vocab())
    else:
        assert set(table.column("prediction").to_pylist()) <= set(p.prep.classes)


# ---- bad input: one line, exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize("argv, line", [
    (["model.name=lstm"], "raydl: error: model.name: lstm takes sequence data, not tabular data"),
    (["model.name=transformer", "data.source=digits_images"], "raydl: error: model.name: transformer takes sequence data, not image data"),
    (["data.source=grammar", "model.name=transformer"], "raydl: error: model: transformer would see the next token it must predict"),
    (["data.source=grammar", "model.name=gru", "model.bidirectional=true"], "raydl: error: model: gru would see the next token"),
])
def test_bad_sequence_input_is_one_line_and_exit_2(tmp_path, capsys, argv, line):
    spec = tmp_path / "s.yaml"
    spec.write_text("data: {source: digits}\ntracking: none\n")
    assert main(["validate", str(spec), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line) and "\n" not in err, err
