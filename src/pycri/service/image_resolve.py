"""Looking up a local image for a create: by ID, tag or digest; never pulls implicitly."""

from __future__ import annotations

from pycri.errors import NotFound
from pycri.images.model import Image
from pycri.service.context import RuntimeContext


async def resolve_image(rt: RuntimeContext, ref: str, *, what: str = "image") -> Image:
    image = await rt.images.resolve(ref)
    if image is None:
        raise NotFound(
            f"{what} {ref!r} is not present on this node "
            "(pull it, or load it with `pycri images import`)"
        )
    return image
