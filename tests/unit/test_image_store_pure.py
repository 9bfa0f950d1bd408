"""The pure parts of the image store and image RPCs: config parsing, names, users."""

from __future__ import annotations

import pytest

from pycri.images.model import ImageConfig
from pycri.images.store import image_config_from_json, record_name_for
from pycri.service.image_common import image_user

ID = "sha256:" + "cd" * 32


def test_image_config_from_json() -> None:
    doc = {
        "config": {
            "Entrypoint": ["/entry"],
            "Cmd": None,
            "Env": ["PATH=/bin", "A=b"],
            "WorkingDir": "/work",
            "User": "1000:1000",
            "StopSignal": "SIGQUIT",
            "Labels": {"a": "b"},
            "Volumes": {"/data": {}, "/cache": {}},
            "ExposedPorts": {"80/tcp": {}},
        }
    }
    assert image_config_from_json(doc) == ImageConfig(
        entrypoint=("/entry",),
        env=("PATH=/bin", "A=b"),
        working_dir="/work",
        user="1000:1000",
        stop_signal="SIGQUIT",
        labels={"a": "b"},
        volumes=("/cache", "/data"),
        exposed_ports=("80/tcp",),
    )
    assert image_config_from_json({}) == ImageConfig()
    assert image_config_from_json({"config": None}) == ImageConfig()


@pytest.mark.parametrize(
    ("given", "name"),
    [
        (ID, ID),
        ("cd" * 32, ID),
        ("busybox", "docker.io/library/busybox:latest"),
        (f"busybox@{ID}", f"docker.io/library/busybox@{ID}"),
        (f"busybox:1@{ID}", f"docker.io/library/busybox@{ID}"),  # the digest decides
        ("Not_Valid", None),
        ("", None),
    ],
)
def test_record_name_for(given: str, name: str | None) -> None:
    assert record_name_for(given) == name


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", (None, "")),
        ("0", (0, "")),
        ("1000:1000", (1000, "")),
        ("app", (None, "app")),
        ("app:staff", (None, "app")),
        (":1000", (None, "")),
    ],
)
def test_image_user(user: str, expected: tuple[int | None, str]) -> None:
    assert image_user(user) == expected
