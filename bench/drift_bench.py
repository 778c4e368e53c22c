"""Drift benchmark: raydl vs NannyML vs Evidently on the same Parquet files (not a test).

    python bench/drift_bench.py --rows 200000 1000000            # writes bench/drift_results.json
    python bench/drift_bench.py --markdown bench/drift_results.json   # prints the RESULTS section

Data: the seeded suite of ``raydl.drift.synthetic`` (20 features), a reference and three
current files per size (``iid``, ``all`` = every univariate change at once, ``corr_flip``),
written with 100k-row row groups. Every tool runs in a fresh process under
``/usr/bin/time -v`` (wall time end to end incl. imports, data load and any Ray start; max
RSS of that process). raydl = profile the reference + check the current, in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_PY = ROOT / ".venv-peers" / "bin" / "python"
SCENARIOS = ("all", "iid", "corr_flip")
TOOLS = ("raydl", "raydl-ray", "nannyml", "evidently")


def make_data(workdir: Path, rows: int) -> dict[str, Path]:
    import pyarrow.parquet as pq

    from raydl.drift import synthetic as syn

    d = workdir / f"n{rows}"
    d.mkdir(parents=True, exist_ok=True)
    files = {"reference": d / "reference.parquet"}
    files.update({s: d / f"{s}.parquet" for s in SCENARIOS})
    seeds = {"reference": 1, "all": 3, "iid": 2, "corr_flip": 4}
    for name, path in files.items():
        if not path.exists():
            scenario = "iid" if name == "reference" else name
            pq.write_table(syn.make_table(rows, seeds[name], scenario), path,
                           row_group_size=100_000)
    return files


def run_tool(tool: str, ref: Path, cur: Path, timeout: int) -> dict:
    py = sys.executable if tool.startswith("raydl") else str(PEERS_PY)
    env = dict(os.environ, NML_DISABLE_USAGE_LOGGING="1", DO_NOT_TRACK="1",
               PYTHONWARNINGS="ignore")
    cmd = ["/usr/bin/time", "-v", py, str(ROOT / "bench" / "drift_peers.py"), tool, str(ref),
           str(cur)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    out: dict = {"tool": tool, "wall_s": wall, "max_rss_mb": int(rss.group(1)) / 1024 if rss else None,
                 "rc": p.returncode}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode == 0 and lines:
        out.update(json.loads(lines[-1]))
    else:
        out["error"] = p.stderr[-2000:]
    return out


def score(result: dict, scenario: str) -> dict:
    from raydl.drift.synthetic import CHANGED

    expected = set(CHANGED[scenario])
    got = set(result.get("drifted_features", []))
    mv = result.get("multivariate")
    return {"missed": sorted(expected - got), "false": sorted(got - expected),
            "multivariate_ok": None if mv is None else mv == (scenario != "iid")}


def bench(args: argparse.Namespace) -> dict:
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(),
                       "loadavg_start": os.getloadavg()}, "runs": []}
    for rows in args.rows:
        files = make_data(Path(args.workdir), rows)
        for tool in args.tools:
            for scenario in args.scenarios if tool != "raydl-ray" else ["all"]:
                reps = args.repeats if scenario == "all" else 1
                if tool in ("nannyml", "evidently") and scenario == "all":
                    reps = args.peer_repeats
                for rep in range(reps):
                    r = run_tool(tool, files["reference"], files[scenario], args.timeout)
                    r.update(rows=rows, scenario=scenario, rep=rep, loadavg=os.getloadavg()[0],
                             **score(r, scenario))
                    print(json.dumps({k: v for k, v in r.items() if k != "error"}), flush=True)
                    out["runs"].append(r)
                    Path(args.results).write_text(json.dumps(out, indent=1))
    out["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.results).write_text(json.dumps(out, indent=1))
    return out


def markdown(results: list[dict]) -> str:
    runs = [r for res in results for r in res["runs"]]
    lines = ["| rows | tool | wall s (median) | max RSS MB (median) | runs | check-only s |",
             "|---:|---|---:|---:|---:|---:|"]
    for rows in sorted({r["rows"] for r in runs}):
        for tool in TOOLS:
            rs = [r for r in runs if r["rows"] == rows and r["tool"] == tool
                  and r["scenario"] == "all" and r["rc"] == 0]
            if not rs:
                continue
            chk = [r["check_only_s"] for r in rs if "check_only_s" in r]
            lines.append(
                f"| {rows:,} | {tool} | {statistics.median(r['wall_s'] for r in rs):.1f} | "
                f"{statistics.median(r['max_rss_mb'] for r in rs):.0f} | {len(rs)} | "
                f"{statistics.median(chk):.2f} |" if chk else
                f"| {rows:,} | {tool} | {statistics.median(r['wall_s'] for r in rs):.1f} | "
                f"{statistics.median(r['max_rss_mb'] for r in rs):.0f} | {len(rs)} | - |")
    lines += ["", "| rows | tool | scenario | missed | false alarms | multivariate right |",
              "|---:|---|---|---|---|---|"]
    seen = set()
    for r in runs:
        key = (r["rows"], r["tool"], r["scenario"])
        if key in seen or r["rc"] != 0:
            continue
        seen.add(key)
        lines.append(f"| {r['rows']:,} | {r['tool']} | {r['scenario']} | "
                     f"{', '.join(r['missed']) or '-'} | {', '.join(r['false']) or '-'} | "
                     f"{'n/a' if r['multivariate_ok'] is None else r['multivariate_ok']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    p.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--repeats", type=int, default=3, help="raydl repeats of the 'all' scenario")
    p.add_argument("--peer-repeats", type=int, default=3)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--workdir", default="/tmp/raydl-drift-bench")
    p.add_argument("--results", default=str(ROOT / "bench" / "drift_results.json"))
    p.add_argument("--markdown", metavar="RESULTS_JSON", nargs="+")
    args = p.parse_args()
    if args.markdown:
        print(markdown([json.loads(Path(f).read_text()) for f in args.markdown]))
        return
    bench(args)


if __name__ == "__main__":
    main()
