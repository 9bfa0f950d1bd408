"""PullImage over the OCI distribution API, against real registries the tests start.

Two docker-registry processes on 127.0.0.1 serve the tests: a plain-HTTP one (spoken to
over HTTP after HTTPS fails, as any loopback registry, and the mirror of docker.io and
registry.k8s.io in the daemon's config) and one with TLS (a CA made here, given in
``registry.ca_files``) and htpasswd basic auth. Images are built here and pushed with
pycri's own push code; the daemon pulls them through CRI, and the registries' access logs
tell how often each blob was fetched.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from pycri.config import RegistryConfig
from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import NotFoundError
from pycri.errors import Unauthenticated
from pycri.images import ingest, reference, spec
from pycri.images.auth import Credentials
from pycri.images.document import DigestMismatchError
from pycri.images.pull import ImagePuller
from pycri.images.registry import Registry
from pycri.testing.images import BuiltImage, LayerEntry, build_image, build_index
from pycri.testing.push import push_layout
from pycri.testing.registry import (
    CuttingProxy,
    LocalRegistry,
    TokenServer,
    free_port,
    make_ca,
)
from tests.integration.helpers import (
    CRI,
    BuiltTestImages,
    Daemon,
    build_small_image,
    containerd_of,
    eventually,
    short_tmp,
)
from tests.integration.pods import container_config, pod_config

USER, PASSWORD = "pycri", "s3cret-Passw0rd"
WRONG_PASSWORD = "not-the-Passw0rd"
SNAPSHOTTER = "overlayfs"


@pytest.fixture(scope="module")
def registry_dir() -> Iterator[Path]:
    base = short_tmp("pycri-reg-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def plain(registry_dir: Path) -> Iterator[LocalRegistry]:
    registry = LocalRegistry(registry_dir / "plain")
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def secure(registry_dir: Path) -> Iterator[LocalRegistry]:
    registry = LocalRegistry(
        registry_dir / "secure", tls=make_ca(registry_dir / "ca"), users={USER: PASSWORD}
    )
    registry.start()
    yield registry
    registry.stop()


def _ca_file(registry: LocalRegistry) -> str:
    assert registry.tls is not None
    return str(registry.tls.ca_file)


@pytest.fixture(scope="module")
def pull_daemon(plain: LocalRegistry, secure: LocalRegistry) -> Iterator[Daemon]:
    base = short_tmp("pycri-p-")
    config = base / "pycri.toml"
    config.write_text(
        "[registry.mirrors]\n"
        f'"docker.io" = ["http://{plain.host}"]\n'
        # a bare host: HTTPS first, then plain HTTP (it is on a loopback address)
        f'"registry.k8s.io" = ["{plain.host}"]\n'
        "[registry.ca_files]\n"
        f'"{secure.host}" = "{_ca_file(secure)}"\n'
    )
    daemon = Daemon(base=base, extra_args=["--config", str(config)])
    daemon.start()
    yield daemon
    daemon.cleanup()


@pytest.fixture(scope="module")
async def pcri(pull_daemon: Daemon) -> AsyncIterator[CRI]:
    client = CRI(pull_daemon.socket)
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def ctd(pull_daemon: Daemon) -> AsyncIterator[ContainerdClient]:
    async with containerd_of(pull_daemon) as client:
        yield client


@pytest.fixture(scope="module")
async def pusher(secure: LocalRegistry) -> AsyncIterator[Registry]:
    registry = Registry(RegistryConfig(ca_files={secure.host: _ca_file(secure)}))
    yield registry
    await registry.close()


async def _pull(
    cri: CRI, ref: str, auth: api_pb2.AuthConfig | None = None
) -> api_pb2.PullImageResponse:
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref), auth=auth)
    response: api_pb2.PullImageResponse = await cri.image.PullImage(request)
    return response


async def _pull_error(
    cri: CRI, ref: str, auth: api_pb2.AuthConfig | None = None
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _pull(cri, ref, auth)
    return err.value


async def _status(cri: CRI, ref: str) -> api_pb2.ImageStatusResponse:
    response: api_pb2.ImageStatusResponse = await cri.image.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
    )
    return response


async def _no_pull_leftovers(client: ContainerdClient) -> None:
    leases = [lease.id for lease in await client.leases.list()]
    assert not [lease for lease in leases if lease.startswith("pycri-pull-")], leases
    assert not await client.content.list_statuses()
    snapshots = await client.snapshots.list(SNAPSHOTTER)
    assert not [s.name for s in snapshots if s.name.startswith("pycri-unpack-")]


def _blob_path(registry: LocalRegistry, repository: str, digest: str) -> str:
    return f"/v2/{repository}/blobs/{digest}"


def _blob_digests(built: BuiltImage) -> list[str]:
    return [built.config_digest, *(layer.digest for layer in built.layers)]


# --- pulling by tag, by digest, via a mirror -------------------------------------------


async def test_pull_by_tag_and_by_digest(
    pcri: CRI,
    ctd: ContainerdClient,
    plain: LocalRegistry,
    pusher: Registry,
    test_images: BuiltTestImages,
) -> None:
    built = test_images.busybox
    ref = f"{plain.host}/pycri/busybox:1.36"
    pushed = await push_layout(pusher, built.path, ref)
    assert pushed.digest == built.manifest_digest and pushed.media_type == spec.OCI_MANIFEST

    response = await _pull(pcri, ref)
    assert response.image_ref == built.image_id
    repo_digest = f"{plain.host}/pycri/busybox@{built.manifest_digest}"
    image = (await _status(pcri, ref)).image
    assert image.id == built.image_id
    assert list(image.repo_tags) == [ref]
    assert list(image.repo_digests) == [repo_digest]
    listed = (await pcri.image.ListImages(api_pb2.ListImagesRequest())).images
    assert built.image_id in {i.id for i in listed}
    # What containerd holds: managed records, GC labels, the unpacked snapshot.
    for name in (ref, repo_digest, built.image_id):
        record = await ctd.images.get(name)
        assert record.target.digest == built.manifest_digest
        assert record.labels[ingest.LABEL_CRI_IMAGE] == "managed"
    config = await ctd.content.info(built.config_digest)
    assert config.labels[f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"] == built.chain_id
    await ctd.snapshots.stat(SNAPSHOTTER, built.chain_id)
    await _no_pull_leftovers(ctd)

    # By digest, and with tag and digest (the digest decides): the same image, no new tag.
    for by_digest in (repo_digest, f"{ref}@{built.manifest_digest}"):
        assert (await _pull(pcri, by_digest)).image_ref == built.image_id
    assert list((await _status(pcri, built.image_id)).image.repo_tags) == [ref]
    # Pulling what is present asks the registry for the manifest only.
    layer_path = _blob_path(plain, "pycri/busybox", built.layers[0].digest)
    assert plain.count("GET", layer_path) == 1


async def test_pull_via_mirror(
    pcri: CRI, plain: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    built = await build_small_image(tmp_path, ref="docker.io/pycri-test/mirrored:1")
    await push_layout(pusher, built.path, f"{plain.host}/pycri-test/mirrored:1")
    # docker.io is mirrored to the plain registry; docker.io itself is never asked.
    assert (await _pull(pcri, "pycri-test/mirrored:1")).image_ref == built.image_id
    image = (await _status(pcri, "docker.io/pycri-test/mirrored:1")).image
    assert list(image.repo_tags) == ["docker.io/pycri-test/mirrored:1"]
    assert list(image.repo_digests) == [f"docker.io/pycri-test/mirrored@{built.manifest_digest}"]
    assert plain.count("GET", "/v2/pycri-test/mirrored/manifests/1", status=200) == 1


async def test_pulled_image_runs_as_a_container(
    pcri: CRI, plain: LocalRegistry, pusher: Registry, test_images: BuiltTestImages, tmp_path: Path
) -> None:
    # The sandbox image comes through the registry.k8s.io mirror, busybox from the registry.
    await push_layout(pusher, test_images.pause.path, f"{plain.host}/pause:3.9")
    await _pull(pcri, "registry.k8s.io/pause:3.9")
    busybox = f"{plain.host}/pycri/run:1"
    await push_layout(pusher, test_images.busybox.path, busybox)
    image_ref = (await _pull(pcri, busybox)).image_ref

    config = pod_config("pulled-pod", log_dir=tmp_path / "logs", host_network=True)
    pod_id = (
        await pcri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    ).pod_sandbox_id
    try:
        container = container_config("pulled", "echo pulled-and-running", image=image_ref)
        created = await pcri.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=container, sandbox_config=config
            )
        )
        cid = created.container_id
        await pcri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))

        async def exited() -> api_pb2.ContainerStatus | None:
            status = (
                await pcri.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid))
            ).status
            return status if status.state == api_pb2.CONTAINER_EXITED else None

        status = await eventually(exited, timeout=15)
        assert status.exit_code == 0
        assert status.image_ref.endswith(f"@{test_images.busybox.manifest_digest}")  # a repo digest
        assert "pulled-and-running" in Path(status.log_path).read_text()
    finally:
        await pcri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        await pcri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


async def test_multi_platform_index(
    pcri: CRI, ctd: ContainerdClient, plain: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    other_arch = "arm64" if spec.go_arch() != "arm64" else "amd64"
    ref = f"{plain.host}/pycri/multi:1"
    other = await build_small_image(tmp_path, ref=ref, arch=other_arch)
    mine = await build_small_image(tmp_path, ref=ref)
    index = await asyncio.to_thread(
        build_index, tmp_path / "multi.tar", ref=ref, images=[other, mine]
    )
    pushed = await push_layout(pusher, index.path, ref)
    assert pushed.digest == index.index_digest and pushed.media_type == spec.OCI_INDEX

    assert (await _pull(pcri, ref)).image_ref == mine.image_id
    record = await ctd.images.get(ref)
    assert record.target.digest == index.index_digest
    index_info = await ctd.content.info(index.index_digest)
    assert index_info.labels["containerd.io/gc.ref.content.m.1"] == mine.manifest_digest
    image = (await _status(pcri, ref)).image
    assert list(image.repo_digests) == [f"{plain.host}/pycri/multi@{index.index_digest}"]
    await ctd.snapshots.stat(SNAPSHOTTER, mine.chain_id)
    # The other platform's blobs are never fetched.
    for digest in _blob_digests(other):
        assert plain.count("GET", _blob_path(plain, "pycri/multi", digest)) == 0
    assert plain.count("GET", f"/v2/pycri/multi/manifests/{other.manifest_digest}") == 0


async def test_docker_schema2_with_uncompressed_layer(
    pcri: CRI, ctd: ContainerdClient, plain: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    ref = f"{plain.host}/pycri/docker-v2:1"
    built = await build_small_image(tmp_path, ref=ref, media_types="docker", compress=False)
    assert built.layers[0].media_type == spec.DOCKER_LAYER
    pushed = await push_layout(pusher, built.path, ref)
    assert pushed.media_type == spec.DOCKER_MANIFEST
    assert (await _pull(pcri, ref)).image_ref == built.image_id
    record = await ctd.images.get(ref)
    assert record.target.media_type == spec.DOCKER_MANIFEST
    await ctd.snapshots.stat(SNAPSHOTTER, built.chain_id)


# --- authentication and TLS --------------------------------------------------------------


async def test_pull_with_basic_auth_over_tls(
    pcri: CRI, pull_daemon: Daemon, secure: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    ref = f"{secure.host}/private/app:1"
    built = await build_small_image(tmp_path, ref=ref)
    with pytest.raises(Unauthenticated, match="requires authentication"):
        await push_layout(pusher, built.path, ref)
    await push_layout(
        pusher, built.path, ref, credentials=Credentials(username=USER, password=PASSWORD)
    )

    anonymous = await _pull_error(pcri, ref)
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "requires authentication" in (anonymous.details() or "")
    wrong = await _pull_error(pcri, ref, api_pb2.AuthConfig(username=USER, password=WRONG_PASSWORD))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "rejected" in (wrong.details() or "")
    # Credentials for another registry are not sent.
    elsewhere = api_pb2.AuthConfig(username=USER, password=PASSWORD, server_address="other.test")
    assert (await _pull_error(pcri, ref, elsewhere)).code() == grpc.StatusCode.UNAUTHENTICATED
    bad = await _pull_error(pcri, ref, api_pb2.AuthConfig(auth="%%% not base64"))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await _status(pcri, ref)).HasField("image")

    good = api_pb2.AuthConfig(username=USER, password=PASSWORD)
    assert (await _pull(pcri, ref, good)).image_ref == built.image_id
    # docker's config.json form, for this registry (https://host as kubelet passes it).
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    as_auth = api_pb2.AuthConfig(auth=encoded, server_address=f"https://{secure.host}")
    assert (
        await _pull(pcri, f"{secure.host}/private/app@{built.manifest_digest}", as_auth)
    ).image_ref == built.image_id
    log = pull_daemon.log_path.read_text(errors="replace")
    assert PASSWORD not in log and WRONG_PASSWORD not in log and encoded not in log


@pytest.fixture(scope="module")
async def token_registry(registry_dir: Path) -> AsyncIterator[LocalRegistry]:
    server = TokenServer(registry_dir / "token", users={USER: PASSWORD}, refresh_tokens={"RF-1"})
    await server.start()
    registry = LocalRegistry(registry_dir / "bearer", token=server)
    registry.start()
    yield registry
    registry.stop()
    await server.stop()


async def test_pull_with_the_bearer_token_flow(
    pcri: CRI, pull_daemon: Daemon, token_registry: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    server = token_registry.token
    assert server is not None
    ref = f"{token_registry.host}/private/tokened:1"
    built = await build_small_image(tmp_path, ref=ref)
    await push_layout(
        pusher, built.path, ref, credentials=Credentials(username=USER, password=PASSWORD)
    )
    anonymous = await _pull_error(pcri, ref)
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "rejected anonymous access" in (anonymous.details() or "")
    wrong = await _pull_error(pcri, ref, api_pb2.AuthConfig(username=USER, password=WRONG_PASSWORD))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "refused the credentials" in (wrong.details() or "")

    remove = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref))
    server.requests.clear()
    assert (
        await _pull(pcri, ref, api_pb2.AuthConfig(username=USER, password=PASSWORD))
    ).image_ref == built.image_id
    assert server.requests == [("GET", USER)]  # one token serves every request of the pull
    await pcri.image.RemoveImage(remove)
    # An identity token (docker login's refresh token): an OAuth2 POST.
    server.requests.clear()
    assert (
        await _pull(pcri, ref, api_pb2.AuthConfig(identity_token="RF-1"))
    ).image_ref == built.image_id
    assert server.requests == [("POST", "refresh_token")]
    await pcri.image.RemoveImage(remove)
    # A registry token is sent as it is: the token server is not asked.
    server.requests.clear()
    token = server.token(USER, ["repository:private/tokened:pull"])
    assert (
        await _pull(pcri, ref, api_pb2.AuthConfig(registry_token=token))
    ).image_ref == built.image_id
    assert server.requests == []
    log = pull_daemon.log_path.read_text(errors="replace")
    assert PASSWORD not in log and "RF-1" not in log and token not in log


# --- bad input and broken registries -----------------------------------------------------


async def test_invalid_and_unknown_references(
    pcri: CRI, plain: LocalRegistry, pusher: Registry, test_images: BuiltTestImages
) -> None:
    for invalid in ("", "Not//Valid", "busybox:bad tag", "library/Upper", "a" * 64):
        err = await _pull_error(pcri, invalid)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, invalid
    await push_layout(pusher, test_images.busybox.path, f"{plain.host}/pycri/known:1")
    unknown_tag = await _pull_error(pcri, f"{plain.host}/pycri/known:nope")
    assert unknown_tag.code() == grpc.StatusCode.NOT_FOUND
    assert "MANIFEST_UNKNOWN" in (unknown_tag.details() or "")
    unknown_repo = await _pull_error(pcri, f"{plain.host}/pycri/never-pushed:1")
    assert unknown_repo.code() == grpc.StatusCode.NOT_FOUND
    unknown_digest = await _pull_error(pcri, f"{plain.host}/pycri/known@sha256:{'0' * 64}")
    assert unknown_digest.code() == grpc.StatusCode.NOT_FOUND
    unreachable = await _pull_error(pcri, f"127.0.0.1:{free_port()}/pycri/known:1")
    assert unreachable.code() == grpc.StatusCode.UNAVAILABLE
    assert "unreachable" in (unreachable.details() or "")


async def test_corrupted_blob_fails_cleanly(
    pcri: CRI, ctd: ContainerdClient, plain: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    ref = f"{plain.host}/pycri/corrupt:1"
    built = await build_small_image(tmp_path, ref=ref, extra=os.urandom(200_000))
    await push_layout(pusher, built.path, ref)
    layer = built.layers[0]
    stored = plain.blob_path(layer.digest)
    original = stored.read_bytes()
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2] ^= 0xFF  # same size, another digest
    stored.write_bytes(bytes(corrupted))

    err = await _pull_error(pcri, ref)
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert layer.digest in (err.details() or "")
    for name in (ref, built.image_id, f"{plain.host}/pycri/corrupt@{built.manifest_digest}"):
        with pytest.raises(NotFoundError):
            await ctd.images.get(name)
    # The lease went synchronously: GC has taken what the pull had written.
    for digest in (layer.digest, built.config_digest, built.manifest_digest):
        with pytest.raises(NotFoundError):
            await ctd.content.info(digest)
    with pytest.raises(NotFoundError):
        await ctd.snapshots.stat(SNAPSHOTTER, built.chain_id)
    await _no_pull_leftovers(ctd)
    assert not (await _status(pcri, ref)).HasField("image")

    stored.write_bytes(original)
    assert (await _pull(pcri, ref)).image_ref == built.image_id


async def test_broken_download_resumes(
    pcri: CRI, plain: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    ref = f"{plain.host}/pycri/flaky:1"
    built = await build_small_image(tmp_path, ref=ref, extra=os.urandom(2 << 20))
    await push_layout(pusher, built.path, ref)
    layer = _blob_path(plain, "pycri/flaky", built.layers[0].digest)
    proxy = CuttingProxy(plain.port, cut_path=layer, cut_after=600_000)
    await proxy.start()
    try:
        pulled = await _pull(pcri, f"{proxy.host}/pycri/flaky:1")
    finally:
        await proxy.stop()
    assert pulled.image_ref == built.image_id
    assert proxy.cuts == 1
    # The retry asked only for the rest: a partial answer (206) after the broken one.
    statuses = [s for method, path, s in plain.requests() if method == "GET" and path == layer]
    assert statuses == [200, 206]


# --- many layers: downloaded in parallel, unpacked as they arrive -----------------------


async def _layered_image(directory: Path, *, ref: str, big: int, small: int) -> BuiltImage:
    """A big random bottom layer and ``small`` one-file layers on top (unique content)."""
    etc = LayerEntry(path="etc", kind="dir", mode=0o755)
    return await asyncio.to_thread(
        build_image,
        directory / "layered.tar",
        ref=ref,
        entries=[etc, LayerEntry(path="etc/big", kind="file", data=os.urandom(big))],
        more_layers=[
            [etc, LayerEntry(path=f"etc/small-{i}", kind="file", data=os.urandom(3000))]
            for i in range(small)
        ],
        config_fields={"cmd": ["/bin/true"]},
    )


async def _nothing_of(ctd: ContainerdClient, built: BuiltImage, ref: str) -> None:
    """No record, blob or snapshot of ``built`` is left, and no pull lease or ingest."""
    repository = ref.rsplit(":", 1)[0]
    for name in (ref, built.image_id, f"{repository}@{built.manifest_digest}"):
        with pytest.raises(NotFoundError):
            await ctd.images.get(name)
    for digest in [built.manifest_digest, *_blob_digests(built)]:
        with pytest.raises(NotFoundError):
            await ctd.content.info(digest)
    for chain_id in spec.chain_ids([layer.diff_id for layer in built.layers]):
        with pytest.raises(NotFoundError):
            await ctd.snapshots.stat(SNAPSHOTTER, chain_id)
    await _no_pull_leftovers(ctd)


async def test_many_layers_pull_to_the_built_image(
    pcri: CRI, ctd: ContainerdClient, plain: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    ref = f"{plain.host}/pycri/layered:1"
    built = await _layered_image(tmp_path, ref=ref, big=6 << 20, small=3)
    await push_layout(pusher, built.path, ref)
    assert len(built.layers) == 4
    assert (await _pull(pcri, ref)).image_ref == built.image_id
    assert (await _status(pcri, ref)).image.id == built.image_id
    # Every layer unpacked on its parent: the chain ID of each prefix is a snapshot.
    chain_ids = spec.chain_ids([layer.diff_id for layer in built.layers])
    assert chain_ids[-1] == built.chain_id
    for chain_id in chain_ids:
        await ctd.snapshots.stat(SNAPSHOTTER, chain_id)
    config = await ctd.content.info(built.config_digest)
    assert config.labels[f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"] == built.chain_id
    for digest in _blob_digests(built):
        assert plain.count("GET", _blob_path(plain, "pycri/layered", digest)) == 1, digest
    await _no_pull_leftovers(ctd)


@pytest.mark.parametrize("damage", ["corrupt-top", "short-bottom"])
async def test_a_bad_layer_of_many_fails_cleanly(
    pcri: CRI,
    ctd: ContainerdClient,
    plain: LocalRegistry,
    pusher: Registry,
    tmp_path: Path,
    damage: str,
) -> None:
    """The layers below a bad one may be unpacked already; the lease takes them all back."""
    ref = f"{plain.host}/pycri/bad-layer-{damage}:1"
    built = await _layered_image(tmp_path, ref=ref, big=3 << 20, small=3)
    await push_layout(pusher, built.path, ref)
    layer = built.layers[-1] if damage == "corrupt-top" else built.layers[0]
    stored = plain.blob_path(layer.digest)
    original = stored.read_bytes()
    if damage == "corrupt-top":
        broken = bytearray(original)
        broken[len(broken) // 2] ^= 0xFF  # same size, another digest
        stored.write_bytes(bytes(broken))
    else:
        stored.write_bytes(original[: len(original) // 2])  # the registry sends half

    err = await _pull_error(pcri, ref)
    if damage == "corrupt-top":
        assert err.code() == grpc.StatusCode.DATA_LOSS
    else:  # the body ends early; the resumed download asks past the blob's end: 416
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert layer.digest in (err.details() or "")
    await _nothing_of(ctd, built, ref)
    assert not (await _status(pcri, ref)).HasField("image")

    stored.write_bytes(original)
    assert (await _pull(pcri, ref)).image_ref == built.image_id


# --- sharing and re-pulling --------------------------------------------------------------


async def test_concurrent_pulls_fetch_each_blob_once(
    pcri: CRI, plain: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    ref = f"{plain.host}/pycri/shared:1"
    built = await build_small_image(tmp_path, ref=ref, extra=os.urandom(2 << 20))
    await push_layout(pusher, built.path, ref)
    responses = await asyncio.gather(*(_pull(pcri, ref) for _ in range(4)))
    assert {r.image_ref for r in responses} == {built.image_id}
    assert plain.count("GET", "/v2/pycri/shared/manifests/1") == 1
    for digest in _blob_digests(built):
        assert plain.count("GET", _blob_path(plain, "pycri/shared", digest)) == 1, digest


async def test_remove_then_pull_again(
    pcri: CRI, ctd: ContainerdClient, plain: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    ref = f"{plain.host}/pycri/again:1"
    built = await build_small_image(tmp_path, ref=ref)
    await push_layout(pusher, built.path, ref)
    assert (await _pull(pcri, ref)).image_ref == built.image_id
    await pcri.image.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)))
    assert not (await _status(pcri, ref)).HasField("image")
    with pytest.raises(NotFoundError):
        await ctd.content.info(built.layers[0].digest)
    assert (await _pull(pcri, ref)).image_ref == built.image_id
    assert (await _status(pcri, built.image_id)).image.repo_tags == [ref]
    assert plain.count("GET", _blob_path(plain, "pycri/again", built.layers[0].digest)) == 2
    await ctd.snapshots.stat(SNAPSHOTTER, built.chain_id)


# --- the content store side: resumable, verified writes ----------------------------------


async def test_blob_writes_resume_and_verify(containerd: ContainerdClient) -> None:
    data = os.urandom(3 << 20)
    digest = spec.sha256_digest(data)
    ref = f"pycri-test-resume-{digest[7:19]}"
    offsets: list[int] = []

    async def breaks_after_one_mib(offset: int) -> AsyncIterator[bytes]:
        offsets.append(offset)
        yield data[offset : offset + (1 << 20)]
        raise ConnectionResetError("the download broke")

    async def the_rest(offset: int) -> AsyncIterator[bytes]:
        offsets.append(offset)
        yield data[offset:]

    async with ingest.lease(containerd, prefix="pycri-test") as lease:
        writer = ingest.ImageWriter(containerd, lease=lease, snapshotter=SNAPSHOTTER)
        with pytest.raises(ConnectionResetError):
            await writer.write_blob(
                digest=digest,
                size=len(data),
                media_type=spec.OCI_LAYER,
                source=breaks_after_one_mib,  # type: ignore[arg-type]
                ref=ref,
                abort_on_error=False,
            )
        [status] = [s for s in await containerd.content.list_statuses() if s.ref == ref]
        assert status.offset == 1 << 20
        written = await writer.write_blob(
            digest=digest,
            size=len(data),
            media_type=spec.OCI_LAYER,
            source=the_rest,  # type: ignore[arg-type]
            ref=ref,
        )
        assert written and offsets == [0, 1 << 20]
        assert (await containerd.content.info(digest)).size == len(data)

        # Bytes that are not what the digest says are refused, and the ingest dropped.
        wrong = spec.sha256_digest(b"something else" + data[:10])
        with pytest.raises(DigestMismatchError, match=wrong):
            await writer.write_blob(
                digest=wrong,
                size=len(data),
                media_type=spec.OCI_LAYER,
                source=ingest.memory_source(data),
                ref="pycri-test-wrong",
            )
        assert not [
            s for s in await containerd.content.list_statuses() if s.ref == "pycri-test-wrong"
        ]


async def test_a_pull_cancelled_midway_leaves_nothing(
    containerd: ContainerdClient, plain: LocalRegistry, pusher: Registry, tmp_path: Path
) -> None:
    """Shutdown (``close``) while layers download and the lower ones unpack: all undone."""
    ref = f"{plain.host}/pycri/cancelled:1"
    built = await _layered_image(tmp_path, ref=ref, big=48 << 20, small=3)
    await push_layout(pusher, built.path, ref)
    puller = ImagePuller(client=containerd, config=RegistryConfig())
    pull = asyncio.create_task(puller.pull(reference.parse_normalized(ref)))
    big_ref = f"pycri-pull-{built.layers[0].digest.replace(':', '-')}"

    async def big_layer_ingest() -> bool:
        return any(s.ref == big_ref and s.offset for s in await containerd.content.list_statuses())

    await eventually(big_layer_ingest, timeout=30, interval=0.01)
    await puller.close()
    with pytest.raises(asyncio.CancelledError):
        await pull
    await _nothing_of(containerd, built, ref)
