"""PortForward: answer with a URL on the streaming server for connections into a pod.

Checked here: the pod exists (NOT_FOUND: a removed pod), its pause task runs
(FAILED_PRECONDITION: nothing to connect into), the ports are ports (``register_portforward``).
Each forwarded connection later goes to ``localhost:PORT`` inside the pod's network namespace
(``service/streaming.py``).
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.errors import FailedPrecondition
from pycri.service.context import RuntimeContext
from pycri.store.sandbox import SandboxState


async def port_forward(
    rt: RuntimeContext, request: api_pb2.PortForwardRequest
) -> api_pb2.PortForwardResponse:
    sandbox = rt.sandboxes.get(request.pod_sandbox_id)
    if sandbox.status.state is not SandboxState.READY:
        raise FailedPrecondition(f"sandbox {sandbox.id} is not ready")
    resolved = api_pb2.PortForwardRequest()
    resolved.CopyFrom(request)
    resolved.pod_sandbox_id = sandbox.id
    return api_pb2.PortForwardResponse(url=rt.streams.register_portforward(resolved))
