"""API tokens: random secrets shown once, stored as SHA-256 hashes, tied to an annotator."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.base import as_utc, utcnow
from server.db.tables import ROLES, Annotator, ApiToken
from server.errors import InvalidInput, NotFound, Unauthorized

TOKEN_PREFIX = "al_"
# Recording last use on every request would turn every read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=5)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, name: str, role: str) -> tuple[ApiToken, str]:
    """A new token for annotator ``name`` (created if new; an existing one gets ``role``).
    Returns the row and the secret, which is not stored anywhere."""
    name = name.strip()
    if not name:
        raise InvalidInput("annotator name must not be empty")
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}: use {' or '.join(ROLES)}")
    annotator = session.scalar(select(Annotator).where(Annotator.name == name))
    if annotator is None:
        annotator = Annotator(name=name, role=role)
        session.add(annotator)
        session.flush()
    else:
        annotator.role = role
        annotator.active = True
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(annotator_id=annotator.id, token_hash=hash_token(secret), prefix=secret[:10])
    session.add(token)
    session.flush()
    return token, secret


def authenticate(session: Session, secret: str | None) -> Annotator:
    if not secret:
        raise Unauthorized("missing token: send `Authorization: Bearer <token>`")
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if token is None or token.revoked_at is not None or not token.annotator.active:
        raise Unauthorized("invalid or revoked token")
    now = utcnow()
    if token.last_used_at is None or now - as_utc(token.last_used_at) > LAST_USED_RESOLUTION:
        token.last_used_at = now
    return token.annotator


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, *, prefix: str) -> ApiToken:
    matches = list(session.scalars(select(ApiToken).where(ApiToken.prefix == prefix)))
    if not matches:
        raise NotFound(f"no token starting with {prefix!r}")
    if len(matches) > 1:
        raise InvalidInput(f"{len(matches)} tokens start with {prefix!r}")
    token = matches[0]
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token
