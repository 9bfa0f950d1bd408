"""ImageStatus: one image by ID, tag or digest; an unknown image is a success with no image.

kubelet calls it before every pull decision, so "not present" must be an empty answer, not an
error. A miss in memory re-reads that one name from containerd (``ImageStore.resolve``), so an
image imported behind pycri's back is found even before its event is handled.

Verbose info (``info["info"]``, JSON) carries the chain ID, the manifest digest and the full
image config document as containerd stores it (``imageSpec``), read from the content store on
demand: it is for humans (``crictl inspecti``), not for kubelet's hot path.
"""

from __future__ import annotations

import json
from typing import Any

from cri_api.v1 import api_pb2

from pycri.containerd.errors import NotFoundError
from pycri.errors import InvalidArgument
from pycri.images.model import Image
from pycri.service.context import RuntimeContext
from pycri.service.image_common import cri_image


async def image_status(
    rt: RuntimeContext, request: api_pb2.ImageStatusRequest
) -> api_pb2.ImageStatusResponse:
    ref = request.image.image
    if not ref:
        raise InvalidArgument("ImageStatus: image reference is empty")
    image = await rt.images.resolve(ref)
    if image is None:
        return api_pb2.ImageStatusResponse()
    response = api_pb2.ImageStatusResponse(image=cri_image(image))
    if request.verbose:
        response.info["info"] = json.dumps(await _verbose_info(rt, image))
    return response


async def _verbose_info(rt: RuntimeContext, image: Image) -> dict[str, Any]:
    info: dict[str, Any] = {
        "chainID": image.chain_id,
        "manifestDigest": image.manifest_digest,
        "snapshotter": rt.images.snapshotter,
    }
    try:
        info["imageSpec"] = json.loads(await rt.containerd.content.read(image.id))
    except NotFoundError:
        info["imageSpec"] = None  # removed behind our back; the event will drop the image
    return info
