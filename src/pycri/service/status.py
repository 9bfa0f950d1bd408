"""Status: RuntimeReady from the continuous containerd probe, NetworkReady from the CNI state,
the runtime handlers with the features their probe found (and the default one again under the
name "", as kubelet expects), and the runtime's own features; the verbose info says what the
node enforces (seccomp filters, AppArmor) and what each handler is.

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
    response = api_pb2.StatusResponse(
        status=api_pb2.RuntimeStatus(conditions=[runtime, network]),
        runtime_handlers=runtime_handlers(rt),
        # CreateContainer honours the Strict policy (no groups from the image's /etc/group).
        features=api_pb2.RuntimeFeatures(supplemental_groups_policy=True),
    )
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
        response.info["cni"] = json.dumps({**rt.network.describe(), **rt.pod_cidr.describe()})
        response.info["security"] = json.dumps(
            {**rt.security.info(), "summary": rt.security.summary()}
        )
        response.info["runtimeHandlers"] = json.dumps(
            {
                "default": rt.handlers.default,
                "handlers": {h.name: h.describe() for h in rt.handlers.all()},
            }
        )
    return response


def runtime_handlers(rt: RuntimeContext) -> list[api_pb2.RuntimeHandler]:
    """Every usable handler with its probed features, then the default one named ""."""
    listed = []
    for handler in rt.handlers.usable():
        features = api_pb2.RuntimeHandlerFeatures(
            recursive_read_only_mounts=handler.features.recursive_read_only_mounts,
            user_namespaces=handler.features.user_namespaces,
        )
        listed.append(api_pb2.RuntimeHandler(name=handler.name, features=features))
        if handler.name == rt.handlers.default:
            listed.append(api_pb2.RuntimeHandler(name="", features=features))
    return listed
