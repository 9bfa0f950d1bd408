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


async def ensure_sandbox_image(rt: RuntimeContext) -> Image:
    """The pause image, pulled when missing (kubelet never pulls it; the runtime must)."""
    ref_text = rt.config.sandbox_image
    image = await rt.images.resolve(ref_text)
    if image is not None:
        return image
    from pycri.images import reference

    try:
        pulled = await rt.pulls.pull(reference.parse_normalized(ref_text))
    except Exception as err:
        raise NotFound(
            f"sandbox image {ref_text!r} is not present and pulling it failed: {err}"
        ) from None
    image = await rt.images.refresh(pulled.record_names[0])
    if image is None:
        raise NotFound(f"sandbox image {ref_text!r} was pulled but is gone again")
    return image
