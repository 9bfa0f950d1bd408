"""Talking to registries over the OCI distribution API (HTTP API v2), with httpx.

**Endpoints.** A reference's domain names a registry; what is contacted for it is a list of
endpoints (``endpoints_for``): the mirrors configured for that domain
(``registry.mirrors``), in order, then the registry itself (Docker Hub's API lives at
``registry-1.docker.io``). A pull takes the first endpoint that answers the manifest request
and keeps it for the rest of that pull (a mirror that lacks the image, refuses or is down
is skipped with a warning). Pushes go to the registry itself.

**Schemes and TLS.** Endpoints speak HTTPS, verified against the system CAs plus the
``registry.ca_files`` entry of their host. A host listed in ``registry.insecure`` is spoken
to with unverified TLS, and over plain HTTP when TLS cannot be set up at all; a loopback
host (``localhost``, 127.0.0.0/8, ``[::1]``) falls back to plain HTTP the same way without
any config (but its certificate is still verified when it does speak TLS). The scheme that
worked is remembered per endpoint for the life of the ``Registry``, so the fallback costs
one failed handshake per daemon, not per request. A mirror URL with a scheme uses exactly
that scheme. ``Registry`` keeps one httpx client per TLS setting (connection pools are
shared by every pull); SSL contexts are built in a thread, as loading CA files blocks.

**Requests** (``RegistrySession``, one per pull or push of one repository) carry the
``Authorization`` its ``Authorizer`` has earned for that host; a 401 is answered once
(see ``auth``) and the request repeated. Bodies that are streams are made by a factory, so
a repeated request streams them again. Blob downloads follow redirects (to a storage
backend) — httpx drops ``Authorization`` when a redirect leaves the origin — and ask for
the raw bytes (no ``Content-Encoding`` decoding: the digest is of the bytes as stored).

**Errors** become ``pycri.errors`` with the registry's own words (its JSON error list):
404 → ``NotFound``, 401 → ``Unauthenticated``, 403 → ``PermissionDenied``, 429 and 5xx and
network failures → ``Unavailable``, other answers → ``FailedPrecondition``. Messages never
carry credentials (URLs here never contain any).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from pycri import __version__
from pycri.config import RegistryConfig
from pycri.errors import (
    CRIError,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from pycri.images import spec
from pycri.images.auth import Authorizer, Credentials, TokenRequest, basic_header
from pycri.images.document import MAX_JSON_SIZE, DigestMismatchError, ImageContentError
from pycri.images.reference import DEFAULT_DOMAIN, Reference

log = logging.getLogger(__name__)

DOCKER_HUB_API_HOST = "registry-1.docker.io"
MANIFEST_ACCEPT = ", ".join(
    (spec.OCI_INDEX, spec.DOCKER_MANIFEST_LIST, spec.OCI_MANIFEST, spec.DOCKER_MANIFEST)
)
USER_AGENT = f"pycri/{__version__}"
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# How much of an error answer is read to quote the registry's words.
MAX_ERROR_BODY = 64 << 10

Content = bytes | Callable[[], AsyncIterator[bytes]] | None


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One place to send a registry's API requests to."""

    host: str  # host[:port] contacted
    schemes: tuple[str, ...]  # tried in this order until one connects
    path: str = "/v2"  # the API root on that host
    verify: bool = True
    ca_file: str = ""
    mirror: bool = False

    def url(self, scheme: str, path: str) -> str:
        """``path`` (under the API root) or an absolute URL as given (upload locations)."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{scheme}://{self.host}{self.path}{path.removeprefix('/v2')}"


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``[::1]`` (with or without a port)."""
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _setting(table: Mapping[str, Any], host: str) -> Any:
    """A per-host setting, by ``host:port`` first, then by the bare host name."""
    if host in table:
        return table[host]
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return table.get(bare)


def _host_endpoint(host: str, config: RegistryConfig, *, mirror: bool = False) -> Endpoint:
    insecure = bool(_setting(dict.fromkeys(config.insecure, True), host))
    return Endpoint(
        host=host,
        schemes=("https", "http") if insecure or is_loopback(host) else ("https",),
        verify=not insecure,
        ca_file=_setting(config.ca_files, host) or "",
        mirror=mirror,
    )


def _mirror_endpoint(url: str, config: RegistryConfig) -> Endpoint:
    """A mirror given as ``scheme://host[:port][/path]``, or as a bare ``host[:port]``."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    endpoint = _host_endpoint(parts.netloc, config, mirror=True)
    schemes = (parts.scheme,) if parts.scheme in ("http", "https") else endpoint.schemes
    path = parts.path.strip("/")
    path = f"/{path}" if path else ""
    if not path.endswith("/v2"):
        path += "/v2"
    return replace(endpoint, schemes=schemes, path=path)


def endpoints_for(domain: str, config: RegistryConfig, *, mirrors: bool = True) -> list[Endpoint]:
    """Where to send requests for ``domain``: its mirrors (when asked), then itself."""
    found = [_mirror_endpoint(url, config) for url in config.mirrors.get(domain, [])]
    # Settings given for docker.io apply to its API host.
    upstream = _host_endpoint(domain, config)
    if domain == DEFAULT_DOMAIN:
        upstream = replace(upstream, host=DOCKER_HUB_API_HOST)
    return [*found, upstream] if mirrors else [upstream]


def _error_text(response: httpx.Response, body: bytes) -> str:
    """The registry's own words: its JSON error list, else the start of the body."""
    status = f"{response.status_code} {response.reason_phrase}".strip()
    try:
        doc = json.loads(body)
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors:
            parts = []
            for err in errors:
                if isinstance(err, dict):
                    code, message = err.get("code", ""), err.get("message", "")
                    parts.append(f"{code}: {message}" if code and message else code or message)
            return f"{status}: {'; '.join(p for p in parts if p)}"
    except (ValueError, UnicodeDecodeError):
        pass
    text = body[:200].decode(errors="replace").strip()
    return f"{status}: {text}" if text else status


async def read_limited(response: httpx.Response, *, limit: int, what: str) -> bytes:
    """The body of a streamed response, refused beyond ``limit`` bytes."""
    buffer = bytearray()
    async for piece in response.aiter_raw():
        buffer += piece
        if len(buffer) > limit:
            raise ImageContentError(f"{what} is larger than {limit} bytes")
    return bytes(buffer)


async def _error_answer(response: httpx.Response) -> str:
    try:
        body = await read_limited(response, limit=MAX_ERROR_BODY, what="error")
    except (ImageContentError, httpx.HTTPError):
        body = b""
    return _error_text(response, body)


def error_for(status: int, message: str) -> CRIError:
    if status == 404:
        return NotFound(message)
    if status == 401:
        return Unauthenticated(message)
    if status == 403:
        return PermissionDenied(message)
    if status == 429 or status >= 500:
        return Unavailable(message)
    return FailedPrecondition(message)


class Registry:
    """HTTP clients (one per TLS setting) and the scheme each endpoint answered on."""

    def __init__(
        self, config: RegistryConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport  # tests: a fake registry instead of the network
        self._clients: dict[tuple[bool, str], httpx.AsyncClient] = {}
        self._client_lock = asyncio.Lock()
        self._schemes: dict[tuple[str, str], str] = {}  # (host, path) → scheme that worked

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    def session(
        self,
        ref: Reference,
        *,
        credentials: Credentials | None = None,
        push: bool = False,
    ) -> RegistrySession:
        """A session for ``ref``'s repository: pull (via mirrors) or push (the registry only)."""
        return RegistrySession(
            self,
            endpoints=endpoints_for(ref.domain, self.config, mirrors=not push),
            repository=ref.path,
            credentials=credentials,
            push=push,
        )

    async def client(self, *, verify: bool, ca_file: str) -> httpx.AsyncClient:
        key = (verify, ca_file if verify else "")
        async with self._client_lock:
            found = self._clients.get(key)
            if found is None:
                tls: ssl.SSLContext | bool = False
                if verify:
                    tls = await asyncio.to_thread(_ssl_context, ca_file)
                found = httpx.AsyncClient(
                    verify=tls,
                    timeout=TIMEOUT,
                    headers={"User-Agent": USER_AGENT},
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                    trust_env=False,
                    transport=self._transport,
                )
                self._clients[key] = found
            return found

    async def send(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: Content = None,
        params: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send one request, falling back through the endpoint's schemes; a streamed response.

        The caller must close the response (``aclose``) or read it to the end.
        """
        key = (endpoint.host, endpoint.path)
        schemes = list(endpoint.schemes)
        if path.startswith(("http://", "https://")):
            schemes = [urlsplit(path).scheme]  # an absolute URL: exactly that
        known = self._schemes.get(key)
        if known in schemes:
            schemes.remove(known)
            schemes.insert(0, known)
        client = await self.client(verify=endpoint.verify, ca_file=endpoint.ca_file)
        failures: list[str] = []
        for scheme in schemes:
            body = content() if callable(content) else content
            request = client.build_request(
                method, endpoint.url(scheme, path), headers=headers, content=body, params=params
            )
            try:
                response = await client.send(
                    request, stream=True, follow_redirects=follow_redirects
                )
            except httpx.ConnectError as err:
                failures.append(f"{scheme}: {err or type(err).__name__}")
                continue
            except httpx.TimeoutException as err:
                raise Unavailable(
                    f"registry {endpoint.host} timed out ({type(err).__name__})"
                ) from None
            except httpx.HTTPError as err:
                raise Unavailable(
                    f"registry {endpoint.host}: {err or type(err).__name__}"
                ) from None
            if failures and response.status_code == 400:
                # Plain HTTP to a TLS port: the TLS failure before it is the real story.
                await response.aclose()
                failures.append(f"{scheme}: 400 Bad Request")
                continue
            if known != scheme:
                self._schemes[key] = scheme
                if failures:
                    log.info(
                        "registry answers over plain HTTP",
                        extra={"registry": endpoint.host, "after": "; ".join(failures)},
                    )
            return response
        raise Unavailable(f"registry {endpoint.host} is unreachable ({'; '.join(failures)})")

    async def fetch_token(self, request: TokenRequest) -> tuple[int, bytes]:
        """Ask a token server (``auth.Authorizer``); its TLS settings are its host's."""
        parts = urlsplit(request.url)
        endpoint = _host_endpoint(parts.netloc, self.config)
        endpoint = replace(endpoint, schemes=(parts.scheme,))
        headers = {"Accept": "application/json"}
        if request.basic is not None:
            headers["Authorization"] = basic_header(*request.basic)
        content: bytes | None = None
        if request.form:
            content = urlencode(list(request.form)).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        url = request.url
        if request.params:
            url = str(httpx.URL(url).copy_merge_params(list(request.params)))
        response = await self.send(endpoint, request.method, url, headers=headers, content=content)
        try:
            return response.status_code, await read_limited(
                response, limit=MAX_ERROR_BODY, what="token answer"
            )
        except httpx.HTTPError as err:
            raise Unavailable(f"token server {parts.netloc}: {err}") from None
        finally:
            await response.aclose()


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as err:
            raise FailedPrecondition(f"registry CA file {ca_file}: {err}") from None
    return context


@dataclass(frozen=True, kw_only=True)
class Fetched:
    """A manifest or index as the registry sent it, checked against its digest."""

    descriptor: dict[str, Any]  # mediaType, digest, size
    data: bytes


class RegistrySession:
    """Requests about one repository, for one pull or push (see the module doc)."""

    def __init__(
        self,
        registry: Registry,
        *,
        endpoints: list[Endpoint],
        repository: str,
        credentials: Credentials | None,
        push: bool,
    ) -> None:
        self.registry = registry
        self.endpoints = endpoints
        self.endpoint = endpoints[-1]
        self.repository = repository
        action = "pull,push" if push else "pull"
        self.authorizer = Authorizer(
            credentials=credentials,
            scope=f"repository:{repository}:{action}",
            fetch_token=registry.fetch_token,
        )

    @property
    def host(self) -> str:
        return self.endpoint.host

    async def request(
        self,
        method: str,
        path: str,
        *,
        endpoint: Endpoint | None = None,
        headers: Mapping[str, str] | None = None,
        content: Content = None,
        params: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """One API request with authorization; a streamed response the caller closes."""
        endpoint = endpoint or self.endpoint
        for attempt in range(2):
            sent = self.authorizer.header(endpoint.host)
            all_headers = dict(headers or {})
            if sent is not None:
                all_headers["Authorization"] = sent
            response = await self.registry.send(
                endpoint,
                method,
                path,
                headers=all_headers,
                content=content,
                params=params,
                follow_redirects=follow_redirects,
            )
            if response.status_code != 401:
                return response
            challenges = response.headers.get_list("www-authenticate")
            answer = await _error_answer(response)
            await response.aclose()
            if attempt:
                anonymous = self.authorizer.credentials_for(endpoint.host) is None
                raise Unauthenticated(
                    f"registry {endpoint.host} rejected "
                    f"{'anonymous access' if anonymous else 'the credentials'} "
                    f"for {self.authorizer.scope}: {answer}"
                )
            await self.authorizer.authorize(endpoint.host, challenges, sent=sent, answer=answer)
        raise AssertionError("unreachable")

    @staticmethod
    async def check(response: httpx.Response, what: str, *ok: int) -> httpx.Response:
        """``response`` when its status is one of ``ok``; else close it and raise."""
        if response.status_code in ok:
            return response
        answer = await _error_answer(response)
        await response.aclose()
        host = response.request.url.netloc.decode()
        raise error_for(response.status_code, f"{what}: registry {host} answered {answer}")

    # --- pulling ---------------------------------------------------------------------------

    async def resolve(self, ref: Reference) -> Fetched:
        """The manifest or index ``ref`` names, from the first endpoint that has it."""
        wanted = ref.digest or ref.tag
        last = self.endpoints[-1]
        for endpoint in self.endpoints:
            try:
                fetched = await self._get_manifest(endpoint, wanted, what=str(ref))
            except CRIError as err:
                if endpoint is last:
                    raise
                log.warning(
                    "registry mirror failed; trying the next endpoint",
                    extra={"mirror": endpoint.host, "image": str(ref), "error": err.message},
                )
                continue
            self.endpoint = endpoint
            return fetched
        raise AssertionError("unreachable")

    async def fetch_manifest(self, desc: Mapping[str, Any]) -> Fetched:
        """A manifest (or nested index) by its descriptor, from the chosen endpoint."""
        fetched = await self._get_manifest(
            self.endpoint, desc["digest"], what=f"{self.repository}@{desc['digest']}"
        )
        if fetched.descriptor["size"] != desc["size"]:
            raise DigestMismatchError(
                f"manifest {desc['digest']}: {fetched.descriptor['size']} bytes, "
                f"but its descriptor says {desc['size']}"
            )
        return fetched

    async def _get_manifest(self, endpoint: Endpoint, wanted: str, *, what: str) -> Fetched:
        path = f"/v2/{self.repository}/manifests/{wanted}"
        response = await self.request(
            "GET", path, endpoint=endpoint, headers={"Accept": MANIFEST_ACCEPT}
        )
        await self.check(response, f"manifest {what}", 200)
        try:
            data = await read_limited(response, limit=MAX_JSON_SIZE, what=f"manifest {what}")
        except httpx.HTTPError as err:
            raise Unavailable(f"manifest {what}: reading from {endpoint.host}: {err}") from None
        finally:
            await response.aclose()
        digest = spec.sha256_digest(data)
        if wanted.startswith("sha256:") and digest != wanted:
            raise DigestMismatchError(
                f"manifest {what}: registry {endpoint.host} sent content whose digest is {digest}"
            )
        if ":" in wanted and not wanted.startswith("sha256:"):
            raise ImageContentError(f"manifest {what}: only sha256 digests are supported")
        declared = response.headers.get("Docker-Content-Digest", "")
        if declared.startswith("sha256:") and declared != digest:
            raise DigestMismatchError(
                f"manifest {what}: registry {endpoint.host} says its digest is {declared}, "
                f"but its content's is {digest}"
            )
        content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        return Fetched(
            descriptor={"mediaType": content_type, "digest": digest, "size": len(data)},
            data=data,
        )

    @contextlib.asynccontextmanager
    async def open_blob(self, digest: str, *, offset: int = 0) -> AsyncIterator[httpx.Response]:
        """A streamed blob response (206 from ``offset`` when the registry honours Range)."""
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = await self.request(
            "GET", f"/v2/{self.repository}/blobs/{digest}", headers=headers, follow_redirects=True
        )
        try:
            await self.check(response, f"blob {self.repository}@{digest}", 200, 206)
            yield response
        finally:
            await response.aclose()

    async def fetch_blob_bytes(self, desc: Mapping[str, Any], *, what: str) -> bytes:
        """A small blob (a config) in memory."""
        if desc["size"] > MAX_JSON_SIZE:
            raise ImageContentError(f"{what} {desc['digest']} is larger than {MAX_JSON_SIZE} bytes")
        async with self.open_blob(desc["digest"]) as response:
            try:
                return await read_limited(response, limit=desc["size"], what=what)
            except httpx.HTTPError as err:
                raise Unavailable(
                    f"{what} {desc['digest']}: reading from {self.host}: {err}"
                ) from None

    # --- pushing ---------------------------------------------------------------------------

    async def blob_exists(self, digest: str) -> bool:
        response = await self.request("HEAD", f"/v2/{self.repository}/blobs/{digest}")
        await response.aclose()
        if response.status_code == 404:
            return False
        await self.check(response, f"blob {self.repository}@{digest}", 200)
        return True

    async def upload_blob(
        self, desc: Mapping[str, Any], chunks: Callable[[], AsyncGenerator[bytes, None]]
    ) -> None:
        """POST an upload session, then PUT the whole blob to it (a monolithic upload)."""
        what = f"upload of {self.repository}@{desc['digest']}"
        started = await self.request("POST", f"/v2/{self.repository}/blobs/uploads/")
        await self.check(started, what, 202)
        await started.aclose()
        location = started.headers.get("Location", "")
        if not location:
            raise FailedPrecondition(f"{what}: registry {self.host} gave no upload location")
        if location.startswith("/"):
            location = f"{started.url.scheme}://{started.url.netloc.decode()}{location}"
        url = httpx.URL(location).copy_merge_params({"digest": desc["digest"]})
        response = await self.request(
            "PUT",
            str(url),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(desc["size"]),
            },
            content=chunks,
        )
        await self.check(response, what, 201)
        await response.aclose()

    async def put_manifest(self, tag_or_digest: str, data: bytes, *, media_type: str) -> None:
        response = await self.request(
            "PUT",
            f"/v2/{self.repository}/manifests/{tag_or_digest}",
            headers={"Content-Type": media_type},
            content=data,
        )
        await self.check(response, f"manifest {self.repository}:{tag_or_digest}", 201)
        await response.aclose()
