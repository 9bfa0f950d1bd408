"""What the image RPCs share: an ``Image`` as the CRI's ``Image`` message."""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.images.model import Image


def image_user(user: str) -> tuple[int | None, str]:
    """(uid, username) from an image config's ``User`` (``uid``, ``name``, ``x:group``).

    Only the user part counts; a numeric one is a uid, anything else a name kubelet checks
    against runAsNonRoot. An empty user gives (None, "").
    """
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name


def cri_image(image: Image) -> api_pb2.Image:
    uid, username = image_user(image.config.user)
    message = api_pb2.Image(
        id=image.id,
        repo_tags=list(image.repo_tags),
        repo_digests=list(image.repo_digests),
        size=image.size,
        username=username,
        spec=api_pb2.ImageSpec(image=image.id),
        pinned=image.pinned,
    )
    if uid is not None:
        message.uid.value = uid
    return message
