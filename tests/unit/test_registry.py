"""The registry client without a network: challenges, credentials, endpoints, and the token flow
against a fake registry and token server (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json as _json
import logging
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest

from pycri.config import RegistryConfig
from pycri.errors import NotFound, Unauthenticated
from pycri.images import spec
from pycri.images.auth import (
    Challenge,
    Credentials,
    basic_header,
    parse_challenges,
    parse_credentials,
)
from pycri.images.document import DigestMismatchError
from pycri.images.pull import SingleFlight, _BrokenDownload, _Progress, blob_chunks
from pycri.images.reference import parse_normalized
from pycri.images.registry import Registry, endpoints_for, is_loopback

MANIFEST = spec.canonical_json({"schemaVersion": 2, "mediaType": spec.OCI_MANIFEST, "layers": []})
MANIFEST_DIGEST = spec.sha256_digest(MANIFEST)
SECRET = "very-secret-password"


class _Stream(httpx.AsyncByteStream):
    """A body that is streamed (as from a socket): ``aiter_raw`` works on it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield self.data


def _answer(
    status: int, *, content: bytes = b"", json: object = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = content if json is None else _json.dumps(json).encode()
    return httpx.Response(status, headers=headers, stream=_Stream(body))


def test_parse_challenges() -> None:
    assert parse_challenges(
        [
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/busybox:pull"'
        ]
    ) == [
        Challenge(
            scheme="bearer",
            params={
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
        )
    ]
    two = parse_challenges(['Bearer realm="a\\"b", service=svc, Basic realm="r"'])
    assert two == [
        Challenge(scheme="bearer", params={"realm": 'a"b', "service": "svc"}),
        Challenge(scheme="basic", params={"realm": "r"}),
    ]
    assert parse_challenges(["Basic", 'Basic realm="x"']) == [
        Challenge(scheme="basic", params={}),
        Challenge(scheme="basic", params={"realm": "x"}),
    ]
    assert parse_challenges([""]) == []


def test_credentials() -> None:
    assert parse_credentials() is None
    assert parse_credentials(server_address="x") is None
    creds = parse_credentials(auth="dXNlcjpwYTpzcw==")  # user:pa:ss
    assert creds is not None and (creds.username, creds.password) == ("user", "pa:ss")
    with pytest.raises(ValueError, match="not base64"):
        parse_credentials(auth="%%%")
    with pytest.raises(ValueError, match="not base64"):
        parse_credentials(auth="bm9jb2xvbg==")  # "nocolon"
    assert SECRET not in repr(Credentials(username="u", password=SECRET))
    hub = Credentials(username="u", server_address="https://index.docker.io/v1/")
    assert hub.applies_to("registry-1.docker.io") and hub.applies_to("docker.io")
    assert not hub.applies_to("quay.io")
    local = Credentials(username="u", server_address="127.0.0.1:5000")
    assert local.applies_to("127.0.0.1:5000") and not local.applies_to("127.0.0.1:5001")
    assert Credentials(username="u").applies_to("anything.test")
    assert Credentials(username="u").fingerprint() != Credentials(username="v").fingerprint()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("[::1]", True),
        ("10.0.0.1:5000", False),
        ("registry.example", False),
        ("localhost.example:80", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_endpoints() -> None:
    config = RegistryConfig(
        mirrors={
            "docker.io": ["https://mirror.test/prefix/", "http://127.0.0.1:5000", "plain.test:80"]
        },
        insecure=["plain.test", "insecure.test:5000"],
        ca_files={"mirror.test": "/ca.pem", "docker.io": "/hub.pem"},
    )
    first, second, third, hub = endpoints_for("docker.io", config)
    assert (first.host, first.schemes, first.path, first.ca_file) == (
        "mirror.test",
        ("https",),
        "/prefix/v2",
        "/ca.pem",
    )
    assert first.url("https", "/v2/library/x/manifests/1") == (
        "https://mirror.test/prefix/v2/library/x/manifests/1"
    )
    assert (second.schemes, second.path, second.mirror) == (("http",), "/v2", True)
    assert (third.schemes, third.verify) == (("https", "http"), False)  # insecure by name
    assert (hub.host, hub.schemes, hub.ca_file, hub.mirror) == (
        "registry-1.docker.io",
        ("https",),
        "/hub.pem",
        False,
    )
    assert [e.host for e in endpoints_for("docker.io", config, mirrors=False)] == [
        "registry-1.docker.io"
    ]
    [insecure] = endpoints_for("insecure.test:5000", config)
    assert (insecure.schemes, insecure.verify) == (("https", "http"), False)
    [local] = endpoints_for("localhost:5000", config)
    assert (local.schemes, local.verify) == (("https", "http"), True)
    [strict] = endpoints_for("quay.io", config)
    assert (strict.schemes, strict.verify) == (("https",), True)


class FakeRegistry:
    """A registry at ``reg.test`` behind a bearer token server at ``auth.test``."""

    def __init__(self, *, scheme: str = "bearer") -> None:
        self.scheme = scheme
        self.token_requests: list[httpx.Request] = []
        self.manifest_requests = 0
        self.digest_header = MANIFEST_DIGEST
        self.body = MANIFEST

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return self._token(request)
        if request.url.path.startswith("/v2/app/manifests/") and request.url.path[-2:] != "/2":
            self.manifest_requests += 1
            authorization = request.headers.get("Authorization", "")
            if authorization not in (
                "Bearer T1",
                "Bearer T2",
                "Bearer RT",
                basic_header("u", "pw"),
            ):
                challenge = (
                    'Bearer realm="https://auth.test/token",service="reg.test"'
                    if self.scheme == "bearer"
                    else 'Basic realm="reg"'
                )
                return _answer(
                    401,
                    headers={"WWW-Authenticate": challenge},
                    json={
                        "errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]
                    },
                )
            return _answer(
                200,
                headers={
                    "Content-Type": spec.OCI_MANIFEST,
                    "Docker-Content-Digest": self.digest_header,
                },
                content=self.body,
            )
        return _answer(
            404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
        )

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        if request.method == "POST":
            form = parse_qs(request.content.decode())
            if form.get("grant_type") == ["refresh_token"] and form.get("refresh_token") == ["RF"]:
                return _answer(200, json={"access_token": "T2"})
            return _answer(401)
        if request.headers.get("Authorization") == basic_header("u", "pw"):
            return _answer(200, json={"token": "T1", "expires_in": 300})
        return _answer(401, json={"details": "bad credentials"})


def _registry(fake: FakeRegistry) -> Registry:
    return Registry(RegistryConfig(), transport=httpx.MockTransport(fake.handle))


async def _resolve(
    fake: FakeRegistry, credentials: Credentials | None, ref: str = "reg.test/app:1"
) -> bytes:
    registry = _registry(fake)
    try:
        session = registry.session(parse_normalized(ref), credentials=credentials)
        return (await session.resolve(parse_normalized(ref))).data
    finally:
        await registry.close()


async def test_bearer_flow_with_password() -> None:
    fake = FakeRegistry()
    assert await _resolve(fake, Credentials(username="u", password="pw")) == MANIFEST
    [token] = fake.token_requests
    assert token.method == "GET" and token.headers["Authorization"] == basic_header("u", "pw")
    assert parse_qs(token.url.query.decode()) == {
        "service": ["reg.test"],
        "scope": ["repository:app:pull"],
    }
    assert fake.manifest_requests == 2  # the challenge, then the retry with the token


async def test_concurrent_requests_share_one_token() -> None:
    fake = FakeRegistry()
    registry = _registry(fake)
    ref = parse_normalized("reg.test/app:1")
    session = registry.session(ref, credentials=Credentials(username="u", password="pw"))
    try:
        results = await asyncio.gather(*(session.resolve(ref) for _ in range(5)))
    finally:
        await registry.close()
    assert {r.data for r in results} == {MANIFEST}
    assert len(fake.token_requests) == 1


async def test_identity_and_registry_tokens() -> None:
    fake = FakeRegistry()
    assert await _resolve(fake, Credentials(identity_token="RF")) == MANIFEST
    [token] = fake.token_requests
    assert token.method == "POST"
    assert parse_qs(token.content.decode())["scope"] == ["repository:app:pull"]
    fake = FakeRegistry()
    assert await _resolve(fake, Credentials(registry_token="RT")) == MANIFEST
    assert not fake.token_requests


async def test_refused_credentials_are_not_in_messages_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Unauthenticated, match="refused the credentials") as err:
        await _resolve(FakeRegistry(), Credentials(username="u", password=SECRET))
    assert SECRET not in err.value.message
    with pytest.raises(Unauthenticated, match="refused anonymous access"):
        await _resolve(FakeRegistry(), None)
    basic = FakeRegistry(scheme="basic")
    with pytest.raises(Unauthenticated, match="requires authentication"):
        await _resolve(basic, None)
    with pytest.raises(Unauthenticated, match="rejected the credentials"):
        await _resolve(basic, Credentials(username="u", password=SECRET))
    assert await _resolve(basic, Credentials(username="u", password="pw")) == MANIFEST
    # Credentials for another host are not sent: the registry asks in vain.
    with pytest.raises(Unauthenticated, match="requires authentication"):
        await _resolve(basic, Credentials(username="u", password="pw", server_address="other.test"))
    assert SECRET not in caplog.text and "pw" not in caplog.text.replace("pwd", "")


async def test_registry_answers_become_errors() -> None:
    with pytest.raises(NotFound, match="MANIFEST_UNKNOWN: manifest unknown"):
        await _resolve(FakeRegistry(), None, "reg.test/app:2")
    fake = FakeRegistry(scheme="basic")
    fake.digest_header = spec.sha256_digest(b"other")
    with pytest.raises(DigestMismatchError, match="says its digest is"):
        await _resolve(fake, Credentials(username="u", password="pw"))
    wrong = spec.sha256_digest(b"not the manifest")
    fake = FakeRegistry(scheme="basic")
    with pytest.raises(DigestMismatchError):
        fake.digest_header = ""
        await _resolve(fake, Credentials(username="u", password="pw"), f"reg.test/app@{wrong}")


async def test_mirror_without_the_image_falls_back_to_the_registry() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.scheme}://{request.url.host}{request.url.path}")
        if request.url.host == "mirror.test":
            return _answer(404, json={"errors": [{"code": "NAME_UNKNOWN"}]})
        return _answer(200, headers={"Content-Type": spec.OCI_MANIFEST}, content=MANIFEST)

    registry = Registry(
        RegistryConfig(mirrors={"reg.test": ["https://mirror.test"]}),
        transport=httpx.MockTransport(handle),
    )
    ref = parse_normalized("reg.test/app:1")
    session = registry.session(ref)
    try:
        assert (await session.resolve(ref)).descriptor["digest"] == MANIFEST_DIGEST
    finally:
        await registry.close()
    assert seen == ["https://mirror.test/v2/app/manifests/1", "https://reg.test/v2/app/manifests/1"]
    assert session.host == "reg.test"


def _blob_server(
    data: bytes, *, ranges: bool, cut: int | None = None
) -> Callable[..., httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        start = 0
        header = request.headers.get("Range", "")
        if ranges and header:
            start = int(header.removeprefix("bytes=").rstrip("-"))
        body = data[start:cut]
        return _answer(206 if start else 200, content=body)

    return handle


async def _chunks(handler: Callable[..., httpx.Response], size: int, offset: int) -> bytes:
    registry = Registry(RegistryConfig(), transport=httpx.MockTransport(handler))
    session = registry.session(parse_normalized("reg.test/app:1"))
    desc = {"digest": "sha256:" + "0" * 64, "size": size, "mediaType": spec.OCI_LAYER}
    try:
        return b"".join([chunk async for chunk in blob_chunks(session, desc, offset)])
    finally:
        await registry.close()


async def test_blob_chunks_resume_with_or_without_range() -> None:
    data = bytes(range(256)) * 20_000  # > CHUNK_SIZE
    for ranges in (True, False):
        assert await _chunks(_blob_server(data, ranges=ranges), len(data), 0) == data
        assert await _chunks(_blob_server(data, ranges=ranges), len(data), 12_345) == data[12_345:]
    with pytest.raises(_BrokenDownload, match="ended at"):
        await _chunks(_blob_server(data, ranges=True, cut=1000), len(data), 0)
    with pytest.raises(DigestMismatchError, match="more than"):
        await _chunks(_blob_server(data + b"x", ranges=True), len(data), 0)


async def test_single_flight_is_shared_and_outlives_a_cancelled_caller() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    started = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal started
        started += 1
        await gate.wait()
        return 7

    first = asyncio.create_task(flights.run("k", work))
    second = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    assert flights.running("k")
    first.cancel()  # kubelet gave up: the pull goes on for the other caller
    await asyncio.sleep(0)
    gate.set()
    assert await second == 7
    assert started == 1
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not flights.running("k")


async def test_progress_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pycri.images.pull")
    progress = _Progress("reg.test/app:1", 400)
    progress.add(100)
    reporter = asyncio.create_task(progress.report(0.01))
    await asyncio.sleep(0.05)
    reporter.cancel()
    records = [r for r in caplog.records if r.getMessage() == "pull progress"]
    assert records
    assert records[0].__dict__["percent"] == 25.0
    assert records[0].__dict__["total_bytes"] == 400
