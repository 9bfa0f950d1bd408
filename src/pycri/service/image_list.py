"""ListImages: every image in the store, or the one a filter names. From memory only.

kubelet lists images periodically (image GC, node status); the answer never waits on
containerd. The store is kept fresh by image events and by lookups that miss.
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.service.context import RuntimeContext
from pycri.service.image_common import cri_image


async def list_images(
    rt: RuntimeContext, request: api_pb2.ListImagesRequest
) -> api_pb2.ListImagesResponse:
    wanted = request.filter.image.image if request.HasField("filter") else ""
    if wanted:
        found = rt.images.find(wanted)
        images = [found] if found is not None else []
    else:
        images = rt.images.list()
    return api_pb2.ListImagesResponse(images=[cri_image(image) for image in images])
