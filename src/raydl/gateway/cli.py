"""`raydl gateway serve|token|migrate`: start the gateway, manage team tokens (admin), upgrade the schema."""

from __future__ import annotations

import argparse
import json
import logging


def _store(config_path: str):
    from raydl.gateway import migrations
    from raydl.gateway.config import load_config
    from raydl.gateway.store import Store, engine_for

    cfg = load_config(config_path)
    migrations.upgrade(cfg.database_url)
    return cfg, Store(engine_for(cfg.database_url))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from raydl.gateway.app import create_app
    from raydl.gateway.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(load_config(args.config))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from raydl.gateway import tokens

    _, store = _store(args.config)
    if args.action == "create":
        if not args.team:
            from raydl.errors import SpecError

            raise SpecError("raydl gateway token create: give --team TEAM (or --team admin --role admin)")
        token_id, token = tokens.create(store, args.team, args.role, args.label or "")
        if args.json:
            print(json.dumps({"id": token_id, "team": args.team, "role": args.role, "token": token}))
        else:
            print(f"token {token_id} for team {args.team} ({args.role}); shown once, keep it secret:\n{token}")
    elif args.action == "revoke":
        if not args.token_id:
            from raydl.errors import SpecError

            raise SpecError("raydl gateway token revoke: give the TOKEN_ID (`raydl gateway token list` shows them)")
        tokens.revoke(store, args.token_id)
        print(f"revoked {args.token_id}")
    else:
        rows = tokens.listing(store)
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
                print(f"{r['id']}  {r['team']:<20} {r['role']:<10} {state:<40} {r['label']}")
            if not rows:
                print("no tokens")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from raydl.gateway import migrations
    from raydl.gateway.config import load_config

    cfg = load_config(args.config)
    before = migrations.current(cfg.database_url)
    migrations.upgrade(cfg.database_url)
    print(f"database at revision {migrations.current(cfg.database_url)} (was {before or 'empty'})")
    return 0


def add_parser(sub) -> None:
    g = sub.add_parser("gateway", help="the team gateway: an HTTP service with per-team tokens and quotas")
    gs = g.add_subparsers(dest="gateway_command", required=True)
    s = gs.add_parser("serve", help="start the gateway (uvicorn)")
    s.add_argument("--config", required=True, help="gateway.yaml")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.set_defaults(func=cmd_serve)
    t = gs.add_parser("token", help="create, revoke or list team tokens (admin)")
    t.add_argument("action", choices=["create", "revoke", "list"])
    t.add_argument("token_id", nargs="?", help="revoke: the token's id (or the token)")
    t.add_argument("--config", required=True)
    t.add_argument("--team", help="create: the team (admin for an admin token)")
    t.add_argument("--role", default="member", help="create: member, maintainer (may promote) or admin")
    t.add_argument("--label", help="create: who or what holds it")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_token)
    m = gs.add_parser("migrate", help="upgrade the gateway's database schema (serve does it too)")
    m.add_argument("--config", required=True)
    m.set_defaults(func=cmd_migrate)
