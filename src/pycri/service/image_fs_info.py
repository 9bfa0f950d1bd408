"""ImageFsInfo: usage of the snapshotter's directory (where image layers and container
writable layers live), sampled off the event loop and cached briefly (``images.fs_usage``).
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.service.context import RuntimeContext


async def image_fs_info(
    rt: RuntimeContext, request: api_pb2.ImageFsInfoRequest
) -> api_pb2.ImageFsInfoResponse:
    usage = await rt.images.snapshotter_usage()
    filesystem = api_pb2.FilesystemUsage(
        timestamp=usage.timestamp_ns,
        fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.mountpoint),
        used_bytes=api_pb2.UInt64Value(value=usage.used_bytes),
        inodes_used=api_pb2.UInt64Value(value=usage.inodes_used),
    )
    # Container writable layers share this file system: kubelet then sees no split image fs.
    return api_pb2.ImageFsInfoResponse(image_filesystems=[filesystem])
