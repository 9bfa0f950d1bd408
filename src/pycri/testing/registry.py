"""Local registries: Debian's docker-registry (distribution 2.8) on 127.0.0.1, started and killed
by the tests and the pull benchmark themselves: plain, with TLS (a CA made here) and htpasswd
basic auth, or with token auth (the bearer flow) against a token server the tests run in
their event loop.

The registry's access log (combined log format on its stdout) is how tests count requests:
``registry.count("GET", "/v2/x/blobs/sha256:...")``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTRY_BINARY = "/usr/bin/docker-registry"
_ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) ')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class RegistryCA:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_ca(directory: Path) -> RegistryCA:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pycri test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca = RegistryCA(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    ca.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ca.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca


@dataclass
class LocalRegistry:
    """One docker-registry process; ``start()`` waits until it accepts connections."""

    base: Path
    port: int = field(default_factory=free_port)
    tls: RegistryCA | None = None
    users: dict[str, str] = field(default_factory=dict)
    token: TokenServer | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.base / "storage"

    @property
    def log_path(self) -> Path:
        return self.base / "registry.log"

    def blob_path(self, digest: str) -> Path:
        hex_part = digest.split(":", 1)[1]
        return self.storage / f"docker/registry/v2/blobs/sha256/{hex_part[:2]}/{hex_part}/data"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
            "  secret: pycri-test-secret",
        ]
        if self.tls is not None:
            lines += [
                "  tls:",
                f"    certificate: {self.tls.cert_file}",
                f"    key: {self.tls.key_file}",
            ]
        if self.users:
            import bcrypt  # a dev dependency: only registries with users need it

            htpasswd = self.base / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                    for user, pw in self.users.items()
                )
            )
            lines += ["auth:", "  htpasswd:", "    realm: pycri-test", f"    path: {htpasswd}"]
        elif self.token is not None:
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token.realm}",
                f"    service: {self.token.service}",
                f"    issuer: {self.token.issuer}",
                f"    rootcertbundle: {self.token.cert_file}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.yml"
        config.write_text(self._config())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise TimeoutError(f"docker-registry did not listen:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far, from the access log."""
        text = self.log_path.read_text(errors="replace")
        return [(m[1], m[2], int(m[3])) for m in _ACCESS.finditer(text)]

    def count(self, method: str, path: str, *, status: int | None = None) -> int:
        return sum(
            1
            for m, p, s in self.requests()
            if m == method and p.split("?", 1)[0] == path and (status is None or s == status)
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LoopServer:
    """A TCP server on 127.0.0.1 (a free port) in the test's event loop.

    Subclasses answer one connection in ``serve``; ``stop`` also ends connections still open.
    """

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self.serve(reader, writer)
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class TokenServer(LoopServer):
    """A token server for docker-registry's ``token`` auth (the bearer flow), in the test's loop.

    A GET with Basic credentials of ``users``, or a POST of an OAuth2 refresh-token grant with
    one of ``refresh_tokens``, gets every action it asks for; an anonymous GET gets a token
    that grants nothing; wrong credentials get 401. Tokens are ES256 JWTs whose ``x5c`` is a
    self-signed certificate, the registry's ``rootcertbundle``.
    """

    service = "pycri-test-registry"
    issuer = "pycri-test-issuer"

    def __init__(self, base: Path, *, users: dict[str, str], refresh_tokens: set[str]) -> None:
        super().__init__()
        self.users = users
        self.refresh_tokens = refresh_tokens
        self.requests: list[tuple[str, str]] = []  # (method, who asked)
        self.cert_file = base / "token-signer.pem"
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pycri token signer")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        base.mkdir(parents=True, exist_ok=True)
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    @property
    def realm(self) -> str:
        return f"http://{self.host}/token"

    def token(self, subject: str, scopes: list[str]) -> str:
        """A JWT granting ``scopes`` (``repository:<name>:<actions>``)."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        status, answer = self._answer(method, target, headers, body)
        payload = json.dumps(answer).encode()
        writer.write(
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Unauthorized'}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()

    def _answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, object]]:
        if method == "POST":
            form = urllib.parse.parse_qs(body.decode())
            self.requests.append(("POST", form.get("grant_type", [""])[0]))
            if form.get("refresh_token", [""])[0] not in self.refresh_tokens:
                return 401, {"error": "invalid_grant"}
            scopes = " ".join(form.get("scope", [])).split()
            return 200, {"access_token": self.token("refreshed", scopes), "expires_in": 300}
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        scopes = query.get("scope", [])
        authorization = headers.get("authorization", "")
        if not authorization:
            self.requests.append(("GET", "anonymous"))
            return 200, {"token": self.token("", []), "expires_in": 300}
        user, _, password = base64.b64decode(authorization.split(" ", 1)[1]).decode().partition(":")
        self.requests.append(("GET", user))
        if self.users.get(user) != password:
            return 401, {"details": "invalid credentials"}
        return 200, {"token": self.token(user, scopes), "expires_in": 300}


class CuttingProxy(LoopServer):
    """A TCP proxy to a registry that breaks the first response to a chosen request midway.

    Once a request line containing ``cut_path`` passes through, the response to it is cut
    after ``cut_after`` bytes (the connection closed), once; everything else is forwarded.
    Runs in the test's event loop.
    """

    def __init__(self, upstream_port: int, *, cut_path: str, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_path = cut_path.encode()
        self.cut_after = cut_after
        self.cuts = 0
        super().__init__()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        armed = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if self.cuts == 0 and self.cut_path in data:
                    armed.set()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            sent = 0
            while data := await up_reader.read(65536):
                if armed.is_set() and self.cuts == 0:
                    if sent + len(data) >= self.cut_after:
                        writer.write(data[: self.cut_after - sent])
                        await writer.drain()
                        self.cuts += 1
                        return
                    sent += len(data)
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for stream in (writer, up_writer):
                stream.close()
