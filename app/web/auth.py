"""Optional gateway keys: with API_KEYS or API_KEYS_FILE set, requests need a Bearer key."""
from __future__ import annotations

import hmac
import logging

from flask import Flask, request

from app.settings import Settings
from app.web.errors import error_response

log = logging.getLogger(__name__)

ALWAYS_OPEN = {"health.healthcheck"}
DOCS_BLUEPRINT = "flasgger"      # the Swagger UI, its assets and redirects, and /openapi.json
# Browsers cannot set headers on a websocket: there the key may also come as ?token=<key>.
QUERY_TOKEN_BLUEPRINT = "ws"


def load_keys(settings: Settings) -> list[bytes]:
    """The accepted keys, from the setting and the keys file (blank lines and '#' comments skipped)."""
    keys = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
    if settings.api_keys_file:
        with open(settings.api_keys_file, encoding="utf-8") as handle:
            keys += [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    return [k.encode() for k in keys]


def key_matches(given: str, keys: list[bytes]) -> bool:
    """Compare a presented key with every accepted key in constant time."""
    presented = given.encode()
    found = False
    for key in keys:  # no early exit: the time does not depend on which key matched
        found |= hmac.compare_digest(presented, key)
    return found


def init_app(app: Flask, settings: Settings) -> None:
    """Require a key on every route but the open ones, when keys are configured."""
    keys = load_keys(settings)
    if not keys:
        return
    docs_open = not settings.protect_docs
    log.info("auth: %d gateway key(s) loaded; requests need 'Authorization: Bearer <key>'", len(keys))

    @app.before_request
    def _require_key():
        if request.endpoint in ALWAYS_OPEN or (docs_open and request.blueprint == DOCS_BLUEPRINT):
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if not header and request.blueprint == QUERY_TOKEN_BLUEPRINT:
            scheme, given = "bearer", request.args.get("token", "")
        if scheme.lower() != "bearer" or not given or not key_matches(given.strip(), keys):
            response = error_response(401, "A valid gateway key is required: 'Authorization: Bearer <key>'"
                                           " (on a websocket, '?token=<key>' works too).")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return None
