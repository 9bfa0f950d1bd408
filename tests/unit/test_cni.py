"""CNI config loading, plugin execution, the config watcher and per-pod setup/teardown, with
fake plugins: small Python scripts whose behaviour the network config drives and which log
every invocation (command, environment, stdin) to a JSON-lines file."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from pycri.errors import FailedPrecondition
from pycri.net import manager as manager_mod
from pycri.net.cni import (
    AddProgress,
    CNIConfigError,
    CNIPluginError,
    NetworkConfigList,
    PluginRunner,
    RuntimeConf,
    config_files,
    load_file,
    plugin_stdin,
    pod_ips,
)
from pycri.net.manager import NetworkTeardownError, PodNetwork, capability_args, runtime_conf
from pycri.net.netns import NetNS
from pycri.net.watch import ConfigWatcher
from pycri.service.rollback import Rollback
from pycri.store.sandbox import SandboxMetadata

FAKE_PLUGIN = """#!{python}
import json, os, sys, time
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_CNI_LOG"], "a") as log:
    log.write(json.dumps({{"plugin": name, "cmd": cmd, "pid": os.getpid(),
        "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}},
        "stdin": conf}}) + "\\n")
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": conf["cniVersion"],
                      "supportedVersions": (open(sys.argv[0] + ".versions").read().split()
                                            if os.path.exists(sys.argv[0] + ".versions")
                                            else ["0.3.1", "0.4.0", "1.0.0"])}}))
    sys.exit(0)
time.sleep(conf.get("x_sleep", 0))
counter = conf.get("x_fail_times_file")
if counter and cmd in conf.get("x_fail", []):
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    if n > 0:
        open(counter, "w").write(str(n - 1))
        print(json.dumps({{"code": 11, "msg": "try again later", "details": "flaky"}}))
        sys.exit(1)
elif cmd in conf.get("x_fail", []):
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 7,
                      "msg": "{{}} says no".format(name), "details": "on purpose"}}))
    sys.exit(1)
if cmd == "ADD":
    result = conf.get("prevResult") or {{"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []}}
    if "x_ip" in conf:
        result["interfaces"].append({{"name": os.environ["CNI_IFNAME"], "sandbox": os.environ["CNI_NETNS"]}})
        result["ips"].append({{"address": conf["x_ip"], "interface": len(result["interfaces"]) - 1}})
    print(json.dumps(result))
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A bin dir with fake plugins ``one``, ``two``, ``three``, ``ipam``; and their log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("one", "two", "three", "ipam"):
        path = bin_dir / name
        path.write_text(FAKE_PLUGIN.format(python=sys.executable))
        path.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CNI_LOG", str(log))
    monkeypatch.setenv("CNI_STALE", "must not reach plugins")
    return bin_dir, log


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def network(*plugins: dict[str, Any], version: str = "1.0.0", **extra: Any) -> NetworkConfigList:
    return NetworkConfigList.from_json(
        {"cniVersion": version, "name": "testnet", "plugins": list(plugins), **extra}
    )


RUNTIME = RuntimeConf(
    container_id="abc",
    netns="/run/netns/x",
    args=(("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p")),
    capability_args={"portMappings": [{"hostPort": 80, "containerPort": 8080}]},
)


# --- configuration -------------------------------------------------------------------------


def test_conflist_and_single_plugin_conf_parse() -> None:
    net = network({"type": "one", "ipam": {"type": "ipam"}}, {"type": "two"})
    assert (net.name, net.cni_version) == ("testnet", "1.0.0")
    assert net.plugin_types == ["one", "ipam", "two"]
    single = NetworkConfigList.from_json({"cniVersion": "0.3.1", "name": "n", "type": "one"})
    assert [p["type"] for p in single.plugins] == ["one"]
    assert NetworkConfigList.from_json(net.to_json()) == net


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "not a JSON object"),
        ({"cniVersion": "1.0.0", "name": "n"}, "neither 'plugins' nor 'type'"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "non-empty list"),
        ({"cniVersion": "1.0.0", "plugins": [{"type": "a"}]}, "'name'"),
        ({"cniVersion": "one", "name": "n", "plugins": [{"type": "a"}]}, "invalid CNI version"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"x": 1}]}, "plain 'type'"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../sh"}]}, "plain 'type'"),
    ],
)
def test_invalid_configs_are_refused_with_reason(doc: Any, message: str) -> None:
    with pytest.raises(CNIConfigError, match=message):
        NetworkConfigList.from_json(doc, source="f.conflist")


def test_first_file_by_name_with_known_suffix(tmp_path: Path) -> None:
    for name in ("20-b.conf", "10-a.conflist", "05-ignored.txt", "30-c.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "00-dir.conf").mkdir()
    assert [p.name for p in config_files(tmp_path)] == ["10-a.conflist", "20-b.conf", "30-c.json"]
    assert config_files(tmp_path / "missing") == []
    (tmp_path / "10-a.conflist").write_text("{not json")
    with pytest.raises(CNIConfigError, match=r"10-a.conflist: invalid JSON"):
        load_file(tmp_path / "10-a.conflist")


# --- results and stdin ---------------------------------------------------------------------


def test_pod_ips_from_results() -> None:
    result = {
        "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [
            {"address": "fd00::5/64", "interface": 2},
            {"address": "10.1.0.1/24", "interface": 0},  # the bridge's: not the pod's
            {"address": "10.1.0.5/24", "interface": 2},
            {"address": "127.0.0.1/8"},
        ],
    }
    assert pod_ips(result) == ["10.1.0.5", "fd00::5"]
    assert pod_ips({"ip4": {"ip": "10.2.0.3/16"}, "ip6": {"ip": "fd01::3/64"}}) == [
        "10.2.0.3",
        "fd01::3",
    ]
    assert pod_ips(None) == []
    assert pod_ips({"ips": [{"address": "garbage"}]}) == []


def test_stdin_carries_name_version_capabilities_and_prev_result() -> None:
    net = network({"type": "one", "capabilities": {"portMappings": True, "bandwidth": True}})
    doc = plugin_stdin(net, net.plugins[0], RUNTIME, {"ips": []})
    assert doc["name"] == "testnet" and doc["cniVersion"] == "1.0.0"
    assert doc["runtimeConfig"] == {"portMappings": [{"hostPort": 80, "containerPort": 8080}]}
    assert doc["prevResult"] == {"ips": []}
    plain = plugin_stdin(net, {"type": "two"}, RUNTIME, None)
    assert "runtimeConfig" not in plain and "prevResult" not in plain
    assert "prevResult" not in net.plugins[0]  # the stored config is never changed


def test_pod_runtime_conf_args_and_port_mappings() -> None:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", namespace="prod", uid="u1"),
        port_mappings=[
            api_pb2.PortMapping(container_port=80, host_port=8080),
            api_pb2.PortMapping(
                protocol=api_pb2.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1"
            ),
            api_pb2.PortMapping(container_port=9000),  # no host port: not mapped
        ],
        dns_config=api_pb2.DNSConfig(servers=["10.0.0.10"], searches=["svc"]),
    )
    conf = runtime_conf(sandbox_id="sid", config=config, netns="/n")
    assert dict(conf.args) == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "prod",
        "K8S_POD_NAME": "web",
        "K8S_POD_INFRA_CONTAINER_ID": "sid",
        "K8S_POD_UID": "u1",
    }
    assert conf.ifname == "eth0"
    assert capability_args(config) == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ],
        "dns": {"servers": ["10.0.0.10"], "searches": ["svc"], "options": []},
    }


# --- plugin execution ----------------------------------------------------------------------


async def test_add_chains_prev_results_with_spec_environment(plugins: tuple[Path, Path]) -> None:
    bin_dir, log = plugins
    runner = PluginRunner(bin_dirs=[str(bin_dir / "nothing-here"), str(bin_dir)])
    net = network(
        {"type": "one", "x_ip": "10.9.0.2/24", "ipam": {"type": "ipam"}},
        {"type": "two", "capabilities": {"portMappings": True}},
    )
    result = await runner.add(net, RUNTIME)
    assert pod_ips(result) == ["10.9.0.2"]
    first, second = calls(log)
    assert [first["plugin"], second["plugin"]] == ["one", "two"]
    assert first["env"] == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc",
        "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p",
        "CNI_PATH": f"{bin_dir / 'nothing-here'}:{bin_dir}",
    }
    assert "prevResult" not in first["stdin"] and "runtimeConfig" not in first["stdin"]
    assert second["stdin"]["prevResult"] == json.loads(json.dumps(result))
    assert second["stdin"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 80


async def test_add_failure_is_the_plugins_error_and_stops_the_chain(
    plugins: tuple[Path, Path],
) -> None:
    bin_dir, log = plugins
    runner = PluginRunner(bin_dirs=[str(bin_dir)])
    net = network({"type": "one"}, {"type": "two", "x_fail": ["ADD"]}, {"type": "three"})
    with pytest.raises(CNIPluginError) as err:
        await runner.add(net, RUNTIME)
    assert (err.value.plugin, err.value.code, err.value.msg) == ("two", 7, "two says no")
    assert str(err.value) == 'plugin type="two" failed (add): two says no: on purpose'
    assert [c["plugin"] for c in calls(log)] == ["one", "two"]


async def test_missing_plugin_is_named(plugins: tuple[Path, Path]) -> None:
    runner = PluginRunner(bin_dirs=[str(plugins[0])])
    with pytest.raises(CNIPluginError, match="failed to find plugin 'nope'"):
        await runner.add(network({"type": "nope"}), RUNTIME)


async def test_del_runs_every_plugin_in_reverse_and_raises_the_first_error(
    plugins: tuple[Path, Path],
) -> None:
    bin_dir, log = plugins
    runner = PluginRunner(bin_dirs=[str(bin_dir)])
    net = network({"type": "one"}, {"type": "two", "x_fail": ["DEL"]}, {"type": "three"})
    with pytest.raises(CNIPluginError, match="two says no"):
        await runner.delete(net, RUNTIME, {"ips": [{"address": "10.0.0.2/24"}]})
    seen = calls(log)
    assert [c["plugin"] for c in seen] == ["three", "two", "one"]
    assert all(c["stdin"]["prevResult"]["ips"] for c in seen)
    old = network({"type": "one"}, version="0.3.1")
    await runner.delete(old, RUNTIME, {"ips": []})
    assert "prevResult" not in calls(log)[-1]["stdin"]  # DEL had no prevResult before 0.4.0


async def test_del_after_failed_add_insists_only_on_completed_plugins(
    plugins: tuple[Path, Path],
) -> None:
    bin_dir, log = plugins
    runner = PluginRunner(bin_dirs=[str(bin_dir)])
    progress = AddProgress()
    net = network({"type": "one"}, {"type": "two", "x_fail": ["ADD", "DEL"]}, {"type": "three"})
    with pytest.raises(CNIPluginError):
        await runner.add(net, RUNTIME, progress=progress)
    assert (progress.applied, progress.complete) == (1, False)
    await runner.delete(net, RUNTIME, None, progress=progress)  # two's DEL error ignored
    assert [c["plugin"] for c in calls(log) if c["cmd"] == "DEL"] == ["three", "two", "one"]
    failing_first = network({"type": "one", "x_fail": ["DEL"]}, {"type": "two"})
    with pytest.raises(CNIPluginError, match="one says no"):  # one's ADD had completed
        await runner.delete(failing_first, RUNTIME, None, progress=AddProgress(applied=1))
    await runner.delete(failing_first, RUNTIME, None, progress=AddProgress(applied=0))


async def test_check_follows_version_and_disable_check(plugins: tuple[Path, Path]) -> None:
    bin_dir, log = plugins
    runner = PluginRunner(bin_dirs=[str(bin_dir)])
    prev = {"ips": []}
    assert await runner.check(network({"type": "one"}, {"type": "two"}), RUNTIME, prev)
    assert [(c["plugin"], c["cmd"]) for c in calls(log)] == [("one", "CHECK"), ("two", "CHECK")]
    assert not await runner.check(network({"type": "one"}, version="0.3.1"), RUNTIME, prev)
    assert not await runner.check(network({"type": "one"}, disableCheck=True), RUNTIME, prev)
    assert len(calls(log)) == 2
    with pytest.raises(CNIPluginError):
        await runner.check(network({"type": "one", "x_fail": ["CHECK"]}), RUNTIME, prev)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


async def test_timeout_kills_the_plugin(plugins: tuple[Path, Path]) -> None:
    bin_dir, log = plugins
    runner = PluginRunner(bin_dirs=[str(bin_dir)], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(CNIPluginError, match=r"timed out after 0\.5s"):
        await runner.add(network({"type": "one", "x_sleep": 30}), RUNTIME)
    assert time.monotonic() - started < 5
    assert _gone(calls(log)[0]["pid"])


async def test_cancellation_kills_the_plugin(plugins: tuple[Path, Path]) -> None:
    bin_dir, log = plugins
    runner = PluginRunner(bin_dirs=[str(bin_dir)])
    task = asyncio.create_task(runner.add(network({"type": "one", "x_sleep": 30}), RUNTIME))
    for _ in range(100):
        if calls(log):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(calls(log)[0]["pid"])


async def test_validate_finds_missing_and_incompatible_plugins(plugins: tuple[Path, Path]) -> None:
    bin_dir, log = plugins
    runner = PluginRunner(bin_dirs=[str(bin_dir)])
    await runner.validate(network({"type": "one", "ipam": {"type": "ipam"}}))
    assert [(c["plugin"], c["cmd"]) for c in calls(log)] == [
        ("one", "VERSION"),
        ("ipam", "VERSION"),
    ]
    with pytest.raises(CNIConfigError, match=r"CNI plugin\(s\) nope not found"):
        await runner.validate(network({"type": "one", "ipam": {"type": "nope"}}))
    (bin_dir / "two.versions").write_text("0.3.0 0.3.1")
    with pytest.raises(CNIConfigError, match=r"'two' does not support cniVersion 1\.0\.0"):
        await runner.validate(network({"type": "one"}, {"type": "two"}))


# --- the watcher ---------------------------------------------------------------------------


def write_conf(conf_dir: Path, name: str, doc: Any) -> None:
    tmp = conf_dir / f".{name}.tmp"
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    tmp.rename(conf_dir / name)


GOOD = {"cniVersion": "1.0.0", "name": "good", "plugins": [{"type": "one"}]}


async def test_watcher_states_and_cheap_polls(plugins: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, log = plugins
    conf_dir = tmp_path / "net.d"
    watcher = ConfigWatcher(conf_dir=conf_dir, runner=PluginRunner(bin_dirs=[str(bin_dir)]))
    state = await watcher.refresh()
    assert not state.ready and not state.present and "no network config" in state.error
    conf_dir.mkdir()
    write_conf(conf_dir, "10-net.conflist", "{broken")
    state = await watcher.refresh()
    assert not state.ready and state.present and "invalid JSON" in state.error
    write_conf(conf_dir, "10-net.conflist", GOOD)
    state = await watcher.refresh()
    assert state.ready and state.network is not None and state.network.name == "good"
    validations = len(calls(log))
    for _ in range(3):  # nothing changed: no parse, no plugin runs
        assert (await watcher.refresh()) is state
    assert len(calls(log)) == validations
    write_conf(conf_dir, "05-first.conflist", {**GOOD, "name": "first"})
    state = await watcher.refresh()
    assert state.network is not None and state.network.name == "first"
    write_conf(conf_dir, "05-first.conflist", {**GOOD, "plugins": [{"type": "gone"}]})
    state = await watcher.refresh()
    assert not state.ready and "gone not found" in state.error
    (bin_dir / "gone").symlink_to(bin_dir / "one")  # the plugin gets installed
    assert (await watcher.refresh()).ready
    for path in conf_dir.iterdir():
        path.unlink()
    assert not (await watcher.refresh()).present


async def test_watcher_polls_in_the_background(plugins: tuple[Path, Path], tmp_path: Path) -> None:
    watcher = ConfigWatcher(
        conf_dir=tmp_path, runner=PluginRunner(bin_dirs=[str(plugins[0])]), interval=0.05
    )
    await watcher.start()
    try:
        assert not watcher.state.ready
        write_conf(tmp_path, "10-net.conf", {"cniVersion": "1.0.0", "name": "n", "type": "one"})
        for _ in range(100):
            if watcher.state.ready:
                break
            await asyncio.sleep(0.05)
        assert watcher.state.ready
    finally:
        await watcher.stop()


# --- per pod -------------------------------------------------------------------------------


def pod_network(bin_dir: Path, tmp_path: Path) -> PodNetwork:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir(exist_ok=True)
    return PodNetwork(conf_dir=conf_dir, bin_dirs=[str(bin_dir)], netns=NetNS(tmp_path / "ns"))


async def test_network_for_pod_degraded_invalid_ready(
    plugins: tuple[Path, Path], tmp_path: Path
) -> None:
    net = pod_network(plugins[0], tmp_path)
    await net.watcher.refresh()
    assert net.network_for_pod() is None  # no config: loopback only
    assert net.status() == (False, net.watcher.state.error)
    write_conf(net.watcher.conf_dir, "10.conflist", {**GOOD, "plugins": [{"type": "nope"}]})
    await net.watcher.refresh()
    with pytest.raises(FailedPrecondition, match="nope not found"):
        net.network_for_pod()
    write_conf(net.watcher.conf_dir, "10.conflist", GOOD)
    await net.watcher.refresh()
    assert net.network_for_pod() is not None and net.status() == (True, "")
    assert net.describe()["network"] == "good"


def metadata(net: NetworkConfigList | None, **extra: Any) -> SandboxMetadata:
    return SandboxMetadata(
        id="sb1",
        name="sb",
        config=api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="p", namespace="ns", uid="u")
        ),
        netns_path="",
        created_at=1,
        cni_network=net.to_json() if net else None,
        **extra,
    )


async def test_setup_and_teardown_with_retries(
    plugins: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_mod, "DEL_BACKOFF", 0.01)
    bin_dir, log = plugins
    pods = pod_network(bin_dir, tmp_path)
    counter = tmp_path / "fail-count"
    net = network(
        {"type": "one", "x_ip": "10.9.0.7/24", "x_fail": ["DEL"], "x_fail_times_file": str(counter)}
    )
    attached = await pods.setup(
        sandbox_id="sb1", config=metadata(net).config, netns_path="/n", network=net
    )
    assert (attached.ip, attached.additional_ips) == ("10.9.0.7", ())
    meta = metadata(net, cni_result=attached.result, ip=attached.ip)
    counter.write_text("2")  # two failures, then success: within one teardown
    await pods.teardown(meta)
    dels = [c for c in calls(log) if c["cmd"] == "DEL"]
    assert len(dels) == 3 and dels[-1]["env"]["CNI_NETNS"] == ""  # no pinned netns
    assert dels[-1]["stdin"]["prevResult"] == attached.result
    counter.write_text("99")
    with pytest.raises(NetworkTeardownError, match=r"3 attempts.*try again later"):
        await pods.teardown(meta)
    await pods.teardown(meta, give_up=True)  # logged, not raised
    assert pods.teardown_failures == 2 + 3 + 3
    await pods.teardown(metadata(None))  # no CNI ran: nothing to do


async def test_setup_failure_is_reported_with_the_plugin_error(
    plugins: tuple[Path, Path], tmp_path: Path
) -> None:
    pods = pod_network(plugins[0], tmp_path)
    net = network({"type": "one", "x_fail": ["ADD"]})
    with pytest.raises(Exception, match=r"failed to set up network 'testnet'.*one says no"):
        await pods.setup(sandbox_id="sb1", config=metadata(net).config, netns_path="", network=net)


async def test_rollback_halts_at_a_failed_critical_step() -> None:
    ran: list[str] = []

    def step(name: str, fail: bool = False) -> Any:
        def undo() -> None:
            ran.append(name)
            if fail:
                raise RuntimeError(name)

        return undo

    undo = Rollback(what="x")
    with pytest.raises(ValueError):
        async with undo:
            undo.push("record", step("record"))
            undo.push("network", step("network", fail=True), critical=True)
            undo.push("task", step("task", fail=True))
            raise ValueError("boom")
    assert ran == ["task", "network"]  # a failed non-critical step does not halt
    assert undo.halted == "network" and undo.failed_steps == ["task", "network"]
