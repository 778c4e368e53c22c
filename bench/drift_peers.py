"""Run one drift tool on REF/CUR Parquet files and print one JSON line (detections, seconds).

    python bench/drift_peers.py {raydl,raydl-ray,nannyml,evidently} REF CUR

raydl runs in the main venv; nannyml / evidently in .venv-peers (pandas<3). Each run is a
fresh process so the benchmark can take its wall time and max RSS with /usr/bin/time -v.
Every tool uses its documented defaults apart from the method named in issue 3.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


def run_raydl(ref: str, cur: str, engine: str) -> dict:
    """Profile the reference and check the current file, in one process (as the CLI does)."""
    import contextlib

    from raydl.drift import build_profile, check
    from raydl.drift.engine import ray_session

    with ray_session() if engine == "ray" else contextlib.nullcontext():
        prof = build_profile(ref, engine=engine)
        t = time.perf_counter()
        res = check(prof, cur, engine=engine)
        check_s = time.perf_counter() - t
    return {"drifted_features": sorted(res.drifted_features),
            "multivariate": bool(res.multivariate and res.multivariate.drifted),
            "check_only_s": check_s}


def run_nannyml(ref: str, cur: str) -> dict:
    """UnivariateDriftCalculator(jensen_shannon) + DataReconstructionDriftCalculator, defaults."""
    import nannyml as nml
    import pandas as pd

    r, c = pd.read_parquet(ref), pd.read_parquet(cur)
    cols = list(r.columns)
    uni = nml.UnivariateDriftCalculator(column_names=cols, continuous_methods=["jensen_shannon"],
                                        categorical_methods=["jensen_shannon"], chunk_number=10)
    res = uni.fit(r).calculate(c).filter(period="analysis").to_df()
    drifted = sorted({col for col in cols if res[(col, "jensen_shannon", "alert")].any()})
    mv = nml.DataReconstructionDriftCalculator(column_names=cols, chunk_number=10).fit(r)
    mres = mv.calculate(c).filter(period="analysis").to_df()
    return {"drifted_features": drifted,
            "multivariate": bool(mres[("reconstruction_error", "alert")].any())}


def run_evidently(ref: str, cur: str) -> dict:
    """Report([DataDriftPreset(method='jensenshannon')]): per-column ValueDrift >= 0.1."""
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    r, c = pd.read_parquet(ref), pd.read_parquet(cur)
    snap = Report([DataDriftPreset(method="jensenshannon")]).run(current_data=c, reference_data=r)
    drifted = []
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("ValueDrift") and float(m["value"]) >= cfg["threshold"]:
            drifted.append(cfg["column"])
    return {"drifted_features": sorted(drifted), "multivariate": None}


def main() -> None:
    tool, ref, cur = sys.argv[1:4]
    t = time.perf_counter()
    if tool == "raydl":
        out = run_raydl(ref, cur, "local")
    elif tool == "raydl-ray":
        out = run_raydl(ref, cur, "ray")
    elif tool == "nannyml":
        out = run_nannyml(ref, cur)
    elif tool == "evidently":
        out = run_evidently(ref, cur)
    else:
        raise SystemExit(f"unknown tool {tool!r} (raydl, raydl-ray, nannyml, evidently)")
    out["in_process_s"] = time.perf_counter() - t
    print(json.dumps(out))


if __name__ == "__main__":
    main()
