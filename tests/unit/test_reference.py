"""Image reference parsing and normalisation, as docker and kubelet spell references."""

from __future__ import annotations

import pytest

from pycri.images import reference
from pycri.images.reference import Reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("user/app/sub:v1", "docker.io/user/app/sub:v1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        ("localhost:5000/x:tag", "localhost:5000/x:tag"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ("quay.io/a/b-c_d.e__f:v1.2-rc_3", "quay.io/a/b-c_d.e__f:v1.2-rc_3"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
        ("[::1]:5000/app", "[::1]:5000/app:latest"),
        ("Registry.Example/app", "Registry.Example/app:latest"),  # upper case: a domain
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
    ],
)
def test_normalize(given: str, normalised: str) -> None:
    assert reference.normalize(given) == normalised
    # normalising is idempotent
    assert reference.normalize(normalised) == normalised


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "empty reference"),
        ("Busybox", "must be lowercase"),
        ("docker.io/Library/busybox", "must be lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox:" + "t" * 129, "invalid tag"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@sha256:" + "AB" * 32, "64 lowercase hex"),
        ("busybox@md5", "invalid digest"),
        ("ab" * 32, "64-byte hexadecimal"),
        ("busy box", "invalid reference format"),
        (" busybox", "whitespace"),
        ("-busybox", "invalid reference format"),
        ("busybox/", "invalid reference format"),
        ("a//b", "invalid reference format"),
        ("exa_mple.com/app", "invalid domain"),
        (":tag", "no repository name"),
        ("docker.io/" + "a" * 250, "255 characters"),
    ],
)
def test_invalid_references_raise_clear_value_errors(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        reference.parse(given)


def test_parse_keeps_parts() -> None:
    parsed = reference.parse(f"localhost:5000/team/app:v2@{DIGEST}")
    assert parsed == Reference(domain="localhost:5000", path="team/app", tag="v2", digest=DIGEST)
    assert parsed.name == "localhost:5000/team/app"
    assert str(parsed.with_digest(DIGEST)) == f"localhost:5000/team/app@{DIGEST}"


def test_parse_adds_no_default_tag_but_parse_normalized_does() -> None:
    assert reference.parse("busybox").tag == ""
    assert reference.parse_normalized("busybox").tag == "latest"
    assert reference.parse_normalized(f"busybox@{DIGEST}").tag == ""


@pytest.mark.parametrize(
    ("given", "familiar"),
    [
        ("busybox", "busybox:latest"),
        ("user/app:v1", "user/app:v1"),
        ("docker.io/library/a/b", "library/a/b:latest"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    ],
)
def test_familiar(given: str, familiar: str) -> None:
    assert reference.parse_normalized(given).familiar == familiar


def test_is_image_id() -> None:
    assert reference.is_image_id(DIGEST)
    assert not reference.is_image_id("ab" * 32)
    assert not reference.is_image_id("sha256:abc")
    assert not reference.is_image_id("sha256:" + "AB" * 32)
