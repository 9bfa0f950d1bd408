"""Build small test images (busybox, pause) as OCI image-layout or docker-archive tarballs.

Tests and air-gapped nodes need images without a registry. This module makes them from
Debian's static busybox (package ``busybox-static``) in pure Python (tarfile, gzip, hashlib,
json), so no docker, buildah or network is involved.

Images:
- **busybox**: ``/bin/busybox`` plus a symlink in ``/bin`` for every applet (``busybox --list``,
  so ``/bin/sh`` exists), ``/etc/passwd`` and ``/etc/group`` (root, ``nobody`` 65534 and a
  user ``app`` 1000:1000 with home ``/home/app``), ``/tmp`` (1777), empty mount points
  (``/proc``, ``/sys``, ``/dev``) and empty ``/etc/hosts``, ``/etc/resolv.conf`` for the
  runtime to bind over. Cmd ``["sh"]``, PATH in Env.
- **pause**: ``/pause``, a busybox ash script that sleeps until SIGTERM or SIGINT and then
  exits 0 at once. A trapped signal interrupts ash's ``wait``, and ``wait`` reaps any child
  (``waitpid(-1)``), so as PID 1 of a pod it also reaps orphans adopted from other containers
  of a shared PID namespace. A shell trap is enough here: the kernel delivers signals to PID
  1 only for handled ones, and the trap is a handler.

Formats:
- **oci** (default): ``oci-layout``, ``index.json`` (entry annotated with the full name in
  ``io.containerd.image.name`` and the tag in ``org.opencontainers.image.ref.name``) and
  ``blobs/sha256/*``; one gzip'd layer; OCI media types.
- **docker**: docker save's classic layout: ``manifest.json`` (``RepoTags`` in docker's short
  spelling), ``repositories``, ``<config hex>.json`` and ``<diff id hex>/layer.tar``
  (uncompressed). An archive has no manifest: the importer makes a Docker schema 2 manifest
  with ``spec.docker_manifest``, and ``BuiltImage.manifest_digest`` is the digest it will get.

Reproducibility: entries sorted, every mtime ``SOURCE_MTIME``, owners numeric without names,
gzip header without name or time, JSON canonical. The same busybox binary and ref give
byte-identical tarballs, so digests are stable across runs (what idempotency tests rely on).

Everything here blocks (file I/O, gzip, hashing, one ``busybox --list``): async callers use
``await asyncio.to_thread(build_busybox_image, path, ref=...)``. The tarball is written to a
temporary file next to ``path`` and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pycri.images import reference, spec

log = logging.getLogger(__name__)

ArchiveFormat = Literal["oci", "docker"]
MediaTypes = Literal["oci", "docker"]

BUSYBOX_BINARY = Path("/usr/bin/busybox")
# 2000-01-01T00:00:00Z: any fixed time works; 0 makes some tools warn about "implausible" dates.
SOURCE_MTIME = 946684800
SOURCE_CREATED = "2000-01-01T00:00:00Z"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PAUSE_SCRIPT = """\
#!/bin/busybox sh
# pycri's pause: sleep until SIGTERM or SIGINT, then exit 0 at once.
# `wait` returns early on a trapped signal and reaps every child, adopted orphans included.
trap 'kill $child 2>/dev/null; exit 0' TERM INT
while :; do
  /bin/busybox sleep 86400 &
  child=$!
  wait $child
done
"""
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
app:x:1000:
nogroup:x:65534:
"""


@dataclass(frozen=True, kw_only=True)
class LayerEntry:
    """One file system object of a layer: ``kind`` is file, dir or symlink."""

    path: str
    kind: Literal["file", "dir", "symlink"]
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    target: str = ""


@dataclass(frozen=True, kw_only=True)
class BuiltLayer:
    digest: str  # of the blob as stored (gzip'd for OCI, plain tar for docker archives)
    diff_id: str  # of the uncompressed tar
    size: int
    media_type: str


@dataclass(frozen=True, kw_only=True)
class BuiltImage:
    """What a build produced: enough for tests to check an import without re-reading it."""

    ref: str  # normalised
    path: Path
    format: ArchiveFormat
    manifest_digest: str
    manifest_size: int
    config_digest: str
    layers: tuple[BuiltLayer, ...]
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        return self.config_digest

    @property
    def chain_id(self) -> str:
        return spec.chain_id([layer.diff_id for layer in self.layers])


def busybox_applets(busybox: Path = BUSYBOX_BINARY) -> list[str]:
    """The applet names this busybox provides (``busybox --list``)."""
    out = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=30
    )
    applets = sorted({name.strip() for name in out.stdout.split() if name.strip()})
    if "sh" not in applets:
        raise RuntimeError(f"{busybox} has no sh applet; is it busybox-static?")
    return applets


def _base_entries() -> list[LayerEntry]:
    dirs = {
        "bin": 0o755,
        "dev": 0o755,
        "etc": 0o755,
        "proc": 0o555,
        "root": 0o700,
        "sys": 0o555,
        "tmp": 0o1777,
        "usr": 0o755,
        "usr/bin": 0o755,
        "var": 0o755,
    }
    entries = [LayerEntry(path=p, kind="dir", mode=m) for p, m in dirs.items()]
    entries += [
        LayerEntry(path="etc/passwd", kind="file", data=PASSWD.encode()),
        LayerEntry(path="etc/group", kind="file", data=GROUP.encode()),
        # Empty files for the runtime to bind-mount its own over.
        LayerEntry(path="etc/hosts", kind="file"),
        LayerEntry(path="etc/resolv.conf", kind="file"),
        LayerEntry(path="etc/hostname", kind="file"),
    ]
    return entries


def _busybox_entry(busybox: Path) -> LayerEntry:
    return LayerEntry(path="bin/busybox", kind="file", mode=0o755, data=busybox.read_bytes())


def busybox_entries(busybox: Path = BUSYBOX_BINARY) -> list[LayerEntry]:
    entries = [*_base_entries(), _busybox_entry(busybox)]
    entries += [
        LayerEntry(path=f"bin/{applet}", kind="symlink", target="busybox", mode=0o777)
        for applet in busybox_applets(busybox)
        if applet != "busybox"
    ]
    # Scripts commonly start with #!/usr/bin/env.
    entries.append(LayerEntry(path="usr/bin/env", kind="symlink", target="/bin/busybox"))
    entries += [
        LayerEntry(path="home", kind="dir", mode=0o755),
        LayerEntry(path="home/app", kind="dir", mode=0o755, uid=1000, gid=1000),
    ]
    return entries


def pause_entries(busybox: Path = BUSYBOX_BINARY) -> list[LayerEntry]:
    entries = [*_base_entries(), _busybox_entry(busybox)]
    entries += [
        LayerEntry(path="bin/sh", kind="symlink", target="busybox", mode=0o777),
        LayerEntry(path="bin/sleep", kind="symlink", target="busybox", mode=0o777),
        LayerEntry(path="pause", kind="file", mode=0o755, data=PAUSE_SCRIPT.encode()),
    ]
    return entries


def layer_tar(entries: Iterable[LayerEntry]) -> bytes:
    """An uncompressed, reproducible layer tar of ``entries`` (parents sort before children)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path)
            info.mtime = SOURCE_MTIME
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def image_config(
    *,
    diff_ids: Sequence[str],
    cmd: Sequence[str] = (),
    entrypoint: Sequence[str] = (),
    env: Sequence[str] = (DEFAULT_PATH_ENV,),
    working_dir: str = "/",
    user: str = "",
    labels: Mapping[str, str] | None = None,
    created_by: str = "pycri oci_build",
    arch: str | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": list(env), "WorkingDir": working_dir}
    if cmd:
        config["Cmd"] = list(cmd)
    if entrypoint:
        config["Entrypoint"] = list(entrypoint)
    if user:
        config["User"] = user
    if labels:
        config["Labels"] = dict(labels)
    return {
        "architecture": arch or spec.go_arch(),
        "os": "linux",
        "created": SOURCE_CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": SOURCE_CREATED, "created_by": created_by}],
    }


@dataclass(frozen=True, kw_only=True)
class _ArchiveMember:
    name: str
    data: bytes = b""
    is_dir: bool = False


def _write_archive(path: Path, members: Sequence[_ArchiveMember]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for member in members:
                info = tarfile.TarInfo(member.name)
                info.mtime = SOURCE_MTIME
                info.uname = info.gname = ""
                if member.is_dir:
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                else:
                    info.mode = 0o644
                    info.size = len(member.data)
                    tar.addfile(info, io.BytesIO(member.data))
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _layout_index(
    desc: Mapping[str, Any],
    name: reference.Reference,
    *,
    platform: Mapping[str, str] | None = None,
) -> bytes:
    """An OCI layout's ``index.json``: one entry, ``desc``, named ``name`` (full and tag)."""
    entry: dict[str, Any] = {
        **desc,
        "annotations": {
            spec.ANNOTATION_CONTAINERD_NAME: str(name),
            spec.ANNOTATION_REF_NAME: name.tag,
        },
    }
    if platform is not None:
        entry["platform"] = dict(platform)
    return spec.canonical_json(
        {"schemaVersion": 2, "mediaType": spec.OCI_INDEX, "manifests": [entry]}
    )


def _layout_members(index: bytes, blobs: Iterable[bytes]) -> list[_ArchiveMember]:
    """The members of an OCI layout: ``oci-layout``, ``index.json`` and the blobs."""
    by_digest = {spec.sha256_digest(b): b for b in blobs}
    return [
        _ArchiveMember(
            name="oci-layout",
            data=spec.canonical_json({"imageLayoutVersion": spec.OCI_LAYOUT_VERSION}),
        ),
        _ArchiveMember(name="index.json", data=index),
        _ArchiveMember(name="blobs", is_dir=True),
        _ArchiveMember(name="blobs/sha256", is_dir=True),
        *(
            _ArchiveMember(name=f"blobs/sha256/{spec.digest_hex(d)}", data=b)
            for d, b in sorted(by_digest.items())
        ),
    ]


def build_image(
    path: Path,
    *,
    ref: str,
    entries: Sequence[LayerEntry],
    config_fields: Mapping[str, Any],
    archive_format: ArchiveFormat = "oci",
    arch: str | None = None,
    media_types: MediaTypes = "oci",
    compress: bool = True,
    more_layers: Sequence[Sequence[LayerEntry]] = (),
) -> BuiltImage:
    """Write an image of ``entries`` to ``path`` as an OCI layout or docker archive.

    ``config_fields`` are keyword arguments of ``image_config`` (cmd, entrypoint, env, ...).
    An OCI layout can hold a Docker schema 2 image instead (``media_types="docker"``, what
    a registry serves for images pushed by docker), its layers gzip'd or not (``compress``),
    and more layers on top of the first (``more_layers``, in order; OCI layouts only).
    Blocking: run it in a thread from async code.
    """
    parsed = reference.parse_normalized(ref)
    if not parsed.tag:
        raise ValueError(f"image reference {ref!r} needs a tag to name a built image")
    if more_layers and archive_format != "oci":
        raise ValueError("only an OCI layout holds more than one layer here")
    tars = [layer_tar(layer_entries) for layer_entries in [entries, *more_layers]]
    tar = tars[0]
    diff_id = spec.sha256_digest(tar)
    diff_ids = [diff_id, *(spec.sha256_digest(t) for t in tars[1:])]
    config = image_config(diff_ids=diff_ids, arch=arch, **config_fields)
    config_bytes = spec.canonical_json(config)
    config_digest = spec.sha256_digest(config_bytes)
    if archive_format == "oci":
        docker = media_types == "docker"
        blobs = [gzip.compress(t, compresslevel=6, mtime=0) if compress else t for t in tars]
        del tars, tar  # the big layers of a benchmark image: one copy at a time is enough
        layer_types = {
            (False, True): spec.OCI_LAYER_GZIP,
            (False, False): spec.OCI_LAYER,
            (True, True): spec.DOCKER_LAYER_GZIP,
            (True, False): spec.DOCKER_LAYER,
        }
        layers = [
            BuiltLayer(
                digest=spec.sha256_digest(blob),
                diff_id=layer_diff_id,
                size=len(blob),
                media_type=layer_types[docker, compress],
            )
            for blob, layer_diff_id in zip(blobs, diff_ids, strict=True)
        ]
        layer_descs = [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ]
        if docker:
            manifest_type = spec.DOCKER_MANIFEST
            manifest = spec.docker_manifest(
                spec.descriptor(spec.DOCKER_CONFIG, config_bytes), layer_descs
            )
        else:
            manifest_type = spec.OCI_MANIFEST
            manifest = spec.canonical_json(
                {
                    "schemaVersion": 2,
                    "mediaType": spec.OCI_MANIFEST,
                    "config": spec.descriptor(spec.OCI_CONFIG, config_bytes),
                    "layers": layer_descs,
                }
            )
        index = _layout_index(
            spec.descriptor(manifest_type, manifest),
            parsed,
            platform={"architecture": config["architecture"], "os": "linux"},
        )
        members = _layout_members(index, [manifest, config_bytes, *blobs])
    else:
        layers = [
            BuiltLayer(digest=diff_id, diff_id=diff_id, size=len(tar), media_type=spec.DOCKER_LAYER)
        ]
        layer = layers[0]
        manifest = spec.docker_manifest(
            spec.descriptor(spec.DOCKER_CONFIG, config_bytes),
            [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}],
        )
        config_name = f"{spec.digest_hex(config_digest)}.json"
        layer_dir = spec.digest_hex(diff_id)
        archive_manifest = [
            {
                "Config": config_name,
                "RepoTags": [parsed.familiar],
                "Layers": [f"{layer_dir}/layer.tar"],
            }
        ]
        repo, _, tag = parsed.familiar.rpartition(":")
        members = [
            _ArchiveMember(name=config_name, data=config_bytes),
            _ArchiveMember(name=layer_dir, is_dir=True),
            _ArchiveMember(name=f"{layer_dir}/layer.tar", data=tar),
            _ArchiveMember(name="manifest.json", data=json.dumps(archive_manifest).encode()),
            _ArchiveMember(name="repositories", data=json.dumps({repo: {tag: layer_dir}}).encode()),
        ]
    _write_archive(path, members)
    built = BuiltImage(
        ref=str(parsed),
        path=path,
        format=archive_format,
        manifest_digest=spec.sha256_digest(manifest),
        manifest_size=len(manifest),
        config_digest=config_digest,
        layers=tuple(layers),
        config=config,
    )
    log.info(
        "built image tarball",
        extra={
            "ref": built.ref,
            "path": str(path),
            "format": archive_format,
            "image_id": built.image_id,
            "manifest": built.manifest_digest,
        },
    )
    return built


def build_busybox_image(
    path: Path,
    *,
    ref: str = "docker.io/library/busybox:latest",
    archive_format: ArchiveFormat = "oci",
    busybox: Path = BUSYBOX_BINARY,
) -> BuiltImage:
    """A busybox image (shell, coreutils, users root/app/nobody) at ``path``. Blocking."""
    return build_image(
        path,
        ref=ref,
        entries=busybox_entries(busybox),
        config_fields={"cmd": ["sh"], "created_by": "pycri oci_build: busybox"},
        archive_format=archive_format,
    )


def build_pause_image(
    path: Path,
    *,
    ref: str = "registry.k8s.io/pause:3.9",
    archive_format: ArchiveFormat = "oci",
    busybox: Path = BUSYBOX_BINARY,
) -> BuiltImage:
    """A pause image (``/pause`` sleeps until SIGTERM/SIGINT, exits 0) at ``path``. Blocking."""
    return build_image(
        path,
        ref=ref,
        entries=pause_entries(busybox),
        config_fields={"entrypoint": ["/pause"], "created_by": "pycri oci_build: pause"},
        archive_format=archive_format,
    )


@dataclass(frozen=True, kw_only=True)
class BuiltIndex:
    """A multi-platform image: an image index over built images, in an OCI layout."""

    ref: str  # normalised
    path: Path
    index_digest: str
    index_size: int
    images: tuple[BuiltImage, ...]  # in index order


def build_index(path: Path, *, ref: str, images: Sequence[BuiltImage]) -> BuiltIndex:
    """Write an OCI layout whose image is an index over ``images`` (OCI layouts built here).

    Each entry carries its image's platform (linux and the config's architecture); every
    image's blobs are copied in. Blocking: run it in a thread from async code.
    """
    parsed = reference.parse_normalized(ref)
    if not parsed.tag:
        raise ValueError(f"image reference {ref!r} needs a tag to name a built image")
    blobs: list[bytes] = []
    entries: list[dict[str, Any]] = []
    for image in images:
        if image.format != "oci":
            raise ValueError(f"{image.path} is not an OCI layout")
        with tarfile.open(image.path) as tar:
            members = {
                info.name: f.read()
                for info in tar.getmembers()
                if info.isfile() and (f := tar.extractfile(info)) is not None
            }
        [entry] = json.loads(members["index.json"])["manifests"]
        blobs += [data for name, data in members.items() if name.startswith("blobs/")]
        entries.append(
            {
                "mediaType": entry["mediaType"],
                "digest": image.manifest_digest,
                "size": image.manifest_size,
                "platform": {"architecture": image.config["architecture"], "os": "linux"},
            }
        )
    nested = spec.canonical_json(
        {"schemaVersion": 2, "mediaType": spec.OCI_INDEX, "manifests": entries}
    )
    index = _layout_index(spec.descriptor(spec.OCI_INDEX, nested), parsed)
    _write_archive(path, _layout_members(index, [nested, *blobs]))
    return BuiltIndex(
        ref=str(parsed),
        path=path,
        index_digest=spec.sha256_digest(nested),
        index_size=len(nested),
        images=tuple(images),
    )
