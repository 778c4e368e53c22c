"""Live progress of a search on stderr (a Tune callback on the driver)."""

from __future__ import annotations

import sys

from ray.tune import Callback


class LiveProgress(Callback):
    """One line of progress: trials running/pending/terminated, the best value so far. Redrawn in
    place on a terminal; a plain line when it changes otherwise. Holds no stream (it is pickled
    into Tune's experiment state)."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode, self.best, self.last, self.shown = metric, mode, None, "", 0.0

    def _line(self, trials) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status.lower()] = counts.get(t.status.lower(), 0) + 1
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        best = f"; best {self.metric}={self.best[0]:.4g} (trial {self.best[1]})" if self.best else ""
        return f"tune: {len(trials)} trials: {parts}{best}"

    def _show(self, trials, force: bool = False) -> None:
        line = self._line(trials)
        if line == self.last and not force:
            return
        self.last = line
        if sys.stderr.isatty():
            sys.stderr.write(f"\r\x1b[2K{line}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.metric)
        if v is not None and (self.best is None or (v > self.best[0] if self.mode == "max" else v < self.best[0])):
            self.best = (float(v), trial.trial_id)
        self._show(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._show(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._show(trials)

    def on_experiment_end(self, trials, **info):
        self._show(trials, force=True)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
