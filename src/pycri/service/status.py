"""Status: RuntimeReady from the continuous containerd probe, NetworkReady from the CNI state;
the verbose info says what the node enforces (seccomp filters, AppArmor).

Answered from memory only (kubelet calls it constantly; it must not hang with containerd).
"""

from __future__ import annotations

import json

from cri_api.v1 import api_pb2

from pycri.service.context import RuntimeContext

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


async def status(rt: RuntimeContext, request: api_pb2.StatusRequest) -> api_pb2.StatusResponse:
    runtime = api_pb2.RuntimeCondition(type=RUNTIME_READY, status=rt.health.healthy)
    if not rt.health.healthy:
        runtime.reason = "ContainerdUnreachable"
        runtime.message = rt.health.reason
    network_ready, network_message = rt.network.status()
    network = api_pb2.RuntimeCondition(type=NETWORK_READY, status=network_ready)
    if not network_ready:
        network.reason = "NetworkPluginNotReady"
        network.message = network_message
    response = api_pb2.StatusResponse(status=api_pb2.RuntimeStatus(conditions=[runtime, network]))
    if request.verbose:
        response.info["config"] = json.dumps(
            {
                "containerdAddress": rt.config.containerd_socket,
                "managedContainerd": rt.config.managed_containerd,
                "containerdVersion": rt.health.version,
                "sandboxImage": rt.config.sandbox_image,
                "cniConfDir": rt.config.cni_conf_dir,
            }
        )
        response.info["cni"] = json.dumps(rt.network.describe())
        response.info["security"] = json.dumps(
            {**rt.security.info(), "summary": rt.security.summary()}
        )
    return response
