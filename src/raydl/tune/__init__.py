"""raydl tune: hyperparameter search on Ray Tune, each trial an ordinary raydl training run."""

import raydl.spec  # noqa: F401  (defines Section, and attaches TuneSpec to JobSpec, before tune.spec is read)
