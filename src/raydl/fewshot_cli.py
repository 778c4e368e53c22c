"""`raydl fewshot`: its arguments and output (the work is in `raydl.fewshot`, imported when run)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

DEFAULT_DATA = "digits_5to9"


def run(args: Any) -> int:
    from raydl.fewshot import fewshot

    r = fewshot(args.model_dir, args.data, args.way, args.shot, args.queries, args.episodes, args.seed)
    if args.json:
        print(json.dumps(asdict(r)))
    else:
        print(f"{r.way}-way {r.shot}-shot on {r.data}: accuracy {r.accuracy:.4f} +- {r.ci95:.4f} (95%, {r.episodes} episodes, "
              f"{r.queries} queries per class)")
    return 0


def add_parser(sub: Any) -> None:
    f = sub.add_parser("fewshot", help="N-way K-shot accuracy of an embedding model (prototypes), with a 95%% interval")
    f.add_argument("model_dir")
    f.add_argument("--data", default=DEFAULT_DATA, help=f"labelled data the episodes are drawn from (default {DEFAULT_DATA})")
    f.add_argument("--way", type=int, default=5, help="classes per episode (N)")
    f.add_argument("--shot", type=int, default=1, help="support rows per class (K)")
    f.add_argument("--queries", type=int, default=15, help="query rows per class and episode")
    f.add_argument("--episodes", type=int, default=600)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--json", action="store_true", help="print the result as one JSON object")
    f.set_defaults(func=run)
