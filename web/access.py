"""Who is asking, and may they: sign-in for every route, and CSRF tokens for the actions.

One rule per kind of route:

- STOW-RS stores: with a users or tokens file, everyone signs in;
- the status pages read: anonymous readers are let in as ``[http]
  anonymous_pages`` says (from this machine only, from anywhere, or never),
  and never see patient data or the actions;
- actions (retry, discard) change the ledger: a signed-in admin only, with
  a CSRF token.  Browsers resend Basic credentials to a site on their own,
  so a form another site posts would otherwise act as the admin; the token
  is an HMAC of the user and the action under a key made at start-up, so
  only a page this listener served carries it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from anyio import CapacityLimiter, to_thread
from starlette.requests import Request

from web.auth import Authenticator, User

CHALLENGE = 'Basic realm="dicom-adapter", charset="UTF-8"'
MAX_WAITING_SIGN_INS = 4  # password checks queued beyond this are refused 503


class Refused(Exception):
    """A request answered with ``status`` and one line, before or instead of its result."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or {}


class Access:
    """Sign-in checks over one :class:`Authenticator`, and the CSRF key."""

    def __init__(self, auth: Authenticator, anonymous_pages: str) -> None:
        self.auth = auth
        self.anonymous_pages = anonymous_pages
        self._hashing = CapacityLimiter(1)  # password hashes, one at a time
        self._csrf_key = secrets.token_bytes(32)

    async def uploader(self, request: Request) -> User | None:
        """Who stores: the signed-in user; None when no users or tokens are configured."""
        if not self.auth.required:
            return None
        return await self._signed_in(request)

    async def reader(self, request: Request) -> User | None:
        """Who reads a page: the signed-in user, or None for an anonymous reader let in."""
        if request.headers.get("authorization") and self.auth.required:
            return await self._signed_in(request)
        if self.anonymous_pages == "anywhere" or (
            self.anonymous_pages == "loopback" and _loopback(request)
        ):
            return None
        if not self.auth.required:
            raise Refused(403, "the status pages are open to no one here ([http] anonymous_pages)")
        return await self._signed_in(request)

    async def admin(self, request: Request) -> User:
        """A signed-in admin, or Refused (401 to sign in, 403 for another role)."""
        if not self.auth.required:
            raise Refused(403, "actions need a signed-in admin: set [http] users")
        user = await self._signed_in(request)
        if not user.admin:
            raise Refused(403, f"{user.name} is not an admin")
        return user

    def csrf_token(self, user: User, action: str) -> str:
        """The token a form for ``action`` carries for ``user``."""
        message = f"{user.name}\n{action}".encode()
        return hmac.new(self._csrf_key, message, hashlib.sha256).hexdigest()

    def check_csrf(self, user: User, action: str, token: str | None) -> None:
        if not token or not hmac.compare_digest(token, self.csrf_token(user, action)):
            raise Refused(403, "this form did not come from this page: open the page again")

    async def _signed_in(self, request: Request) -> User:
        """The user the request's credentials name; Refused 401 when none or wrong.

        A password to hash (slow on purpose) waits for the one hashing worker,
        not for the pool that streams bodies; when several already wait, the
        request is refused 503 rather than queued behind a guesser.
        """
        header = request.headers.get("authorization")
        user = self.auth.quick(header)
        if user is None and self.auth.needs_hashing(header):
            if self._hashing.statistics().tasks_waiting >= MAX_WAITING_SIGN_INS:
                raise Refused(503, "too many sign-ins at once", {"Retry-After": "5"})
            user = await to_thread.run_sync(self.auth.check, header, limiter=self._hashing)
        if user is None:
            raise Refused(401, "sign in first", {"WWW-Authenticate": CHALLENGE})
        return user


def _loopback(request: Request) -> bool:
    """Whether the client is on this machine (127.0.0.0/8, ::1)."""
    if request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False
