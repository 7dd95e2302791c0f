"""The emulated server state of the Kard sandbox: settings, issued tokens, enrolled users, upload sessions.

Kept apart from :mod:`bridge.sandbox.store` (what was *received*, for inspection): this is what the fake Kard
*knows*, and it decides answers such as 401 (expired token), 404 (unknown user) or 409 (user exists).
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from bridge.sandbox.fault_config import FaultConfig
from bridge.sandbox.faults import FaultEngine
from bridge.sandbox.store import RecordMode, Store

__all__ = ["SandboxSettings", "SandboxState", "TokenStatus", "Upload"]

TokenStatus = Literal["valid", "missing", "invalid", "expired"]


@dataclass(slots=True)
class SandboxSettings:
    """Start-up settings; ``token_ttl`` and ``strict`` can also be changed through ``/_sandbox/config``."""

    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"  # noqa: S105 - the sandbox's documented, fake default credential
    token_ttl: float = 3600.0
    record: RecordMode = "full"
    strict: bool = True  # reject unknown fields
    max_body_bytes: int = 32 * 1024 * 1024


@dataclass(slots=True)
class Upload:
    """A historical-transaction upload session."""

    organization_id: str
    user_id: str
    completed: bool = False
    parts: int = 0


@dataclass
class SandboxState:
    """Everything one sandbox server holds; a single instance per aiohttp app."""

    settings: SandboxSettings
    store: Store = field(init=False)
    faults: FaultEngine = field(init=False)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> monotonic expiry
    users: dict[str, set[str]] = field(default_factory=dict)  # organization -> enrolled user ids
    uploads: dict[str, Upload] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = Store(self.settings.record)
        self.faults = FaultEngine(FaultConfig())

    # ------------------------------------------------------------------------------------------------ tokens

    def issue_token(self) -> tuple[str, int]:
        """A new opaque bearer token and its ``expires_in`` (whole seconds, rounded down)."""
        now = time.monotonic()
        if len(self.tokens) > 10_000:
            self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        token = "sbx_" + secrets.token_urlsafe(24)
        self.tokens[token] = now + self.settings.token_ttl
        self.store.tokens_issued += 1
        return token, int(self.settings.token_ttl)

    def check_token(self, authorization: str | None) -> TokenStatus:
        """Classify an ``Authorization`` header value."""
        if not authorization:
            return "missing"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "invalid"
        expiry = self.tokens.get(token.strip())
        if expiry is None:
            return "invalid"
        return "valid" if time.monotonic() < expiry else "expired"

    def expire_tokens(self) -> int:
        """Make every issued token expired (they then get 401 "token expired"); returns how many."""
        past = time.monotonic() - 1.0
        for token in self.tokens:
            self.tokens[token] = past
        return len(self.tokens)

    # ----------------------------------------------------------------------------------------------- uploads

    def start_upload(self, organization_id: str, user_id: str) -> str:
        """Open an upload session and return its id."""
        upload_id = str(uuid.uuid4())
        self.uploads[upload_id] = Upload(organization_id, user_id)
        return upload_id

    def find_upload(self, upload_id: str, organization_id: str, user_id: str) -> Upload | None:
        """The session with this id, if it belongs to this organization and user."""
        upload = self.uploads.get(upload_id)
        if upload is None or upload.organization_id != organization_id or upload.user_id != user_id:
            return None
        return upload

    # --------------------------------------------------------------------------------------------- lifecycle

    def reset(self, *, revoke_tokens: bool = False, keep_faults: bool = False) -> None:
        """Forget received data, users and uploads; optionally tokens; faults unless ``keep_faults``."""
        self.store.reset()
        self.users.clear()
        self.uploads.clear()
        if revoke_tokens:
            self.tokens.clear()
        if not keep_faults:
            self.faults = FaultEngine(FaultConfig())
