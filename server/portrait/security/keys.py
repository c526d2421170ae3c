"""API keys to tenants.

Only SHA-256 digests of the keys are kept in memory, and a presented key is compared with
every configured digest (no early exit), so neither a memory dump, a log line nor response
timing tells which key matched or how many there are. Comparing digests rather than keys
also makes the comparison length-independent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from pathlib import Path

MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 1024  # a longer presented key is refused without hashing it
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: fits in an Authorization header


class KeyConfigError(ValueError):
    """The configured keys are unusable; the message names the place, never the key."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def key_id(presented: str) -> str:
    """Short non-reversible fingerprint of a key for logs: first 8 hex digits of its SHA-256."""
    return _digest(presented).hex()[:8]


class ApiKeys:
    """Maps API keys to tenant names. A tenant may have several keys (rotation)."""

    def __init__(self, entries: Iterable[tuple[str, str]] = (), *, source: str = "keys") -> None:
        by_digest: dict[bytes, str] = {}
        for index, (tenant, key) in enumerate(entries, 1):
            where = f"{source} entry {index}"
            _check(tenant, key, where)
            digest = _digest(key)
            if by_digest.get(digest, tenant) != tenant:
                raise KeyConfigError(f"{where}: the same key is configured for tenants "
                                     f"{by_digest[digest]!r} and {tenant!r}")
            by_digest[digest] = tenant
        self._entries: tuple[tuple[bytes, str], ...] = tuple(by_digest.items())

    # Loading -------------------------------------------------------------------------

    @classmethod
    def from_string(cls, value: str, *, source: str = "PORTRAIT_API_KEYS") -> ApiKeys:
        """Parse `tenant:key,tenant2:key2` (whitespace around items is ignored)."""
        return cls(_parse_items(value.split(","), source, "item"), source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        """Parse a file of `tenant:key` lines; blank lines and `#` comment lines are ignored."""
        return cls(_read_file(path), source=str(path))

    @classmethod
    def load(cls, value: str | None = None, path: str | Path | None = None) -> ApiKeys:
        """Keys from the PORTRAIT_API_KEYS string and/or the file, merged."""
        return cls(configured_keys(value, path), source="API keys")

    # Lookup --------------------------------------------------------------------------

    def tenant_for(self, presented: str) -> str | None:
        """The tenant owning `presented`, or None. Every configured digest is compared."""
        if not isinstance(presented, str) or not presented or len(presented) > MAX_KEY_LENGTH:
            return None
        digest = _digest(presented)
        found: str | None = None
        for candidate, tenant in self._entries:
            if hmac.compare_digest(candidate, digest):
                found = tenant
        return found

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(tenant for _, tenant in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ApiKeys(tenants={sorted(self.tenants)!r}, keys={len(self)})"


def configured_keys(value: str | None = None, path: str | Path | None = None) -> list[tuple[str, str]]:
    """The (tenant, key) pairs of the PORTRAIT_API_KEYS string and the file, in that order.
    Only for a caller inside the server that must present a key itself (the demo relay)."""
    entries = _parse_items(value.split(","), "PORTRAIT_API_KEYS", "item") if value else []
    return entries + (_read_file(path) if path else [])


def _parse_items(items: Iterable[str], source: str, unit: str) -> list[tuple[str, str]]:
    entries = []
    for number, item in enumerate(items, 1):
        item = item.strip()
        if not item:
            continue
        tenant, sep, key = item.partition(":")
        if not sep:
            raise KeyConfigError(f"{source} {unit} {number}: expected tenant:key")
        _check(tenant.strip(), key.strip(), f"{source} {unit} {number}")
        entries.append((tenant.strip(), key.strip()))
    return entries


def _read_file(path: str | Path) -> list[tuple[str, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise KeyConfigError(f"cannot read API keys file {path}: {error}") from None
    lines = ["" if line.lstrip().startswith("#") else line for line in text.splitlines()]
    return _parse_items(lines, str(path), "line")


def _check(tenant: str, key: str, where: str) -> None:
    if not _TENANT.fullmatch(tenant):
        raise KeyConfigError(f"{where}: tenant name must be 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)")
    if len(key) < MIN_KEY_LENGTH:
        raise KeyConfigError(f"{where}: the key of tenant {tenant!r} is too short "
                             f"(at least {MIN_KEY_LENGTH} characters required)")
    if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
        raise KeyConfigError(f"{where}: the key of tenant {tenant!r} must be at most {MAX_KEY_LENGTH} "
                             "printable ASCII characters without spaces")
