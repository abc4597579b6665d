"""Who may use the HTTP listener: a users file (HTTP Basic) and a tokens file (Bearer).

Both are plain text an admin can read and edit, one ``name:role:secret``
line each, ``#`` for comments, mode 0600:

- ``[http] users``: the secret is a salted scrypt hash in the modular-crypt
  style (``$scrypt$ln=17,r=8,p=1$<salt>$<hash>``, base64), made by
  ``dicom-adapter http add-user``; the parameters are in each line, so they
  can be raised later without breaking older lines.
- ``[http] tokens``: the secret is the SHA-256 of a random token, made by
  ``dicom-adapter http add-token``, which prints the token once.  A token
  is random and long, so a fast hash is enough; a password is not.

Roles: ``admin`` (every action) or ``user`` (storing, reading).  Basic
sends the password with every request and scrypt is slow on purpose
(about 0.3 s and 128 MiB), so hashes are checked one at a time (a peer
cannot make memory grow with parallel guesses; the HTTP side runs them on
a worker of their own and refuses a queue of them), and a password that
matched is remembered for a few minutes, as an HMAC under a key that lives
only in this process.  A name nobody has costs the same hash, so timing
does not tell which names exist.  With a users or tokens file configured
everyone must sign in, even while the file is missing or empty.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROLES = ("admin", "user")
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 17, 8, 1  # OWASP's scrypt minimum
_SCRYPT_MAXMEM = 256 * 2**20  # 128 * r * N bytes are needed; hashlib's default is 32 MiB
_REMEMBER_SECONDS = 300.0
MAX_NAME = 64  # instances.http_user holds the name whole: two users are two sources


class AuthFileError(ValueError):
    """A users or tokens file line that cannot be read; the message names the line."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The users-file secret for ``password``: scrypt with a new random salt."""
    salt = salt if salt is not None else os.urandom(16)
    digest = _scrypt(password, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
    return f"$scrypt$ln={SCRYPT_LOG_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def new_token() -> tuple[str, str]:
    """A new bearer token and the tokens-file secret for it (its SHA-256, hex)."""
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def read_entries(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (role, secret) from a users or tokens file; none if it does not exist yet.

    Raises
    ------
    AuthFileError
        A line that is not ``name:role:secret`` with a known role.
    """
    if not path.exists():
        return {}
    entries = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        role, _, secret = rest.partition(":")
        if not name or len(name) > MAX_NAME or role not in ROLES or not secret:
            expected = (
                f"expected name:role:secret, a name of at most {MAX_NAME} characters, "
                "role admin or user"
            )
            raise AuthFileError(f"{path} line {number}: {expected}")
        entries[name] = (role, secret)
    return entries


def write_entry(path: Path, name: str, role: str, secret: str) -> None:
    """Add ``name`` to a users or tokens file, or replace its line; the file stays 0600."""
    if ":" in name or not name.strip() or name != name.strip() or len(name) > MAX_NAME:
        rule = (
            f"a name may not be empty, longer than {MAX_NAME} characters (the ledger's "
            "http_user), contain ':', or begin or end in a space"
        )
        raise AuthFileError(f"{rule}: {name!r}")
    if role not in ROLES:
        raise AuthFileError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [line for line in lines if line.partition(":")[0] != name]
    kept.append(f"{name}:{role}:{secret}")
    temporary = path.with_name(f".{path.name}.new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("\n".join(kept) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class Authenticator:
    """Checks Authorization headers against the users and tokens files, read at start."""

    def __init__(self, users: Path | None, tokens: Path | None) -> None:
        # Configured: sign-in is required, even before the first add-user.
        self.required = users is not None or tokens is not None
        self.users = read_entries(users) if users is not None else {}
        self.tokens = {
            secret: User(name, role)
            for name, (role, secret) in (read_entries(tokens) if tokens else {}).items()
        }
        self._checking = threading.Lock()  # one slow hash at a time
        self._remembering = threading.Lock()
        self._key = os.urandom(32)
        self._remembered: dict[bytes, tuple[User, float]] = {}

    def quick(self, authorization: str | None) -> User | None:
        """The user a token or a recently matched password proves, without hashing."""
        parsed = _parse(authorization)
        if isinstance(parsed, str):
            digest = hashlib.sha256(parsed.encode()).hexdigest()
            matches = (u for s, u in self.tokens.items() if hmac.compare_digest(s, digest))
            return next(matches, None)
        if parsed is None:
            return None
        with self._remembering:
            remembered = self._remembered.get(self._memo(*parsed))
        return remembered[0] if remembered and remembered[1] > time.monotonic() else None

    def needs_hashing(self, authorization: str | None) -> bool:
        """Whether :meth:`check` would hash a password (slow) for this header."""
        return isinstance(_parse(authorization), tuple) and self.quick(authorization) is None

    def check(self, authorization: str | None) -> User | None:
        """The user an ``Authorization`` header proves, or None; may hash (slow)."""
        user = self.quick(authorization)
        parsed = _parse(authorization)
        if user is not None or not isinstance(parsed, tuple):
            return user
        name, password = parsed
        role, secret = self.users.get(name, ("", ""))
        with self._checking:
            matched = _verify(password, secret or _decoy())  # the same cost for anyone
        if not matched or not secret:
            return None
        user = User(name, role)
        now = time.monotonic()
        with self._remembering:
            self._remembered = {k: v for k, v in self._remembered.items() if v[1] > now}
            self._remembered[self._memo(name, password)] = (user, now + _REMEMBER_SECONDS)
        return user

    def _memo(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, f"{name}\0{password}".encode(), "sha256").digest()


def _parse(authorization: str | None) -> str | tuple[str, str] | None:
    """A bearer token, a Basic (name, password), or None for anything else."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if scheme.lower() != "basic":
        return None
    try:
        name, found, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if found and name else None


@cache
def _decoy() -> str:
    """A hash no password matches, checked for a name nobody has (made once, when needed)."""
    return hash_password(secrets.token_urlsafe(16))


def _verify(password: str, secret: str) -> bool:
    """Whether ``password`` matches a ``$scrypt$...`` secret (False for any other form)."""
    try:
        _, kind, parameters, salt, digest = secret.split("$")
        settings = dict(item.split("=") for item in parameters.split(","))
        log_n, r, p = int(settings["ln"]), int(settings["r"]), int(settings["p"])
        if kind != "scrypt" or not (10 <= log_n <= SCRYPT_LOG_N and 1 <= r <= 8 and p == 1):
            return False
        computed = _scrypt(password, _unb64(salt), log_n, r, p)
        return hmac.compare_digest(computed, _unb64(digest))
    except (ValueError, KeyError, binascii.Error):
        return False


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=2**log_n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))
