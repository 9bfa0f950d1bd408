"""Registry authentication: the CRI's credentials, and answering a registry's challenges.

kubelet passes credentials with each PullImage (``AuthConfig``): a username and password (or
the base64 ``auth`` form of them), an identity token (an OAuth2 refresh token from ``docker
login``), or a registry token (a bearer token to send as is). ``server_address`` names the
registry they are for; credentials for another host are not sent (containerd's rule: a
mirror does not get the credentials of the registry it mirrors unless they name it, or name
no host at all).

Nothing is sent before a registry asks. A request answered 401 carries one or more
challenges (``WWW-Authenticate``):

- ``Basic realm="..."``: the username and password go in every later request to that host.
- ``Bearer realm="https://auth.example/token",service="...",scope="..."``: the token flow.
  A token is asked of the realm for the service and the scopes (ours, ``repository:<path>:
  pull`` or ``pull,push``, plus any the challenge names): with a refresh token, a POST of
  an OAuth2 form (``grant_type=refresh_token``), falling back to a GET when the server does
  not take POSTs (404/405); with a username and password, a GET with Basic credentials;
  anonymously, a plain GET. The answer's ``token`` (or ``access_token``) then goes in every
  later request to that host as ``Authorization: Bearer``. A registry token skips the fetch.

One ``Authorizer`` serves one pull or push, so tokens are scoped to its repository and never
shared between callers with other credentials. Concurrent requests that meet a 401 at once
fetch one token between them (a lock per host; whoever comes second finds the header renewed
and just retries). A request is retried once with the new header; a second 401 means the
credentials were rejected (``Unauthenticated``).

Secrets are never logged: ``Credentials`` redacts itself in ``repr``, error messages name the
host and the status only, and the token server's URL carries no secret (a refresh token
goes in a POST body).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from pycri.errors import Unauthenticated, Unavailable
from pycri.images import reference

log = logging.getLogger(__name__)

# Docker Hub answers to several names; credentials for one are for all of them.
_DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
# A token without ``expires_in`` lasts 60 s (the distribution spec's default).
DEFAULT_TOKEN_LIFETIME = 60.0
CLIENT_ID = "pycri"


@dataclass(frozen=True, kw_only=True, repr=False)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server_address: str = ""  # the host these are for; "" for any

    def __repr__(self) -> str:
        return (
            f"Credentials(username={self.username!r}, server_address={self.server_address!r}, "
            "secrets=<redacted>)"
        )

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def applies_to(self, host: str) -> bool:
        """True when these credentials may be sent to ``host`` (``host[:port]``)."""
        if not self.server_address:
            return True
        return canonical_host(server_host(self.server_address)) == canonical_host(host)

    def fingerprint(self) -> str:
        """A one-way digest of everything, so equal credentials can share one pull."""
        material = "\0".join(
            (
                self.username,
                self.password,
                self.identity_token,
                self.registry_token,
                self.server_address,
            )
        )
        return hashlib.sha256(material.encode()).hexdigest()


def parse_credentials(
    *,
    username: str = "",
    password: str = "",
    auth: str = "",
    server_address: str = "",
    identity_token: str = "",
    registry_token: str = "",
) -> Credentials | None:
    """Credentials from the fields of a CRI ``AuthConfig``; None when it carries none.

    ``auth`` is base64 of ``username:password`` (docker's config.json form) and is used when
    no username is given. ValueError when it does not decode (the message has no secret).
    """
    if auth and not username:
        try:
            decoded = base64.b64decode(auth.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("AuthConfig.auth is not base64 of username:password") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise ValueError("AuthConfig.auth is not base64 of username:password")
    credentials = Credentials(
        username=username,
        password=password,
        identity_token=identity_token,
        registry_token=registry_token,
        server_address=server_address,
    )
    return None if credentials.empty else credentials


def server_host(server_address: str) -> str:
    """``host[:port]`` of a server address given as a URL or a bare host."""
    text = server_address.strip()
    if "://" not in text:
        text = "//" + text
    return urlsplit(text).netloc or server_address


def canonical_host(host: str) -> str:
    host = host.lower()
    return reference.DEFAULT_DOMAIN if host in _DOCKER_HUB_ALIASES else host


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: Mapping[str, str]


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*(,?)')
_SCHEME = re.compile(rf"\s*,?\s*({_TOKEN})(?:\s+|$)")


def parse_challenges(headers: Sequence[str]) -> list[Challenge]:
    """The challenges of ``WWW-Authenticate`` headers (RFC 7235; several per header)."""
    challenges: list[Challenge] = []
    for header in headers:
        position = 0
        while position < len(header):
            scheme = _SCHEME.match(header, position)
            if scheme is None:
                break
            position = scheme.end()
            params: dict[str, str] = {}
            while True:
                param = _PARAM.match(header, position)
                if param is None:
                    break
                quoted, plain = param.group(2), param.group(3)
                value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
                params[param.group(1).lower()] = value
                position = param.end()
                if not param.group(4):
                    break
            challenges.append(Challenge(scheme=scheme.group(1).lower(), params=params))
    return challenges


@dataclass(frozen=True, kw_only=True)
class TokenRequest:
    """What the token server is asked; ``fetch`` sends it and returns (status, body)."""

    method: str  # GET or POST
    url: str
    params: tuple[tuple[str, str], ...] = ()  # query (GET)
    form: tuple[tuple[str, str], ...] = ()  # body (POST)
    basic: tuple[str, str] | None = None  # username, password


TokenFetch = Callable[[TokenRequest], Awaitable[tuple[int, bytes]]]


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class Authorizer:
    """Answers the challenges of one pull or push; keeps the header earned per host."""

    def __init__(
        self, *, credentials: Credentials | None, scope: str, fetch_token: TokenFetch
    ) -> None:
        self._credentials = credentials
        self.scope = scope
        self._fetch_token = fetch_token
        self._headers: dict[str, tuple[str, float]] = {}  # host → (header, expires at)
        self._locks: dict[str, asyncio.Lock] = {}

    def credentials_for(self, host: str) -> Credentials | None:
        credentials = self._credentials
        if credentials is not None and credentials.applies_to(host):
            return credentials
        return None

    def header(self, host: str) -> str | None:
        """The Authorization header to send to ``host`` now, if a challenge earned one."""
        found = self._headers.get(host)
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    async def authorize(
        self, host: str, challenges: Sequence[str], *, sent: str | None, answer: str
    ) -> None:
        """Earn a header for ``host`` after a 401 (``sent``: the header that request had).

        Raises ``Unauthenticated`` when no challenge can be answered: no credentials for a
        Basic challenge, credentials already sent and refused, a token server refusing.
        """
        lock = self._locks.setdefault(host, asyncio.Lock())
        async with lock:
            current = self.header(host)
            if current is not None and current != sent:
                return  # renewed by a concurrent request meanwhile: retry with that
            parsed = parse_challenges(challenges)
            by_scheme = {c.scheme: c for c in parsed}
            credentials = self.credentials_for(host)
            if "bearer" in by_scheme:
                header, lifetime = await self._bearer(host, by_scheme["bearer"], credentials)
            elif "basic" in by_scheme:
                if credentials is None or not credentials.username:
                    raise Unauthenticated(
                        f"registry {host} requires authentication and no username and "
                        f"password were given for it ({answer})"
                    )
                header = basic_header(credentials.username, credentials.password)
                if sent == header:
                    raise Unauthenticated(
                        f"registry {host} rejected the username and password ({answer})"
                    )
                lifetime = float("inf")
            else:
                raise Unauthenticated(
                    f"registry {host} answered 401 without a challenge pycri can answer "
                    f"({', '.join(c.scheme for c in parsed) or 'none'}): {answer}"
                )
            self._headers[host] = (header, time.monotonic() + lifetime)
            log.debug(
                "registry authorization earned",
                extra={"registry": host, "scheme": header.split(" ", 1)[0]},
            )

    async def _bearer(
        self, host: str, challenge: Challenge, credentials: Credentials | None
    ) -> tuple[str, float]:
        if credentials is not None and credentials.registry_token:
            return f"Bearer {credentials.registry_token}", float("inf")
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise Unauthenticated(f"registry {host} sent a bearer challenge without a realm URL")
        service = challenge.params.get("service", "")
        scopes = [self.scope]
        scopes += [s for s in challenge.params.get("scope", "").split(" ") if s and s != self.scope]
        status, body = await self._request_token(realm, service, scopes, credentials)
        realm_host = urlsplit(realm).netloc
        if status in (401, 403):
            who = "anonymous access" if credentials is None else "the credentials"
            raise Unauthenticated(
                f"token server {realm_host} for registry {host} refused {who} ({status})"
            )
        if status != 200:
            raise Unavailable(f"token server {realm_host} for registry {host} answered {status}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            token, lifetime = None, 0.0
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token server {realm_host} for registry {host} sent no token")
        # Renew a little early, so a token never expires between check and use.
        return f"Bearer {token}", max(lifetime - 5.0, 1.0)

    async def _request_token(
        self, realm: str, service: str, scopes: list[str], credentials: Credentials | None
    ) -> tuple[int, bytes]:
        query = [("service", service)] if service else []
        query += [("scope", scope) for scope in scopes]
        if credentials is not None and credentials.identity_token:
            form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", credentials.identity_token),
                ("client_id", CLIENT_ID),
                ("access_type", "online"),
                *query[:1],
                ("scope", " ".join(scopes)),
            ]
            status, body = await self._fetch_token(
                TokenRequest(method="POST", url=realm, form=tuple(form))
            )
            if status not in (404, 405):
                return status, body
            basic = (credentials.username or "<token>", credentials.identity_token)
        elif credentials is not None and credentials.username:
            basic = (credentials.username, credentials.password)
        else:
            basic = None
        return await self._fetch_token(
            TokenRequest(method="GET", url=realm, params=tuple(query), basic=basic)
        )
