"""The test-image builder: valid OCI layouts and docker archives, digests matching content."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from pycri.images import spec
from pycri.testing.images import (
    BUSYBOX_BINARY,
    SOURCE_MTIME,
    build_busybox_image,
    build_pause_image,
)

pytestmark = pytest.mark.skipif(not BUSYBOX_BINARY.exists(), reason="needs Debian's busybox-static")


def _members(path: Path) -> dict[str, bytes | None]:
    """name → content (None for directories) of a tarball."""
    out: dict[str, bytes | None] = {}
    with tarfile.open(path) as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info) if info.isfile() else None
            out[info.name] = f.read() if f else None
    return out


def _blob(members: dict[str, bytes | None], digest: str) -> bytes:
    data = members[f"blobs/sha256/{spec.digest_hex(digest)}"]
    assert data is not None
    assert spec.sha256_digest(data) == digest, "blob content does not match its name"
    return data


def _layer_infos(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {info.name: info for info in tar.getmembers()}


def _layer_file(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_busybox_oci_layout_is_valid_and_digests_match(tmp_path: Path) -> None:
    built = build_busybox_image(tmp_path / "busybox.tar", ref="busybox")
    assert built.ref == "docker.io/library/busybox:latest"
    members = _members(built.path)
    assert json.loads(members["oci-layout"] or b"") == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"] or b"")
    assert index["mediaType"] == spec.OCI_INDEX
    [entry] = index["manifests"]
    assert entry["digest"] == built.manifest_digest
    assert entry["annotations"][spec.ANNOTATION_CONTAINERD_NAME] == built.ref
    assert entry["annotations"][spec.ANNOTATION_REF_NAME] == "latest"
    manifest_bytes = _blob(members, entry["digest"])
    assert len(manifest_bytes) == entry["size"] == built.manifest_size
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == spec.OCI_MANIFEST
    assert manifest["config"]["digest"] == built.config_digest
    config_bytes = _blob(members, built.config_digest)
    assert len(config_bytes) == manifest["config"]["size"]
    config: dict[str, Any] = json.loads(config_bytes)
    assert config["os"] == "linux"
    assert config["architecture"] == spec.go_arch()
    assert config["architecture"] in {"amd64", "arm64"} or os.uname().machine not in {
        "x86_64",
        "aarch64",
    }
    assert config["config"]["Cmd"] == ["sh"]
    assert any(e.startswith("PATH=") for e in config["config"]["Env"])
    [layer_desc] = manifest["layers"]
    assert layer_desc["mediaType"] == spec.OCI_LAYER_GZIP
    layer_gz = _blob(members, layer_desc["digest"])
    assert len(layer_gz) == layer_desc["size"]
    layer = gzip.decompress(layer_gz)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [spec.sha256_digest(layer)]}
    assert built.layers[0].diff_id == spec.sha256_digest(layer)
    assert built.chain_id == spec.sha256_digest(layer)  # one layer: chain ID = diff ID

    infos = _layer_infos(layer)
    assert infos["bin/busybox"].isfile() and infos["bin/busybox"].mode & 0o111
    assert _layer_file(layer, "bin/busybox") == BUSYBOX_BINARY.read_bytes()
    assert infos["bin/sh"].issym() and infos["bin/sh"].linkname == "busybox"
    assert infos["bin/ls"].issym()
    assert stat.S_IMODE(infos["tmp"].mode) == 0o1777 and infos["tmp"].isdir()
    for mountpoint in ("proc", "sys", "dev"):
        assert infos[mountpoint].isdir()
    for empty in ("etc/hosts", "etc/resolv.conf"):
        assert infos[empty].isfile() and infos[empty].size == 0
    passwd = _layer_file(layer, "etc/passwd").decode()
    assert "root:x:0:0:" in passwd
    assert "app:x:1000:1000:" in passwd
    assert "nobody:x:65534:65534:" in passwd
    assert "app:x:1000:" in _layer_file(layer, "etc/group").decode()
    assert (infos["home/app"].uid, infos["home/app"].gid) == (1000, 1000)
    assert all(i.mtime == SOURCE_MTIME for i in infos.values())
    assert all(i.uname == "" and i.gname == "" for i in infos.values())


def test_builds_are_reproducible(tmp_path: Path) -> None:
    first = build_busybox_image(tmp_path / "a.tar", ref="busybox:1")
    second = build_busybox_image(tmp_path / "b.tar", ref="busybox:1")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.manifest_digest == second.manifest_digest


def test_docker_archive_matches_the_oci_image(tmp_path: Path) -> None:
    oci = build_busybox_image(tmp_path / "oci.tar", ref="busybox")
    docker = build_busybox_image(tmp_path / "docker.tar", ref="busybox", archive_format="docker")
    # Same config, same uncompressed layer: same image ID and chain ID, another manifest.
    assert docker.config_digest == oci.config_digest
    assert docker.chain_id == oci.chain_id
    assert docker.manifest_digest != oci.manifest_digest
    members = _members(docker.path)
    [entry] = json.loads(members["manifest.json"] or b"")
    assert entry["RepoTags"] == ["busybox:latest"]
    config = members[entry["Config"]]
    assert config is not None and spec.sha256_digest(config) == docker.config_digest
    [layer_name] = entry["Layers"]
    layer = members[layer_name]
    assert layer is not None and spec.sha256_digest(layer) == docker.layers[0].diff_id
    assert json.loads(members["repositories"] or b"") == {
        "busybox": {"latest": spec.digest_hex(docker.layers[0].diff_id)}
    }
    expected_manifest = spec.docker_manifest(
        spec.descriptor(spec.DOCKER_CONFIG, config),
        [{"mediaType": spec.DOCKER_LAYER, "digest": docker.layers[0].digest, "size": len(layer)}],
    )
    assert spec.sha256_digest(expected_manifest) == docker.manifest_digest


def test_pause_image(tmp_path: Path) -> None:
    built = build_pause_image(tmp_path / "pause.tar", ref="registry.k8s.io/pause:3.9")
    assert built.ref == "registry.k8s.io/pause:3.9"
    assert built.config["config"]["Entrypoint"] == ["/pause"]
    members = _members(built.path)
    manifest = json.loads(_blob(members, built.manifest_digest))
    layer = gzip.decompress(_blob(members, manifest["layers"][0]["digest"]))
    infos = _layer_infos(layer)
    assert infos["pause"].mode & 0o111
    assert _layer_file(layer, "pause").startswith(b"#!/bin/busybox sh\n")
    assert infos["bin/busybox"].isfile()


def _pause_command(script: Path) -> list[str]:
    # As root, run it as PID 1 of a new PID namespace, as in a pod.
    if os.geteuid() == 0 and shutil.which("unshare"):
        return [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            str(BUSYBOX_BINARY),
            "sh",
            str(script),
        ]
    return [str(BUSYBOX_BINARY), "sh", str(script)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_pause_script_exits_zero_promptly_on_signal(tmp_path: Path, sig: int) -> None:
    built = build_pause_image(tmp_path / "pause.tar")
    members = _members(built.path)
    manifest = json.loads(_blob(members, built.manifest_digest))
    layer = gzip.decompress(_blob(members, manifest["layers"][0]["digest"]))
    script = tmp_path / "pause"
    script.write_bytes(_layer_file(layer, "pause"))
    proc = subprocess.Popen(_pause_command(script))
    try:
        time.sleep(0.3)
        assert proc.poll() is None, "pause must keep running"
        target = proc.pid
        if _pause_command(script)[0] == "unshare":
            out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
            target = int(out.stdout.split()[0])
        started = time.monotonic()
        os.kill(target, sig)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ref_without_tag_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a tag"):
        build_busybox_image(tmp_path / "x.tar", ref="busybox@sha256:" + "a" * 64)


def test_chain_ids_follow_the_oci_spec() -> None:
    a, b, c = (spec.sha256_digest(x) for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert spec.chain_ids([a, b, c]) == [a, ab, abc]
    assert spec.chain_id([]) == ""


def test_go_arch_names() -> None:
    assert spec.go_arch("x86_64") == "amd64"
    assert spec.go_arch("aarch64") == "arm64"
