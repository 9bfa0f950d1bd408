"""Image references, parsed and normalised the way docker and kubelet spell them.

A reference is ``[domain/]path[:tag][@digest]``. Normalising fills in what users leave out:

    busybox                      → docker.io/library/busybox:latest
    busybox:1.36                 → docker.io/library/busybox:1.36
    user/app                     → docker.io/user/app:latest
    index.docker.io/library/x    → docker.io/library/x:latest
    localhost:5000/x             → localhost:5000/x:latest
    registry.k8s.io/pause:3.9    → registry.k8s.io/pause:3.9
    busybox@sha256:<hex>         → docker.io/library/busybox@sha256:<hex>   (no :latest added)

The first path component is a registry domain only if it contains ``.`` or ``:``, is
``localhost``, or has an upper-case letter (which a repository path cannot have); otherwise the
reference is on Docker Hub, where one-component names live under ``library/``.

Everything here is pure (no I/O): invalid input raises ``ValueError`` with a message that says
what is wrong, in docker's wording where docker has one, so a kubelet user sees a familiar
error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = re.compile(rf"^{_HOST}(?::[0-9]+)?$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, kw_only=True)
class Reference:
    """A parsed, normalised reference; ``str()`` gives its full spelling."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository: ``domain/path``, without tag or digest."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_default_tag(self) -> Reference:
        """The reference with ``:latest`` when it names neither a tag nor a digest."""
        if self.tag or self.digest:
            return self
        return replace(self, tag=DEFAULT_TAG)

    def with_digest(self, digest: str) -> Reference:
        """``name@digest`` (the tag dropped), the form of a repo digest."""
        return Reference(domain=self.domain, path=self.path, digest=_check_digest(digest))

    @property
    def familiar(self) -> str:
        """The short docker spelling (``busybox:latest``), for messages and docker archives."""
        path = self.path
        if self.domain == DEFAULT_DOMAIN:
            if (
                path.startswith(OFFICIAL_REPO_PREFIX)
                and "/" not in path[len(OFFICIAL_REPO_PREFIX) :]
            ):
                path = path[len(OFFICIAL_REPO_PREFIX) :]
            text = path
        else:
            text = f"{self.domain}/{path}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_image_id(value: str) -> bool:
    """True for a full image ID (``sha256:`` and 64 lowercase hex digits)."""
    return bool(_IMAGE_ID.match(value))


def _check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ValueError(f"invalid reference format: invalid digest {digest!r}")
    algorithm, _, hex_part = digest.partition(":")
    if algorithm == "sha256" and not _SHA256_HEX.match(hex_part):
        raise ValueError(
            f"invalid reference format: sha256 digest {digest!r} must be 64 lowercase hex digits"
        )
    return digest


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    looks_like_domain = (
        "." in first or ":" in first or first == "localhost" or first != first.lower()
    )
    if not slash or not looks_like_domain:
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def parse(reference: str) -> Reference:
    """Parse and normalise a reference, keeping its tag and digest as given (none added)."""
    if not reference:
        raise ValueError("invalid reference format: empty reference")
    if reference != reference.strip():
        raise ValueError(f"invalid reference format: {reference!r} has surrounding whitespace")
    if _SHA256_HEX.match(reference):
        raise ValueError(
            f"invalid repository name ({reference}), cannot specify 64-byte hexadecimal strings"
        )
    rest, at, digest = reference.partition("@")
    if at:
        _check_digest(digest)
    tag = ""
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise ValueError(f"invalid reference format: invalid tag {tag!r} in {reference!r}")
    if not rest:
        raise ValueError(f"invalid reference format: no repository name in {reference!r}")
    domain, path = _split_domain(rest)
    if not _DOMAIN.match(domain):
        raise ValueError(f"invalid reference format: invalid domain {domain!r} in {reference!r}")
    if not _PATH.match(path):
        if _PATH.match(path.lower()):
            raise ValueError(
                f"invalid reference format: repository name must be lowercase: {reference!r}"
            )
        raise ValueError(f"invalid reference format: {reference!r}")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise ValueError(
            f"invalid reference format: repository name must not be more than "
            f"{NAME_TOTAL_LENGTH_MAX} characters: {reference!r}"
        )
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def parse_normalized(reference: str) -> Reference:
    """Parse and normalise, adding ``:latest`` when neither tag nor digest is given."""
    return parse(reference).with_default_tag()


def normalize(reference: str) -> str:
    """The normalised spelling (``busybox`` → ``docker.io/library/busybox:latest``)."""
    return str(parse_normalized(reference))
