"""`raydl pipeline schedule`: passes on a cron schedule in one long-running process.

One pass at a time (a pass runs in the loop itself, and the pipeline's lock keeps out passes
of other processes). Fire times that go by while a pass runs are coalesced: when the pass ends,
one pass starts at once for all of them, and the schedule goes on from the next fire time after
that. Ctrl-C (SIGINT) or SIGTERM stops the loop; a pass it interrupts resumes at its step the
next time the pipeline runs.

Cron expressions (croniter): 5 fields (minute hour day month weekday), or 6 with seconds last
(`* * * * * */2`: every 2 seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from raydl.errors import RaydlError, SpecError


def check_cron(expr: str) -> str:
    try:
        from croniter import croniter
    except ImportError:
        raise SpecError("--cron needs croniter: pip install 'raydl[pipeline]'") from None

    if not isinstance(expr, str) or len(expr.split()) not in (5, 6) or not croniter.is_valid(expr):
        raise SpecError(f"--cron: {expr!r} is not a cron expression; give 5 fields (minute hour day month weekday, "
                        "e.g. \"0 3 * * *\") or 6 with seconds last (e.g. \"* * * * * */2\")")
    return expr


def missed(expr: str, after: float, until: float) -> int:
    """Fire times of `expr` in (after, until]: the runs a pass that ran over them missed."""
    from croniter import croniter

    it, n = croniter(expr, after), 0
    while it.get_next(float) <= until:
        n += 1
    return n


def next_fire(expr: str, after: float) -> float:
    from croniter import croniter

    return croniter(expr, after).get_next(float)


def schedule(expr: str, one_pass: Callable[[], dict[str, Any]], *, say: Callable[[str], None],
             max_passes: int | None = None, clock: Callable[[], float] = time.time) -> int:
    """Run `one_pass` at every fire time of `expr` (passes that run over fire times: coalesced);
    returns the number of passes run. `max_passes` ends the loop (tests, one-off backfills)."""
    check_cron(expr)
    due = next_fire(expr, clock())
    ran = 0
    say(f"schedule {expr!r}: next pass at {time.strftime('%H:%M:%S', time.localtime(due))}")
    while max_passes is None or ran < max_passes:
        wait = due - clock()
        if wait > 0:
            time.sleep(min(wait, 1.0))
            continue
        started = clock()
        try:
            out = one_pass()
            say(f"pass at {time.strftime('%H:%M:%S', time.localtime(started))}: {out.get('outcome')}"
                + (f" (window {out['window']})" if out.get("window") else ""))
        except RaydlError as e:  # the schedule goes on; the same error will be reported next time
            say(f"pass at {time.strftime('%H:%M:%S', time.localtime(started))} failed: {e}")
        ran += 1
        ended = clock()
        n = missed(expr, due, ended)
        if n:
            say(f"{n} fire time{'s' if n > 1 else ''} went by during the pass: coalesced into one pass, now")
            due = ended
        else:
            due = next_fire(expr, ended)
    return ran
