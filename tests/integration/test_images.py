"""Images without a registry: import into a real containerd, and the CRI ImageService on it."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import subprocess
import tarfile
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from pycri.containerd import api
from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import NotFoundError
from pycri.images import spec
from pycri.images.importer import (
    LABEL_CRI_IMAGE,
    ImageImportError,
    import_tarball,
)
from pycri.images.store import ImageStore
from pycri.testing.images import BuiltImage, build_image, busybox_entries
from tests.integration.helpers import (
    BUSYBOX_REF,
    CRI,
    PAUSE_REF,
    PYCRI,
    BuiltTestImages,
    Daemon,
    build_small_image,
    containerd_of,
    import_test_images,
)

SNAPSHOTTER = "overlayfs"


async def _assert_imported(
    client: ContainerdClient, built: BuiltImage, *, names: list[str]
) -> None:
    """Records, content with GC labels, and the committed chain-ID snapshot all exist."""
    repo_digests = [n.rsplit(":", 1)[0] + "@" + built.manifest_digest for n in names]
    for name in [*names, *repo_digests, built.image_id]:
        record = await client.images.get(name)
        assert record.target.digest == built.manifest_digest, name
        assert record.labels[LABEL_CRI_IMAGE] == "managed"
    manifest = await client.content.info(built.manifest_digest)
    assert manifest.labels["containerd.io/gc.ref.content.config"] == built.config_digest
    assert manifest.labels["containerd.io/gc.ref.content.l.0"] == built.layers[0].digest
    config = await client.content.info(built.config_digest)
    assert config.labels[f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"] == built.chain_id
    layer = await client.content.info(built.layers[0].digest)
    assert layer.labels["containerd.io/uncompressed"] == built.layers[0].diff_id
    assert layer.size == built.layers[0].size
    snapshot = await client.snapshots.stat(SNAPSHOTTER, built.chain_id)
    assert snapshot.kind == api.snapshots.Kind.Value("COMMITTED")
    assert snapshot.parent == ""  # one layer


async def _no_import_leftovers(client: ContainerdClient) -> None:
    leases = [lease.id for lease in await client.leases.list()]
    assert not [lease for lease in leases if lease.startswith("pycri-import-")], leases
    assert not await client.content.list_statuses()
    active = [
        s.name
        for s in await client.snapshots.list(SNAPSHOTTER)
        if s.name.startswith("pycri-unpack-")
    ]
    assert not active


async def _collect_garbage(client: ContainerdClient) -> None:
    """Run containerd's GC now: a synchronous lease delete triggers a collection."""
    lease = await client.leases.create(f"pycri-test-gc-{secrets.token_hex(4)}")
    await client.leases.delete(lease, sync=True)


# --- importing into containerd directly -----------------------------------------------


async def test_import_oci_layout(
    containerd: ContainerdClient, test_images: BuiltTestImages
) -> None:
    [imported] = await import_tarball(containerd, test_images.busybox.path)
    built = test_images.busybox
    assert imported.names == (BUSYBOX_REF,)
    assert imported.image_id == built.image_id
    assert imported.manifest_digest == imported.target_digest == built.manifest_digest
    assert imported.chain_id == built.chain_id
    assert imported.record_names == (
        BUSYBOX_REF,
        f"docker.io/library/busybox@{built.manifest_digest}",
        built.image_id,
    )
    await _assert_imported(containerd, built, names=[BUSYBOX_REF])
    await _no_import_leftovers(containerd)
    # GC keeps everything the image records reference once the lease is gone.
    await _collect_garbage(containerd)
    await _assert_imported(containerd, built, names=[BUSYBOX_REF])


async def test_import_is_idempotent(
    containerd: ContainerdClient, test_images: BuiltTestImages
) -> None:
    first = await import_tarball(containerd, test_images.pause.path)
    snapshots = {s.name for s in await containerd.snapshots.list(SNAPSHOTTER)}
    digests = set(await containerd.content.list_digests())
    second = await import_tarball(containerd, test_images.pause.path)
    assert first == second
    assert {s.name for s in await containerd.snapshots.list(SNAPSHOTTER)} == snapshots
    assert set(await containerd.content.list_digests()) == digests
    await _assert_imported(containerd, test_images.pause, names=[PAUSE_REF])
    await _no_import_leftovers(containerd)


async def test_concurrent_imports_of_one_image(
    containerd: ContainerdClient, tmp_path: Path
) -> None:
    built = await build_small_image(tmp_path, ref="docker.io/pycri-test/concurrent:1")
    results = await asyncio.gather(*(import_tarball(containerd, built.path) for _ in range(3)))
    assert {r[0].image_id for r in results} == {built.image_id}
    await _assert_imported(containerd, built, names=["docker.io/pycri-test/concurrent:1"])
    await _no_import_leftovers(containerd)


async def test_docker_archive_shares_image_id_and_snapshot(
    containerd: ContainerdClient, tmp_path: Path
) -> None:
    ref = "docker.io/pycri-test/docker-variant:1"
    built_oci = await asyncio.to_thread(
        build_image,
        tmp_path / "oci.tar",
        ref=ref,
        entries=busybox_entries(),
        config_fields={"cmd": ["sh"], "labels": {"variant": "test"}},
    )
    built_docker = await asyncio.to_thread(
        build_image,
        tmp_path / "docker.tar",
        ref=ref,
        entries=busybox_entries(),
        config_fields={"cmd": ["sh"], "labels": {"variant": "test"}},
        archive_format="docker",
    )
    [from_docker] = await import_tarball(containerd, built_docker.path)
    assert from_docker.names == (ref,)
    assert from_docker.manifest_digest == built_docker.manifest_digest
    await _assert_imported(containerd, built_docker, names=[ref])
    record = await containerd.images.get(ref)
    assert record.target.media_type == spec.DOCKER_MANIFEST
    # The OCI layout of the same image: same ID and chain ID, the snapshot is reused.
    snapshots = {s.name for s in await containerd.snapshots.list(SNAPSHOTTER)}
    [from_oci] = await import_tarball(containerd, built_oci.path)
    assert from_oci.image_id == from_docker.image_id
    assert from_oci.chain_id == from_docker.chain_id
    assert {s.name for s in await containerd.snapshots.list(SNAPSHOTTER)} == snapshots
    assert (await containerd.images.get(ref)).target.digest == built_oci.manifest_digest


async def test_extra_names(containerd: ContainerdClient, tmp_path: Path) -> None:
    built = await build_small_image(tmp_path, ref="docker.io/pycri-test/named:1")
    [imported] = await import_tarball(
        containerd, built.path, extra_names=["pycri-test/other", "localhost:5000/x:v2"]
    )
    names = [
        "docker.io/pycri-test/named:1",
        "docker.io/pycri-test/other:latest",
        "localhost:5000/x:v2",
    ]
    assert list(imported.names) == names
    await _assert_imported(containerd, built, names=names)
    with pytest.raises(ImageImportError, match="invalid reference format"):
        await import_tarball(containerd, built.path, extra_names=["Not/Valid"])


def _rewrite_tar(source: Path, target: Path, edit: dict[str, bytes]) -> None:
    with tarfile.open(source) as src, tarfile.open(target, "w") as dst:
        for info in src.getmembers():
            f = src.extractfile(info) if info.isfile() else None
            data = f.read() if f else None
            if info.name in edit:
                data = edit[info.name]
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data) if data is not None else None)


async def test_corrupted_layer_fails_cleanly(containerd: ContainerdClient, tmp_path: Path) -> None:
    ref = "docker.io/pycri-test/corrupt:1"
    built = await build_small_image(tmp_path, ref=ref, extra=b"x" * 100_000)
    layer = built.layers[0]
    member = f"blobs/sha256/{spec.digest_hex(layer.digest)}"
    with tarfile.open(built.path) as tar:
        f = tar.extractfile(member)
        assert f is not None
        original = f.read()
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2] ^= 0xFF  # same size, other digest
    bad = tmp_path / "corrupt.tar"
    await asyncio.to_thread(_rewrite_tar, built.path, bad, {member: bytes(corrupted)})

    with pytest.raises(ImageImportError, match=layer.digest):
        await import_tarball(containerd, bad)
    for name in (ref, built.image_id, f"docker.io/pycri-test/corrupt@{built.manifest_digest}"):
        with pytest.raises(NotFoundError):
            await containerd.images.get(name)
    with pytest.raises(NotFoundError):
        await containerd.content.info(layer.digest)
    with pytest.raises(NotFoundError):
        await containerd.snapshots.stat(SNAPSHOTTER, built.chain_id)
    await _no_import_leftovers(containerd)
    # What the failed import wrote under its lease (manifest, config) is collected.
    await _collect_garbage(containerd)
    for digest in (built.manifest_digest, built.config_digest):
        with pytest.raises(NotFoundError):
            await containerd.content.info(digest)
    # The intact tarball still imports afterwards.
    await import_tarball(containerd, built.path)
    await _assert_imported(containerd, built, names=[ref])


async def test_corrupted_manifest_is_refused_before_containerd(
    containerd: ContainerdClient, tmp_path: Path
) -> None:
    built = await build_small_image(tmp_path, ref="docker.io/pycri-test/badmanifest:1")
    member = f"blobs/sha256/{spec.digest_hex(built.manifest_digest)}"
    bad = tmp_path / "bad.tar"
    await asyncio.to_thread(_rewrite_tar, built.path, bad, {member: b'{"schemaVersion": 2}'})
    with pytest.raises(ImageImportError, match="does not match its digest"):
        await import_tarball(containerd, bad)
    with pytest.raises(NotFoundError):
        await containerd.images.get(built.image_id)
    await _no_import_leftovers(containerd)


async def test_not_an_image_archive(containerd: ContainerdClient, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all")
    with pytest.raises(ImageImportError, match="not a readable tar"):
        await import_tarball(containerd, junk)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(ImageImportError, match="neither an OCI image layout"):
        await import_tarball(containerd, empty)


def _cli_import(socket: Path, tarball: Path, *names: str) -> subprocess.CompletedProcess[str]:
    extra = [arg for name in names for arg in ("--name", name)]
    return subprocess.run(
        [str(PYCRI), "images", "import", "--containerd-address", str(socket), str(tarball), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_import(
    containerd: ContainerdClient, test_images: BuiltTestImages, tmp_path: Path
) -> None:
    socket = Path(containerd.address)
    built = await build_small_image(tmp_path, ref="docker.io/pycri-test/cli:1")
    result = await asyncio.to_thread(_cli_import, socket, built.path, "pycri-test/cli:alias")
    assert result.returncode == 0, result.stderr
    assert "imported docker.io/pycri-test/cli:1, docker.io/pycri-test/cli:alias" in result.stdout
    assert built.image_id in result.stdout
    await _assert_imported(
        containerd, built, names=["docker.io/pycri-test/cli:1", "docker.io/pycri-test/cli:alias"]
    )
    # Failures: a clear message and exit code 1.
    missing = await asyncio.to_thread(_cli_import, socket, tmp_path / "nope.tar")
    assert missing.returncode == 1
    assert "nope.tar" in missing.stderr and "not a readable tar" in missing.stderr
    no_socket = await asyncio.to_thread(_cli_import, tmp_path / "none.sock", built.path)
    assert no_socket.returncode == 1
    assert "does not exist" in no_socket.stderr


# --- the ImageService of a daemon ---------------------------------------------------------


async def _status(cri: CRI, ref: str, *, verbose: bool = False) -> api_pb2.ImageStatusResponse:
    request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref), verbose=verbose)
    response: api_pb2.ImageStatusResponse = await cri.image.ImageStatus(request)
    return response


async def test_image_status_finds_an_image_imported_behind_its_back(
    daemon: Daemon, cri: CRI, tmp_path: Path
) -> None:
    ref = "docker.io/pycri-test/status:1"
    built = await build_small_image(tmp_path, ref=ref, user="1000:1000")
    assert not (await _status(cri, ref)).HasField("image")
    async with containerd_of(daemon) as client:
        await import_tarball(client, built.path)
    status = await _status(cri, "pycri-test/status:1")  # normalised
    image = status.image
    assert image.id == built.image_id
    assert list(image.repo_tags) == [ref]
    assert list(image.repo_digests) == [f"docker.io/pycri-test/status@{built.manifest_digest}"]
    assert image.size == built.layers[0].size + len(spec.canonical_json(built.config))
    assert image.uid.value == 1000 and image.username == ""
    assert not image.pinned
    # By ID, bare hex ID, ID prefix and digest reference.
    for alias in (
        built.image_id,
        spec.digest_hex(built.image_id),
        built.image_id[: len("sha256:") + 12],
        spec.digest_hex(built.image_id)[:12],
        f"docker.io/pycri-test/status@{built.manifest_digest}",
        f"pycri-test/status:1@{built.manifest_digest}",
    ):
        assert (await _status(cri, alias)).image.id == built.image_id, alias
    verbose = await _status(cri, ref, verbose=True)
    info = json.loads(verbose.info["info"])
    assert info["chainID"] == built.chain_id
    assert info["imageSpec"]["config"]["User"] == "1000:1000"


async def test_image_status_username_and_unknowns(daemon: Daemon, cri: CRI, tmp_path: Path) -> None:
    built = await build_small_image(tmp_path, ref="docker.io/pycri-test/named-user:1", user="app")
    async with containerd_of(daemon) as client:
        await import_tarball(client, built.path)
    image = (await _status(cri, "pycri-test/named-user:1")).image
    assert image.username == "app" and not image.HasField("uid")
    # Unknown or unparsable: success with no image (kubelet then pulls).
    for ref in ("pycri-test/never-imported:1", "sha256:" + "0" * 64, "Not_Valid"):
        assert not (await _status(cri, ref)).HasField("image"), ref
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _status(cri, "")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_images_and_pinned_sandbox_image(daemon: Daemon, cri: CRI) -> None:
    images = await import_test_images(daemon.containerd_socket)
    # A lookup makes the daemon read them (normally the image event does).
    for ref in (BUSYBOX_REF, PAUSE_REF):
        assert (await _status(cri, ref)).image.id
    listed = (await cri.image.ListImages(api_pb2.ListImagesRequest())).images
    by_id = {image.id: image for image in listed}
    assert BUSYBOX_REF in by_id[images.busybox.image_id].repo_tags
    pause = by_id[images.pause.image_id]
    assert PAUSE_REF in pause.repo_tags and pause.pinned
    assert not by_id[images.busybox.image_id].pinned
    filtered = await cri.image.ListImages(
        api_pb2.ListImagesRequest(
            filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image="busybox"))
        )
    )
    assert [i.id for i in filtered.images] == [images.busybox.image_id]
    none = await cri.image.ListImages(
        api_pb2.ListImagesRequest(
            filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image="pycri-test/nothing"))
        )
    )
    assert not none.images


async def test_remove_image_removes_every_record(daemon: Daemon, cri: CRI, tmp_path: Path) -> None:
    ref = "docker.io/pycri-test/remove:1"
    built = await build_small_image(tmp_path, ref=ref)
    async with containerd_of(daemon) as client:
        await import_tarball(client, built.path, extra_names=["pycri-test/remove:2"])
        assert (await _status(cri, ref)).image.id == built.image_id
        # Removing by one tag removes the image: every tag, digest and the ID record.
        await cri.image.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image="pycri-test/remove:2"))
        )
        for name in (
            ref,
            "docker.io/pycri-test/remove:2",
            f"docker.io/pycri-test/remove@{built.manifest_digest}",
            built.image_id,
        ):
            with pytest.raises(NotFoundError):
                await client.images.get(name)
        # The last delete was synchronous: GC has collected content and snapshot.
        with pytest.raises(NotFoundError):
            await client.content.info(built.layers[0].digest)
        with pytest.raises(NotFoundError):
            await client.snapshots.stat(SNAPSHOTTER, built.chain_id)
    assert not (await _status(cri, built.image_id)).HasField("image")
    listed = (await cri.image.ListImages(api_pb2.ListImagesRequest())).images
    assert built.image_id not in {i.id for i in listed}
    # Idempotent: removing again (by ID, by tag) succeeds.
    for again in (built.image_id, ref):
        await cri.image.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=again))
        )


async def _fs_usage(cri: CRI) -> api_pb2.FilesystemUsage:
    [usage] = (await cri.image.ImageFsInfo(api_pb2.ImageFsInfoRequest())).image_filesystems
    return usage


async def _fs_usage_reaching(cri: CRI, used_bytes: int) -> api_pb2.FilesystemUsage:
    """The figure once it counts ``used_bytes``: an image change pokes a refresh, seen well
    within the 10 s period (``image_fs_info_period``)."""
    deadline = time.monotonic() + 8
    while (usage := await _fs_usage(cri)).used_bytes.value < used_bytes:
        assert time.monotonic() < deadline, usage
        await asyncio.sleep(0.2)
    return usage


async def test_image_fs_info(daemon: Daemon, cri: CRI, images_loaded: None) -> None:
    usage = await _fs_usage_reaching(cri, 1_000_000)
    assert usage.fs_id.mountpoint.endswith("/io.containerd.snapshotter.v1.overlayfs")
    assert Path(usage.fs_id.mountpoint).is_dir()
    assert usage.inodes_used.value > 100
    assert usage.timestamp <= time.time_ns()


async def test_image_fs_info_is_cached_and_sees_an_import_soon(
    cri: CRI, ctd: ContainerdClient, tmp_path: Path
) -> None:
    # Served from the background figure: calls in a burst share one sample (its timestamp),
    # at most one refresh lands among them.
    stamps = {(await _fs_usage(cri)).timestamp for _ in range(50)}
    assert len(stamps) <= 2, stamps
    before = await _fs_usage(cri)
    payload = secrets.token_bytes(4 << 20)  # incompressible: the unpacked layer holds 4 MiB
    built = await build_small_image(tmp_path, ref="docker.io/pycri-test/fsinfo:1", extra=payload)
    await import_tarball(ctd, built.path)
    after = await _fs_usage_reaching(cri, before.used_bytes.value + len(payload))
    assert after.timestamp > before.timestamp
    await cri.image.RemoveImage(
        api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=built.image_id))
    )


async def test_daemon_loads_images_at_start(
    make_daemon: type[Daemon], test_images: BuiltTestImages
) -> None:
    d = make_daemon()
    d.start()
    await import_test_images(d.containerd_socket)
    d.stop()
    d.start()  # same dirs: the managed containerd comes back with the images
    cri = CRI(d.socket)
    try:
        # No lookup first: the list comes from the store rebuilt at start.
        listed = (await cri.image.ListImages(api_pb2.ListImagesRequest())).images
        assert {test_images.busybox.image_id, test_images.pause.image_id} <= {i.id for i in listed}
    finally:
        await cri.close()


async def test_multi_platform_index_and_compressed_tarball(
    containerd: ContainerdClient, tmp_path: Path
) -> None:
    """An index.json entry that is an image index: this platform's manifest is imported."""
    ref = "docker.io/pycri-test/multi:1"
    built = await build_small_image(tmp_path, ref=ref)
    with tarfile.open(built.path) as tar:
        members = {
            i.name: f.read() for i in tar.getmembers() if (f := tar.extractfile(i)) is not None
        }
    other_arch = "arm64" if spec.go_arch() != "arm64" else "amd64"
    nested = spec.canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": spec.OCI_INDEX,
            "manifests": [
                {  # another platform, whose blobs are not in the archive
                    "mediaType": spec.OCI_MANIFEST,
                    "digest": spec.sha256_digest(b"elsewhere"),
                    "size": 9,
                    "platform": {"os": "linux", "architecture": other_arch},
                },
                {
                    "mediaType": spec.OCI_MANIFEST,
                    "digest": built.manifest_digest,
                    "size": built.manifest_size,
                    "platform": {"os": "linux", "architecture": spec.go_arch()},
                },
            ],
        }
    )
    nested_digest = spec.sha256_digest(nested)
    members[f"blobs/sha256/{spec.digest_hex(nested_digest)}"] = nested
    members["index.json"] = spec.canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": spec.OCI_INDEX,
            "manifests": [
                {
                    **spec.descriptor(spec.OCI_INDEX, nested),
                    "annotations": {spec.ANNOTATION_REF_NAME: ref},
                }
            ],
        }
    )
    multi = tmp_path / "multi.tar.gz"
    with tarfile.open(multi, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    [imported] = await import_tarball(containerd, multi)
    assert imported.names == (ref,)
    assert imported.target_digest == nested_digest
    assert imported.manifest_digest == built.manifest_digest
    assert imported.image_id == built.image_id
    record = await containerd.images.get(ref)
    assert record.target.digest == nested_digest
    index_info = await containerd.content.info(nested_digest)
    assert index_info.labels["containerd.io/gc.ref.content.m.1"] == built.manifest_digest
    await containerd.snapshots.stat(SNAPSHOTTER, built.chain_id)

    # The store follows the index to this platform's manifest.
    store = ImageStore(containerd)
    image = await store.resolve(ref)
    assert image is not None
    assert image.id == built.image_id
    assert image.manifest_digest == built.manifest_digest
    assert image.chain_id == built.chain_id
    assert image.config.cmd == ("/bin/true",)
    assert image.repo_digests == (f"docker.io/pycri-test/multi@{nested_digest}",)


async def test_store_follows_containerd(containerd: ContainerdClient, tmp_path: Path) -> None:
    ref = "docker.io/pycri-test/store:1"
    built = await build_small_image(tmp_path, ref=ref, user="app:app")
    await import_tarball(containerd, built.path, extra_names=["pycri-test/store:2"])
    store = ImageStore(containerd, pinned_refs=["pycri-test/store:2"])
    await store.refresh_all()
    image = store.find("pycri-test/store:1")
    assert image is not None and image.id == built.image_id
    assert image.repo_tags == (ref, "docker.io/pycri-test/store:2")
    assert image.pinned  # one of its tags is pinned
    assert image.config.user == "app:app"
    assert image.config.cmd == ("/bin/true",)
    assert image.config.env and image.config.env[0].startswith("PATH=")
    assert image.config.working_dir == "/"
    assert image.config.labels["token"]
    assert store.find(built.image_id) is image
    assert set(store.names_of(built.image_id)) == {
        ref,
        "docker.io/pycri-test/store:2",
        f"docker.io/pycri-test/store@{built.manifest_digest}",
        built.image_id,
    }
    # A record deleted behind the store's back: gone after a refresh of that name (an event).
    await containerd.images.delete("docker.io/pycri-test/store:2")
    assert store.find("pycri-test/store:2") is not None  # memory only until refreshed
    await store.refresh("docker.io/pycri-test/store:2")
    assert store.find("pycri-test/store:2") is None
    image = store.find(ref)
    assert image is not None and image.repo_tags == (ref,) and not image.pinned
    # All records gone: the image leaves the store.
    for name in store.names_of(built.image_id):
        await containerd.images.delete(name)
        await store.refresh(name)
    assert store.find(built.image_id) is None
    assert built.image_id not in {i.id for i in store.list()}
