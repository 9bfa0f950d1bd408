"""Version: static information; no containerd call, so it answers even when containerd hangs."""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri import __version__
from pycri.service.context import RuntimeContext

# The CRI version string kubelet insists on (it is not the API version).
KUBE_RUNTIME_API_VERSION = "0.1.0"
RUNTIME_NAME = "pycri"
RUNTIME_API_VERSION = "v1"


async def version(rt: RuntimeContext, request: api_pb2.VersionRequest) -> api_pb2.VersionResponse:
    return api_pb2.VersionResponse(
        version=KUBE_RUNTIME_API_VERSION,
        runtime_name=RUNTIME_NAME,
        runtime_version=__version__,
        runtime_api_version=RUNTIME_API_VERSION,
    )
