"""Load benchmark of the team gateway: N concurrent submissions from several teams, at once.

The gateway runs as `raydl gateway serve` in a process of its own (uvicorn, SQLite in WAL mode under a
temp dir) with `runner: noop`: nothing trains, and every accepted job stays RUNNING, so each team's
quota binds. One asyncio client releases all submissions together, then checks: none lost (every 201
is in its team's list), none duplicated (ids unique, list totals equal the 201s), every quota held
(accepted jobs and workers within it, and the quota filled: what was refused was refused for it),
no status but 201 and 429. Prints one JSON object; `--runs N` repeats on a fresh gateway.

    python bench/gateway_load.py --submissions 200 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gateway_server import make_token, start_process  # noqa: E402

TEAMS = {"team-a": {"max_concurrent_jobs": 30, "max_workers": 60},
         "team-b": {"max_concurrent_jobs": 20, "max_workers": 30},
         "team-c": {"max_concurrent_jobs": 10, "max_workers": 40},
         "team-d": {"max_concurrent_jobs": 60, "max_workers": 200}}
DIGITS = yaml.safe_load((REPO / "configs" / "digits_mlp.yaml").read_text())


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def one_run(n: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="gwload-"))
    cfg = {"data_dir": str(folder / "data"), "runner": "noop", "teams": TEAMS,
           "limits": {"requests_per_minute": 600000, "burst": 100000}}
    cfg["teams"] = {**TEAMS, "solo": {"max_concurrent_jobs": 1000, "max_workers": 1000}}
    toks = {t: make_token(cfg, t) for t in cfg["teams"]}
    proc, url = start_process(cfg, folder, dict(os.environ))
    try:
        teams = list(TEAMS)
        plan = [(teams[i % len(teams)], 1 + i % 3) for i in range(n)]  # 1-3 workers each, round robin

        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as client:
            start = asyncio.Event()

            async def submit(team: str, workers: int):
                await start.wait()
                body = {"kind": "train", "spec": {**DIGITS, "scaling": {"num_workers": workers}}}
                t0 = time.perf_counter()
                r = await client.post(f"{url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {toks[team]}"})
                return team, workers, r.status_code, (r.json().get("id") if r.status_code == 201 else None), time.perf_counter() - t0

            tasks = [asyncio.create_task(submit(t, w)) for t, w in plan]
            await asyncio.sleep(0.5)
            t_all = time.perf_counter()
            start.set()
            results = await asyncio.gather(*tasks)
            wall = time.perf_counter() - t_all
            solo = []  # one at a time, after the burst: the latency without queueing
            for _ in range(20):
                t0 = time.perf_counter()
                r = await client.post(f"{url}/v1/jobs", json={"spec": DIGITS}, headers={"Authorization": f"Bearer {toks['solo']}"})
                assert r.status_code == 201, r.text
                solo.append((time.perf_counter() - t0) * 1000)
            listed = {}
            for team in TEAMS:
                page = (await client.get(f"{url}/v1/jobs?limit=500", headers={"Authorization": f"Bearer {toks[team]}"})).json()
                listed[team] = page
        codes = [r[2] for r in results]
        lat = [r[4] * 1000 for r in results]
        accepted = [r for r in results if r[2] == 201]
        ids = [r[3] for r in accepted]
        per_team = {}
        for team, q in TEAMS.items():
            mine = [r for r in accepted if r[0] == team]
            listed_ids = [j["id"] for j in listed[team]["jobs"]]
            workers = sum(r[1] for r in mine)
            refused = [r for r in results if r[0] == team and r[2] == 429]
            # a refusal is right only if that submission would not have fit next to the accepted jobs
            full = len(mine) >= q["max_concurrent_jobs"] or all(workers + r[1] > q["max_workers"] for r in refused)
            per_team[team] = {"accepted": len(mine), "workers": workers, "quota": q,
                              "lost": sorted(set(r[3] for r in mine) - set(listed_ids)),
                              "listed_not_accepted": sorted(set(listed_ids) - set(r[3] for r in mine)),
                              "held": len(mine) <= q["max_concurrent_jobs"] and workers <= q["max_workers"],
                              "refusals_justified": full if refused else True}
        return {"submissions": n, "accepted_201": codes.count(201), "over_quota_429": codes.count(429),
                "other_statuses": sorted(c for c in codes if c not in (201, 429)),
                "duplicates": len(ids) - len(set(ids)), "p50_ms": round(pct(lat, 0.5)), "p99_ms": round(pct(lat, 0.99)),
                "solo_p50_ms": round(pct(solo, 0.5)), "solo_p99_ms": round(pct(solo, 0.99)), "wall_s": round(wall, 2), "throughput_rps": round(n / wall, 1), "teams": per_team,
                "load_average": os.getloadavg()[0]}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--submissions", type=int, default=200)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    runs = [asyncio.run(one_run(args.submissions)) for _ in range(args.runs)]
    ok = all(not r["other_statuses"] and not r["duplicates"] and all(
        t["held"] and t["refusals_justified"] and not t["lost"] and not t["listed_not_accepted"] for t in r["teams"].values())
        for r in runs)
    out = {"ok": ok, "runs": runs, "median_p50_ms": statistics.median(r["p50_ms"] for r in runs),
           "median_p99_ms": statistics.median(r["p99_ms"] for r in runs)}
    print(json.dumps(out, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
