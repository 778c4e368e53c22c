"""Per-team API tokens: `rdg_<id>_<secret>`. Only a salted scrypt hash of the secret is stored; the
id finds the row, the hash is compared in constant time. Shown once, at creation."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass

from raydl.errors import AuthError, NotFoundError, SpecError
from raydl.gateway.config import ADMIN_TEAM, TEAM
from raydl.gateway.store import Store

ROLES = ("member", "maintainer", "admin")  # maintainer: member + promote/rollback; admin: tokens, quotas, all teams
FORMAT = re.compile(r"^rdg_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~20 ms a verification


def _hash(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32).hex()


_DUMMY_SALT = secrets.token_bytes(16)
_PROCESS_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class Caller:
    token_id: str
    team: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def may_promote(self) -> bool:
        return self.role in ("maintainer", "admin")


def create(store: Store, team: str, role: str = "member", label: str = "") -> tuple[str, str]:
    """A new token for `team`: (its id, the full token, shown once)."""
    if role not in ROLES:
        raise SpecError(f"--role {role!r}: unknown role; one of {', '.join(ROLES)}")
    if role == "admin" and team != ADMIN_TEAM:
        raise SpecError(f"--role admin: admin tokens belong to the team {ADMIN_TEAM!r} (--team {ADMIN_TEAM})")
    if team != ADMIN_TEAM and not TEAM.match(team):
        raise SpecError(f"--team {team!r}: not a team name (lowercase letters, digits and '-')")
    if team == ADMIN_TEAM and role != "admin":
        raise SpecError(f"--team {ADMIN_TEAM}: its tokens have --role admin")
    token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_bytes(16)
    store.add_token(id=token_id, team=team, role=role, salt=salt.hex(), hash=_hash(secret, salt), label=label[:200])
    return token_id, f"rdg_{token_id}_{secret}"


def verify(store: Store, presented: str, seen: dict[str, str] | None = None) -> Caller:
    """The caller a presented token names; AuthError (one reason, never which part was wrong) otherwise.

    `seen` (token id -> a keyed digest of a token that passed scrypt) lets a process skip scrypt for a
    token it has verified before; the row is still read every time, so a revocation counts at once."""
    m = FORMAT.match(presented or "")
    row = store.token(m.group(1)) if m else None
    quick = hmac.new(_PROCESS_KEY, (presented or "").encode(), "sha256").hexdigest()
    if row is not None and seen is not None:
        with _id_lock(row.id):  # a burst of first requests with one token runs scrypt once, not once each
            ok = hmac.compare_digest(seen.get(row.id, ""), quick) or _slow_check(row, m.group(2))
            if ok:
                seen[row.id] = quick
    else:
        salt = bytes.fromhex(row.salt) if row else _DUMMY_SALT
        digest = _hash(m.group(2) if m else "x", salt)  # the same work whether or not the id exists
        ok = row is not None and hmac.compare_digest(digest, row.hash)
    if not ok or row.revoked_at is not None:
        raise AuthError("invalid or revoked token")
    return Caller(row.id, row.team, row.role)


def _slow_check(row, secret: str) -> bool:
    return hmac.compare_digest(_hash(secret, bytes.fromhex(row.salt)), row.hash)


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _id_lock(token_id: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(token_id, threading.Lock())


def revoke(store: Store, token_id: str) -> None:
    token_id = token_id.removeprefix("rdg_").split("_")[0]
    if store.token(token_id) is None:
        raise NotFoundError(f"token {token_id!r}: no such token (`raydl gateway token list` lists them)")
    store.revoke_token(token_id)


def listing(store: Store) -> list[dict]:
    return [{"id": r.id, "team": r.team, "role": r.role, "label": r.label, "created_at": r.created_at,
             "revoked_at": r.revoked_at} for r in store.tokens()]
