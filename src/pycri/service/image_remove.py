"""RemoveImage: delete every containerd record of an image, named by ID, tag or digest.

CRI semantics, not docker's: removing by one tag removes the whole image (all its tags, repo
digests and its ID record), and an unknown image is a success (kubelet retries removals).

Steps and races:
1. Resolve the image (a miss re-reads that name from containerd once).
2. Re-read all records (``refresh_all``) to learn every name of that image, including ones
   made behind pycri's back whose events are still in flight.
3. Delete tags and repo digests first and the ID record last, synchronously, so containerd's
   GC has collected content and snapshots by the time we answer. If a delete fails midway,
   the ID record still names the image, and kubelet's retry (by ID) finishes the job.
4. Re-read each deleted name so memory agrees with containerd. A name re-created meanwhile
   (a concurrent import or pull) survives, and with it the image: that is the newer intent.
"""

from __future__ import annotations

import contextlib
import logging

from cri_api.v1 import api_pb2

from pycri.containerd.errors import NotFoundError
from pycri.errors import InvalidArgument
from pycri.service.context import RuntimeContext

log = logging.getLogger(__name__)


async def remove_image(
    rt: RuntimeContext, request: api_pb2.RemoveImageRequest
) -> api_pb2.RemoveImageResponse:
    ref = request.image.image
    if not ref:
        raise InvalidArgument("RemoveImage: image reference is empty")
    image = await rt.images.resolve(ref)
    if image is None:
        return api_pb2.RemoveImageResponse()
    await rt.images.refresh_all()
    names = [n for n in rt.images.names_of(image.id) if n != image.id]
    names.append(image.id)  # last, and synchronous: see the module doc
    for name in names:
        with contextlib.suppress(NotFoundError):
            await rt.containerd.images.delete(name, sync=name == image.id)
    for name in names:
        await rt.images.refresh(name)
    log.info("removed image", extra={"image_id": image.id, "records": names})
    return api_pb2.RemoveImageResponse()
