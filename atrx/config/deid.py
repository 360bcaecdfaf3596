"""``Deid``: where a center's pseudonymisation key comes from, and the rules every key obeys.

A key is at least :data:`MIN_KEY_BYTES` bytes (UTF-8), whether written in the center file
(``deid.key``, synthetic centers only: see ``CenterConfig.synthetic``) or read from the
environment (``deid.key_env``). The key itself never appears in a message.
"""

from __future__ import annotations

import os
from typing import Final

from pydantic import Field, model_validator

from atrx.config.base import StrictModel
from atrx.errors import InputError

#: the shortest key accepted, in UTF-8 bytes (HMAC-SHA256 keys shorter than this are guessable)
MIN_KEY_BYTES: Final[int] = 32
DEFAULT_KEY_ENV: Final[str] = "ATRX_DEID_KEY"
#: how to make a key, quoted in every message about one
MAKE_KEY: Final[str] = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def key_too_short(key: str) -> str | None:
    """Why ``key`` is refused (too short), or None when it is long enough. Never quotes the key."""
    n = len(key.encode("utf-8"))
    if n >= MIN_KEY_BYTES:
        return None
    return f"the key is {n} bytes; at least {MIN_KEY_BYTES} bytes (UTF-8) are needed"


class Deid(StrictModel):
    """Key of the keyed hash that pseudonymises patient ids. Prefer ``key_env`` for real centers."""

    key_env: str | None = DEFAULT_KEY_ENV
    key: str | None = Field(
        None, description=f"literal key (>= {MIN_KEY_BYTES} bytes); allowed only in a center file that says "
        "`synthetic: true`")

    @model_validator(mode="after")
    def _long_enough(self) -> Deid:
        # checked on the model, not the field, so the error line does not echo the key
        why = key_too_short(self.key) if self.key else None
        if why:
            raise ValueError(f"deid.key: {why}; make one with `{MAKE_KEY}`")
        return self

    def resolve_key(self) -> str:
        """The key: the literal one, else the environment variable's; refused when missing or short."""
        if self.key:
            return self.key
        env = self.key_env or DEFAULT_KEY_ENV
        value = os.environ.get(env) if self.key_env else None
        if not value:
            raise InputError(
                f"no pseudonymisation key: the environment variable {env} is not set",
                fix=f"export {env}=<key>, a key made with `{MAKE_KEY}` (or set deid.key_env in the center file)",
            )
        why = key_too_short(value)
        if why:
            raise InputError(
                f"pseudonymisation key from the environment variable {env} refused: {why}",
                fix=f"make a key with `{MAKE_KEY}` and export {env}=<it>; a center already ingested keeps "
                    "its key, so a new key means a new center id (or deleting the center's data)",
            )
        return value
