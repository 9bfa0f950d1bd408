"""PodSandboxStatus and ListPodSandbox: answered from memory only (kubelet relists every
second; these must not wait on containerd)."""

from __future__ import annotations

import json

from cri_api.v1 import api_pb2

from pycri.service.container_status import container_status_message
from pycri.service.context import RuntimeContext
from pycri.service.filters import labels_match
from pycri.store.sandbox import Sandbox


def _network(sandbox: Sandbox) -> api_pb2.PodSandboxNetworkStatus:
    meta = sandbox.metadata
    status = sandbox.status
    if meta.host_network or status.network_torn_down or status.netns_missing:
        return api_pb2.PodSandboxNetworkStatus()
    return api_pb2.PodSandboxNetworkStatus(
        ip=meta.ip,
        additional_ips=[api_pb2.PodIP(ip=ip) for ip in meta.additional_ips],
    )


def sandbox_status_message(sandbox: Sandbox) -> api_pb2.PodSandboxStatus:
    meta = sandbox.metadata
    config = meta.config
    return api_pb2.PodSandboxStatus(
        id=meta.id,
        metadata=config.metadata,
        state=sandbox.status.state.to_cri(),
        created_at=meta.created_at,
        network=_network(sandbox),
        linux=api_pb2.LinuxPodSandboxStatus(
            namespaces=api_pb2.Namespace(options=config.linux.security_context.namespace_options)
        ),
        labels=config.labels,
        annotations=config.annotations,
        runtime_handler=meta.runtime_handler,
    )


async def pod_sandbox_status(
    rt: RuntimeContext, request: api_pb2.PodSandboxStatusRequest
) -> api_pb2.PodSandboxStatusResponse:
    sandbox = rt.sandboxes.get(request.pod_sandbox_id)
    response = api_pb2.PodSandboxStatusResponse(status=sandbox_status_message(sandbox))
    if request.verbose:
        response.info["info"] = json.dumps(
            {
                "pid": sandbox.status.pid,
                "state": sandbox.status.state.value,
                "netNamespacePath": sandbox.metadata.netns_path,
                "image": rt.config.sandbox_image,
                "runtimeHandler": sandbox.metadata.handler,
                "resources": sandbox.status.resources,
                "cniResult": sandbox.metadata.cni_result,
                "config": json.loads(sandbox.metadata.encode())["config"],
            }
        )
    # Evented PLEG reads the pod's container statuses from here.
    response.containers_statuses.extend(_container_statuses(rt, sandbox.id))
    return response


def _container_statuses(rt: RuntimeContext, sandbox_id: str) -> list[api_pb2.ContainerStatus]:
    return [container_status_message(rt.images, c) for c in rt.containers.in_sandbox(sandbox_id)]


def _matches(sandbox: Sandbox, flt: api_pb2.PodSandboxFilter) -> bool:
    if flt.id and not sandbox.id.startswith(flt.id):
        return False
    if flt.HasField("state") and sandbox.status.state.to_cri() != flt.state.state:
        return False
    return labels_match(sandbox.metadata.config.labels, flt.label_selector)


def _list_entry(sandbox: Sandbox) -> api_pb2.PodSandbox:
    config = sandbox.metadata.config
    return api_pb2.PodSandbox(
        id=sandbox.id,
        metadata=config.metadata,
        state=sandbox.status.state.to_cri(),
        created_at=sandbox.metadata.created_at,
        labels=config.labels,
        annotations=config.annotations,
        runtime_handler=sandbox.metadata.runtime_handler,
    )


async def list_pod_sandbox(
    rt: RuntimeContext, request: api_pb2.ListPodSandboxRequest
) -> api_pb2.ListPodSandboxResponse:
    flt = request.filter
    items = [_list_entry(s) for s in rt.sandboxes.all() if _matches(s, flt)]
    return api_pb2.ListPodSandboxResponse(items=items)
