"""`raydl registry register|list|show|promote|rollback|history|delete` (--json on each)."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any


def _version(text: str) -> int:
    m = re.fullmatch(r"v?(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (3 or v3)")
    return int(m.group(1))


def _registry(args: argparse.Namespace):
    from raydl.model_registry.api import ModelRegistry

    return ModelRegistry(args.storage, db=args.db, timeout_s=args.timeout)


def _print(args: argparse.Namespace, payload: dict, text: str) -> int:
    print(json.dumps(payload, allow_nan=False) if args.json else text)
    return 0


def _metric_line(metrics: dict | None) -> str:
    keep = ("val_accuracy", "test_accuracy", "val_ece", "test_ece", "val_r2", "test_r2")
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keep if isinstance((metrics or {}).get(k), float)) or "-"


def _describe(v: dict) -> str:
    cal = v.get("calibration") or {}
    lines = [f"{v['name']} v{v['version']}" + (f"  [{', '.join(v['aliases'])}]" if v["aliases"] else ""),
             f"  artifact:    {v['artifact_uri']}",
             f"  created:     {v['created_at']}",
             f"  source run:  {v['source_run'] or '-'} ({v['run_dir'] or 'run dir unknown'})",
             f"  data:        {(v['lineage'] or {}).get('data_source', '-')} (fingerprint {v['data_fingerprint'] or '-'})",
             f"  parent:      {v['parent'] or '-'}",
             f"  W&B run:     {v['wandb_run_id'] or '-'}",
             f"  metrics:     {_metric_line(v['metrics'])}",
             f"  calibration: {cal.get('method') or 'none'}",
             f"  drift:       {'profile.json' if v.get('drift_profile') else 'no profile'}"]
    return "\n".join(lines)


def cmd_register(args: argparse.Namespace) -> int:
    with _registry(args) as reg:
        v = reg.register(args.model_dir, args.name, parent=args.parent)
    v = {k: val for k, val in v.items() if k != "spec"} if args.json else v
    return _print(args, v, f"registered {v['name']} v{v['version']} -> {v['artifact_uri']}")


def cmd_list(args: argparse.Namespace) -> int:
    with _registry(args) as reg:
        models = reg.list()
    rows = [f"{m['name']:<24} {m['versions']:>8} {('v' + str(m['latest_version'])) if m['latest_version'] else '-':>7}  "
            + (", ".join(f"{a}=v{n}" for a, n in m["aliases"].items()) or "-") for m in models]
    text = "\n".join([f"{'name':<24} {'versions':>8} {'latest':>7}  aliases", *rows]) if models else "no models registered"
    return _print(args, {"models": models}, text)


def cmd_show(args: argparse.Namespace) -> int:
    with _registry(args) as reg:
        v = reg.show(args.ref)
    return _print(args, v, _describe(v))


def cmd_promote(args: argparse.Namespace) -> int:
    with _registry(args) as reg:
        r = reg.promote(args.name, args.version, args.alias)
    was = f"was v{r['previous_version']}" if r["previous_version"] is not None else "new alias"
    text = (f"{r['name']}: {r['alias']} -> v{r['version']} ({was})" if r["changed"]
            else f"{r['name']}: {r['alias']} already points at v{r['version']}; nothing changed")
    return _print(args, r, text)


def cmd_rollback(args: argparse.Namespace) -> int:
    with _registry(args) as reg:
        r = reg.rollback(args.name, args.alias)
    return _print(args, r, f"{r['name']}: {r['alias']} rolled back to v{r['version']} (was v{r['previous_version']})")


def cmd_history(args: argparse.Namespace) -> int:
    with _registry(args) as reg:
        h = reg.history(args.name)
    lines = [f"{h['name']}: " + (", ".join(f"{a}=v{n}" for a, n in sorted(h["aliases"].items())) or "no aliases")]
    for e in h["events"]:
        what = f"{e['action']:<8} v{e['version']}"
        if e["alias"]:
            what += f" {e['alias']}" + (f" (was v{e['previous_version']})" if e["previous_version"] is not None else " (new)")
        lines.append(f"  {e['at']}  {what}")
    return _print(args, h, "\n".join(lines))


def cmd_delete(args: argparse.Namespace) -> int:
    with _registry(args) as reg:
        r = reg.delete(args.name, args.version)
    return _print(args, r, f"deleted {r['name']} v{r['version']}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `registry ...` on the main CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage", default=None,
                        help="registry root for artifacts: a local path or s3:// URI (default: $RAYDL_REGISTRY, else ~/.raydl/registry)")
    common.add_argument("--db", default=None,
                        help="metadata database: a SQLite file path or postgresql://user@host:port/db "
                             "(default: $RAYDL_REGISTRY_DB, else <storage>/registry.db)")
    common.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for a locked database (default: $RAYDL_REGISTRY_TIMEOUT, else 10)")
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    reg = subparsers.add_parser("registry", help="versioned models with lineage and aliases (production, staging, ...)")
    sub = reg.add_subparsers(dest="registry_command", required=True)

    p = sub.add_parser("register", parents=[common], help="copy a model directory in as the next version of NAME")
    p.add_argument("model_dir")
    p.add_argument("--name", required=True)
    p.add_argument("--parent", default=None, help="NAME@VERSION this model was trained from")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("list", parents=[common], help="models, their latest versions and aliases")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", parents=[common], help="a version and its lineage: NAME, NAME@VERSION or NAME@ALIAS")
    p.add_argument("ref")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("promote", parents=[common], help="point an alias at a version")
    p.add_argument("name")
    p.add_argument("version", type=_version)
    p.add_argument("--alias", required=True, help="production, staging, or any name")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", parents=[common], help="move an alias back to its previous holder")
    p.add_argument("name")
    p.add_argument("--alias", required=True)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("history", parents=[common], help="every register, promote, rollback and delete of NAME")
    p.add_argument("name")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("delete", parents=[common], help="delete a version no alias points at")
    p.add_argument("name")
    p.add_argument("version", type=_version)
    p.set_defaults(func=cmd_delete)
    return reg
