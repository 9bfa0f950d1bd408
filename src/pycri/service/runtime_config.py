"""RuntimeConfig and UpdateRuntimeConfig: the runtime's cgroup driver to kubelet, the node's
pod CIDR from kubelet.

kubelets with ``KubeletCgroupDriverFromCRI`` ask RuntimeConfig which cgroup driver to use
instead of trusting their own flag; pycri manages cgroups with cgroupfs only (config key
``cgroup_driver``), so that is the answer. UpdateRuntimeConfig carries the pod CIDR; it is
recorded and, with ``cni_conf_template``, turned into the node's CNI config
(``pycri.net.pod_cidr``), which the CNI watcher then loads.
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.errors import InvalidArgument
from pycri.net.pod_cidr import PodCIDRError
from pycri.service.context import RuntimeContext

CGROUP_DRIVERS = {"cgroupfs": api_pb2.CGROUPFS, "systemd": api_pb2.SYSTEMD}


async def runtime_config(
    rt: RuntimeContext, request: api_pb2.RuntimeConfigRequest
) -> api_pb2.RuntimeConfigResponse:
    return api_pb2.RuntimeConfigResponse(
        linux=api_pb2.LinuxRuntimeConfiguration(
            cgroup_driver=CGROUP_DRIVERS[rt.config.cgroup_driver]
        )
    )


async def update_runtime_config(
    rt: RuntimeContext, request: api_pb2.UpdateRuntimeConfigRequest
) -> api_pb2.UpdateRuntimeConfigResponse:
    pod_cidr = request.runtime_config.network_config.pod_cidr
    if not pod_cidr:
        return api_pb2.UpdateRuntimeConfigResponse()  # nothing to record (kubelet sends none)
    try:
        await rt.pod_cidr.update(pod_cidr)
    except PodCIDRError as err:
        raise InvalidArgument(str(err)) from None
    # Load the written config now, so the next Status already says NetworkReady.
    await rt.network.watcher.refresh()
    return api_pb2.UpdateRuntimeConfigResponse()
