"""PullImage: fetch an image from its registry into containerd; answer with its image ID.

Steps:
1. Parse and normalise the reference as kubelet and docker do (``busybox`` →
   ``docker.io/library/busybox:latest``); with both a tag and a digest the digest decides and
   the tag is dropped (containerd's CRI plugin does the same). Invalid → INVALID_ARGUMENT.
2. Credentials from ``AuthConfig`` (``auth.parse_credentials``); a malformed ``auth`` field
   is INVALID_ARGUMENT. They are never logged.
3. Pull (``images.pull``): concurrent pulls of one reference with the same credentials are
   one pull; the errors it raises are already the gRPC statuses kubelet gets (NOT_FOUND with
   the registry's answer, UNAUTHENTICATED, UNAVAILABLE, DATA_LOSS, ...).
4. Refresh the image store from the records the pull made, so ImageStatus and ListImages
   show the image as soon as PullImage returns (the containerd image event comes later and
   finds it current). The answer is the image ID (config digest), which kubelet puts in
   ContainerConfig.image.

Races: a RemoveImage between the pull's records and the refresh leaves the store without
the image; the answer still names it (as containerd's plugin would) and kubelet's
CreateContainer then gets NOT_FOUND and pulls again.
"""

from __future__ import annotations

import logging

from cri_api.v1 import api_pb2

from pycri.errors import InvalidArgument
from pycri.images import reference
from pycri.images.auth import Credentials, parse_credentials
from pycri.service.context import RuntimeContext

log = logging.getLogger(__name__)


def _credentials(request: api_pb2.PullImageRequest) -> Credentials | None:
    if not request.HasField("auth"):
        return None
    auth = request.auth
    try:
        return parse_credentials(
            username=auth.username,
            password=auth.password,
            auth=auth.auth,
            server_address=auth.server_address,
            identity_token=auth.identity_token,
            registry_token=auth.registry_token,
        )
    except ValueError as err:
        raise InvalidArgument(f"PullImage: {err}") from None


async def pull_image(
    rt: RuntimeContext, request: api_pb2.PullImageRequest
) -> api_pb2.PullImageResponse:
    text = request.image.image
    if not text:
        raise InvalidArgument("PullImage: image reference is empty")
    try:
        ref = reference.parse_normalized(text)
    except ValueError as err:
        raise InvalidArgument(f"PullImage: {err}") from None
    if ref.digest:
        ref = ref.with_digest(ref.digest)
    pulled = await rt.pulls.pull(ref, credentials=_credentials(request))
    image = await rt.images.refresh(pulled.record_names[0])
    if image is None:
        log.warning("pulled image is gone already", extra={"image": pulled.ref})
    return api_pb2.PullImageResponse(image_ref=pulled.image_id)
