"""pycri's default seccomp filter: the profile a container gets for ``RuntimeDefault``.

The filter is an allow-list. Every system call not named below fails with ``EPERM``
(``SCMP_ACT_ERRNO`` with ``defaultErrnoRet: 1``), so a program sees an ordinary "permission denied"
rather than being killed. The list is written as :data:`GROUPS`: each :class:`SyscallGroup` names
the calls that serve one purpose and says, in ``why``, why a container may make them. Reading the
groups top to bottom is reading the policy; ``docs/security.md`` has the same in prose.

Three ideas shape the list:

* **The kernel already checks most things.** Calls whose effect is confined by a namespace (network,
  IPC, mounts, PIDs) or gated by a capability the kernel checks (``setuid``, ``chown``, ``mknod``)
  are allowed: filtering them would add nothing but breakage.
* **Some calls are dangerous even when the kernel would allow them,** because they reach global
  kernel state that no namespace covers (the keyrings, the clock, loaded modules) or because they
  are large, often-exploited attack surface (``bpf``, ``perf_event_open``, ``userfaultfd``,
  ``io_uring``, user namespaces). Those are opened only when the container holds the capability
  that means "I administer this" (mostly ``CAP_SYS_ADMIN``), or never (:data:`BLOCKED`).
* **Fall-backs must work.** ``clone3`` passes its flags in memory, where a filter cannot look, so
  without ``CAP_SYS_ADMIN`` it fails with ``ENOSYS``: glibc then retries with ``clone``, whose
  flags the filter can check. New system calls that this list does not know are answered with
  ``ENOSYS`` by runc itself (it patches the filter so any number above the highest one named here
  gets ``ENOSYS``), which programs treat as "old kernel" and work around.

:func:`default_profile` builds the OCI ``linux.seccomp`` object for a capability set and a machine
architecture. Every name listed is known to libseccomp (the unit tests check each against
libseccomp's own tables for the architectures it is listed for): runc skips a name libseccomp
cannot resolve with only a debug log, so a typo here would silently deny a system call.
"""

from __future__ import annotations

import errno
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BLOCKED",
    "CLONE_NAMESPACE_FLAGS",
    "FAMILIES",
    "GROUPS",
    "UNSHARE_NAMESPACE_FLAGS",
    "ArchFamily",
    "SyscallGroup",
    "default_profile",
    "family_for_machine",
]

JsonDict = dict[str, Any]

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"

# clone(2)/unshare(2) flags that create namespaces. CLONE_NEWTIME (0x80) shares its bit with the
# exit-signal byte of clone(2), so it can only be refused for unshare(2); clone3 is refused anyway.
_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWTIME = 0x00000080
CLONE_NAMESPACE_FLAGS = (
    _CLONE_NEWNS
    | _CLONE_NEWCGROUP
    | _CLONE_NEWUTS
    | _CLONE_NEWIPC
    | _CLONE_NEWUSER
    | _CLONE_NEWPID
    | _CLONE_NEWNET
)
UNSHARE_NAMESPACE_FLAGS = CLONE_NAMESPACE_FLAGS | _CLONE_NEWTIME

_AF_VSOCK = 40

# personality(2) values that change nothing a container could abuse: the Linux personality, its
# 32-bit variant (what ``linux32``/``setarch i686`` ask for), the 2.6-style uname some old build
# systems need, "no address randomisation" (setarch -R, debuggers), and 0xffffffff (a query).
# Refused: READ_IMPLIES_EXEC, MMAP_PAGE_ZERO and the foreign-OS personalities.
_PER_LINUX = 0x0000
_PER_LINUX32 = 0x0008
_UNAME26 = 0x0020000
_ADDR_NO_RANDOMIZE = 0x0040000
_PERSONALITY_QUERY = 0xFFFFFFFF
PERSONALITY_VALUES: tuple[int, ...] = (
    _PER_LINUX,
    _PER_LINUX32,
    _UNAME26,
    _UNAME26 | _PER_LINUX32,
    _ADDR_NO_RANDOMIZE,
    _ADDR_NO_RANDOMIZE | _PER_LINUX32,
    _PERSONALITY_QUERY,
)


@dataclass(frozen=True)
class ArchFamily:
    """The seccomp architectures one kind of host runs, and what differs between kinds."""

    name: str
    # Native first, then the compatibility ABIs a 64-bit kernel of this kind also runs.
    architectures: tuple[str, ...]
    # Which clone(2) argument carries the flags: 0 nearly everywhere; s390 swaps the first two.
    clone_flags_arg: int


FAMILIES: dict[str, ArchFamily] = {
    "x86_64": ArchFamily("x86_64", ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"), 0),
    "aarch64": ArchFamily("aarch64", ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"), 0),
    "s390x": ArchFamily("s390x", ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"), 1),
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
# A host we have no family for gets a native-only filter of the common groups.
_UNKNOWN_FAMILY = ArchFamily("", (), 0)


def family_for_machine(machine: str) -> ArchFamily:
    """The family of ``machine`` (``platform.machine()`` / ``uname -m``)."""
    key = _MACHINE_ALIASES.get(machine, machine)
    return FAMILIES.get(key, _UNKNOWN_FAMILY)


@dataclass(frozen=True)
class SyscallGroup:
    """System calls allowed together, for one reason.

    ``needs``: the group applies only if the container holds one of these capabilities.
    ``not_with``: the group is left out if it holds one of these (a narrower rule that a
    capability-conditional group replaces). ``families``: only on these architecture families
    (the names do not exist elsewhere). ``args``: conditions on the arguments; every condition
    must hold. ``flags_arg`` marks a condition on clone(2)'s flags, whose argument index depends
    on the family. ``errno``: deny with this error instead of allowing.
    """

    why: str
    names: tuple[str, ...]
    needs: frozenset[str] = frozenset()
    not_with: frozenset[str] = frozenset()
    families: frozenset[str] | None = None
    args: tuple[JsonDict, ...] = ()
    flags_arg: bool = False
    errno: int | None = None

    def applies(self, capabilities: frozenset[str], family: ArchFamily) -> bool:
        if self.families is not None and family.name not in self.families:
            return False
        if self.needs and not self.needs & capabilities:
            return False
        return not self.not_with & capabilities


def _caps(*names: str) -> frozenset[str]:
    return frozenset(names)


_SYS_ADMIN = _caps("CAP_SYS_ADMIN")
_X86 = frozenset({"x86_64"})
_ARM = frozenset({"aarch64"})
_S390 = frozenset({"s390x"})


def _masked_zero(index: int, mask: int) -> JsonDict:
    """Argument ``index`` has none of the bits of ``mask`` set."""
    return {"index": index, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}


# The groups are laid out by hand (several names to a line), so the formatter leaves them alone.
# fmt: off
GROUPS: tuple[SyscallGroup, ...] = (
    # ---------------------------------------------------------------- always allowed
    SyscallGroup(
        "Run programs and manage child processes: what every shell and service manager does. "
        "Signals only reach processes the kernel lets us signal (our PID namespace, our uid).",
        (
            "execve", "execveat", "exit", "exit_group", "fork", "vfork", "wait4", "waitid",
            "waitpid", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid",
            "setsid", "set_tid_address", "kill", "tkill", "tgkill", "rt_sigqueueinfo",
            "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal", "process_mrelease",
            "restart_syscall", "prctl",
        ),
    ),
    SyscallGroup(
        "Read and change our own user and group ids and capabilities. Changing them is checked "
        "by the kernel against CAP_SETUID/CAP_SETGID/CAP_SETPCAP; the *32 names are the 32-bit "
        "ABIs' spellings.",
        (
            "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
            "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
            "setfsuid", "setfsgid", "capget", "capset",
            "getuid32", "geteuid32", "getgid32", "getegid32", "getresuid32", "getresgid32",
            "getgroups32", "setuid32", "setgid32", "setreuid32", "setregid32", "setresuid32",
            "setresgid32", "setgroups32", "setfsuid32", "setfsgid32",
        ),
    ),
    SyscallGroup(
        "Signal handling within the process, in today's and the historic spellings.",
        (
            "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
            "rt_sigtimedwait", "rt_sigtimedwait_time64", "sigaltstack", "signalfd", "signalfd4",
            "pause", "alarm", "sigaction", "sigprocmask", "sigreturn", "sigpending",
            "sigsuspend", "signal",
        ),
    ),
    SyscallGroup(
        "Our own address space: mapping, protecting, locking (bounded by RLIMIT_MEMLOCK) and "
        "NUMA placement (bounded by the cgroup's cpuset).",
        (
            "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore",
            "msync", "mlock", "mlock2", "munlock", "mlockall", "munlockall", "membarrier",
            "memfd_create", "memfd_secret", "remap_file_pages", "pkey_alloc", "pkey_free",
            "pkey_mprotect", "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node",
            "mbind",
        ),
    ),
    SyscallGroup(
        "Threads: futexes, robust lists, restartable sequences, yielding the CPU.",
        (
            "futex", "futex_time64", "futex_waitv", "futex_wait", "futex_wake", "futex_requeue",
            "set_robust_list", "get_robust_list", "rseq", "sched_yield",
        ),
    ),
    SyscallGroup(
        "Thread-local storage on x86 (arch_prctl also sets the FS/GS bases).",
        ("arch_prctl", "set_thread_area", "get_thread_area"),
        families=_X86,
    ),
    SyscallGroup(
        "32-bit ARM's private calls (thread pointer, instruction cache flush, breakpoints) and "
        "its own spellings of fadvise, sync_file_range, send and recv.",
        (
            "set_tls", "cacheflush", "breakpoint", "arm_fadvise64_64", "arm_sync_file_range",
            "send", "recv",
        ),
        families=_ARM,
    ),
    SyscallGroup(
        "s390's private calls for runtime instrumentation, guarded storage and machine info.",
        ("s390_runtime_instr", "s390_guarded_storage", "s390_sthyi"),
        families=_S390,
    ),
    SyscallGroup(
        "Reading clocks, sleeping and timers. Setting a clock is in the CAP_SYS_TIME group.",
        (
            "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64",
            "clock_nanosleep", "clock_nanosleep_time64", "gettimeofday", "time", "nanosleep",
            "times", "getitimer", "setitimer", "timer_create", "timer_settime",
            "timer_settime64", "timer_gettime", "timer_gettime64", "timer_getoverrun",
            "timer_delete", "timerfd_create", "timerfd_settime", "timerfd_settime64",
            "timerfd_gettime", "timerfd_gettime64",
        ),
    ),
    SyscallGroup(
        "File descriptors and their data: open, read, write, seek, copy, sync, lock. The mount "
        "namespace and file permissions decide what can be opened; ioctl is left to the drivers "
        "and the device cgroup.",
        (
            "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
            "preadv2", "pwritev2", "open", "openat", "openat2", "creat", "close", "close_range",
            "lseek", "_llseek", "dup", "dup2", "dup3", "fcntl", "fcntl64", "ioctl", "flock",
            "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "truncate",
            "truncate64", "ftruncate", "ftruncate64", "fallocate", "fadvise64", "fadvise64_64",
            "readahead", "sendfile", "sendfile64", "splice", "tee", "vmsplice",
            "copy_file_range", "pipe", "pipe2", "cachestat",
        ),
    ),
    SyscallGroup(
        "File names and metadata: stat, directories, links, modes, owners, times, extended "
        "attributes and inotify watches. Ownership changes and device nodes are checked by the "
        "kernel (CAP_CHOWN, CAP_MKNOD and the device cgroup). name_to_handle_at only reveals a "
        "handle; opening one (open_by_handle_at) stays blocked.",
        (
            "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "newfstatat", "fstatat64",
            "statx", "statfs", "statfs64", "fstatfs", "fstatfs64", "access", "faccessat",
            "faccessat2", "readlink", "readlinkat", "getdents", "getdents64", "getcwd", "chdir",
            "fchdir", "umask", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename",
            "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "mknod",
            "mknodat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
            "fchownat", "chown32", "fchown32", "lchown32", "utime", "utimes", "utimensat",
            "utimensat_time64", "futimesat", "name_to_handle_at",
            "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
            "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr",
            "fremovexattr",
            "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
        ),
    ),
    SyscallGroup(
        "Waiting on many descriptors at once, event counters, and Linux native AIO "
        "(io_uring is not here: see BLOCKED).",
        (
            "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll",
            "ppoll_time64", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
            "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "io_setup", "io_destroy",
            "io_submit", "io_cancel", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
        ),
    ),
    SyscallGroup(
        "Sockets. The network namespace is the boundary; raw and packet sockets need CAP_NET_RAW, "
        "checked by the kernel. socketcall is 32-bit x86's and s390's multiplexer for all of "
        "these (its arguments are in memory, so the vsock rule below cannot apply to it).",
        (
            "socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname",
            "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
            "recvmmsg_time64", "shutdown", "setsockopt", "getsockopt", "socketcall",
        ),
    ),
    SyscallGroup(
        "socket(2) for every address family but AF_VSOCK: vsock is not network-namespaced, so "
        "it would let a container talk to the hypervisor or the host's vsock services.",
        ("socket",),
        args=({"index": 0, "value": _AF_VSOCK, "valueTwo": 0, "op": "SCMP_CMP_NE"},),
    ),
    SyscallGroup(
        "System V and POSIX IPC, confined by the IPC namespace (ipc is 32-bit's multiplexer).",
        (
            "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
            "semtimedop_time64", "semctl", "shmget", "shmat", "shmdt", "shmctl", "ipc",
            "mq_open", "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
            "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
        ),
    ),
    SyscallGroup(
        "Scheduling, priorities and resource limits of our own processes. Raising a priority or "
        "a hard limit is checked by the kernel (CAP_SYS_NICE, CAP_SYS_RESOURCE).",
        (
            "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
            "sched_getscheduler", "sched_setscheduler", "sched_get_priority_max",
            "sched_get_priority_min", "sched_rr_get_interval", "sched_rr_get_interval_time64",
            "sched_getattr", "sched_setattr", "getpriority", "setpriority", "nice", "getrlimit",
            "ugetrlimit", "setrlimit", "prlimit64", "getrusage", "ioprio_get", "ioprio_set",
            "getcpu",
        ),
    ),
    SyscallGroup(
        "Learning about the system, random numbers, and restricting ourselves further "
        "(a nested seccomp filter, Landlock).",
        (
            "uname", "sysinfo", "getrandom", "seccomp", "landlock_create_ruleset",
            "landlock_add_rule", "landlock_restrict_self",
        ),
    ),
    *(
        SyscallGroup(
            "personality(2), limited to the harmless values (see PERSONALITY_VALUES).",
            ("personality",),
            args=({"index": 0, "value": value, "valueTwo": 0, "op": "SCMP_CMP_EQ"},),
        )
        for value in PERSONALITY_VALUES
    ),
    # ------------------------------------------------------ narrowed without CAP_SYS_ADMIN
    SyscallGroup(
        "clone(2) for processes and threads, but not for new namespaces: creating namespaces "
        "(above all user namespaces) is kernel attack surface a container does not need.",
        ("clone",),
        not_with=_SYS_ADMIN,
        args=(_masked_zero(0, CLONE_NAMESPACE_FLAGS),),
        flags_arg=True,
    ),
    SyscallGroup(
        "unshare(2) of files or the fs context only, for the same reason as clone.",
        ("unshare",),
        not_with=_SYS_ADMIN,
        args=(_masked_zero(0, UNSHARE_NAMESPACE_FLAGS),),
    ),
    SyscallGroup(
        "clone3 keeps its flags in memory, out of the filter's reach: answer ENOSYS so that "
        "glibc and others fall back to clone(2), which the rule above checks.",
        ("clone3",),
        not_with=_SYS_ADMIN,
        errno=errno.ENOSYS,
    ),
    # ---------------------------------------------------------------- capability-conditional
    SyscallGroup(
        "CAP_SYS_ADMIN: the container administers its own namespaces, so it may create and join "
        "them, mount and unmount, change root, set its host and domain name, and use fanotify.",
        (
            "clone", "clone3", "unshare", "setns", "mount", "umount", "umount2", "fsopen",
            "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
            "pivot_root", "sethostname", "setdomainname", "fanotify_init", "fanotify_mark",
        ),
        needs=_SYS_ADMIN,
    ),
    SyscallGroup(
        "eBPF programs and maps: CAP_BPF or (before Linux 5.8 split it out) CAP_SYS_ADMIN.",
        ("bpf",),
        needs=_caps("CAP_SYS_ADMIN", "CAP_BPF"),
    ),
    SyscallGroup(
        "Performance counters: CAP_PERFMON or CAP_SYS_ADMIN.",
        ("perf_event_open",),
        needs=_caps("CAP_SYS_ADMIN", "CAP_PERFMON"),
    ),
    SyscallGroup(
        "CAP_SYS_PTRACE: inspecting and changing other processes (debuggers, profilers, CRIU).",
        (
            "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
            "process_madvise",
        ),
        needs=_caps("CAP_SYS_PTRACE"),
    ),
    SyscallGroup(
        "CAP_SYS_TIME: the clocks are not namespaced, so setting one sets the host's.",
        (
            "settimeofday", "stime", "clock_settime", "clock_settime64", "adjtimex",
            "clock_adjtime", "clock_adjtime64",
        ),
        needs=_caps("CAP_SYS_TIME"),
    ),
    SyscallGroup(
        "CAP_SYS_BOOT: reboot(2), which in a PID namespace ends that namespace.",
        ("reboot",),
        needs=_caps("CAP_SYS_BOOT"),
    ),
    SyscallGroup(
        "CAP_SYS_MODULE: loading and removing kernel modules.",
        ("init_module", "finit_module", "delete_module"),
        needs=_caps("CAP_SYS_MODULE"),
    ),
    SyscallGroup(
        "CAP_SYS_NICE: moving other processes' pages between NUMA nodes.",
        ("migrate_pages", "move_pages"),
        needs=_caps("CAP_SYS_NICE"),
    ),
    SyscallGroup(
        "CAP_SYS_CHROOT: chroot(2).",
        ("chroot",),
        needs=_caps("CAP_SYS_CHROOT"),
    ),
    SyscallGroup(
        "CAP_SYS_RAWIO on x86: direct I/O port access.",
        ("iopl", "ioperm"),
        needs=_caps("CAP_SYS_RAWIO"),
        families=_X86,
    ),
    SyscallGroup(
        "CAP_SYS_RAWIO on s390: PCI memory-mapped I/O.",
        ("s390_pci_mmio_read", "s390_pci_mmio_write"),
        needs=_caps("CAP_SYS_RAWIO"),
        families=_S390,
    ),
    SyscallGroup(
        "CAP_SYS_TTY_CONFIG: vhangup(2).",
        ("vhangup",),
        needs=_caps("CAP_SYS_TTY_CONFIG"),
    ),
    SyscallGroup(
        "CAP_SYSLOG: the kernel log, which may show kernel addresses.",
        ("syslog",),
        needs=_caps("CAP_SYSLOG"),
    ),
)
# fmt: on

# Never allowed, whatever the capabilities. Listed so the tests can check that none of them slips
# into a group, and for the documentation; the filter itself denies them by not naming them.
BLOCKED: dict[str, tuple[str, ...]] = {
    "kernel keyrings are not namespaced: keys would be shared with the host and other pods": (
        "keyctl",
        "add_key",
        "request_key",
    ),
    "replacing the running kernel": ("kexec_load", "kexec_file_load"),
    "userfaultfd makes kernel races easy to win, a classic exploit helper": ("userfaultfd",),
    "io_uring is a large, often-exploited interface; programs fall back to epoll and AIO": (
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ),
    "host-wide accounting, swap and quotas": (
        "acct",
        "swapon",
        "swapoff",
        "quotactl",
        "quotactl_fd",
    ),
    "opening files by handle escapes the mount namespace (the 'shocker' exploit)": (
        "open_by_handle_at",
    ),
    "obsolete or removed interfaces nobody needs and old bugs live in": (
        "_sysctl",
        "sysfs",
        "ustat",
        "uselib",
        "nfsservctl",
        "lookup_dcookie",
        "create_module",
        "get_kernel_syms",
        "query_module",
        "modify_ldt",
        "vm86",
        "vm86old",
        "bdflush",
    ),
}


def _rule(group: SyscallGroup, family: ArchFamily) -> JsonDict:
    rule: JsonDict = {"names": sorted(group.names)}
    if group.errno is None:
        rule["action"] = ALLOW
    else:
        rule["action"] = ERRNO
        rule["errnoRet"] = group.errno
    if group.args:
        args = [dict(arg) for arg in group.args]
        if group.flags_arg:
            for arg in args:
                arg["index"] = family.clone_flags_arg
        rule["args"] = args
    return rule


def default_profile(capabilities: Iterable[str], *, machine: str | None = None) -> JsonDict:
    """pycri's default filter as an OCI ``linux.seccomp`` object.

    ``capabilities``: the container's capability set (``CAP_*`` names; pass the bounding set of
    the spec, which pycri sets equal to the effective and permitted sets). ``machine``: the host
    architecture as ``uname -m`` names it; this host's when ``None``.
    """
    caps = frozenset(capabilities)
    family = family_for_machine(machine or platform.machine())
    profile: JsonDict = {"defaultAction": ERRNO, "defaultErrnoRet": errno.EPERM}
    if family.architectures:
        profile["architectures"] = list(family.architectures)
    profile["syscalls"] = [_rule(g, family) for g in GROUPS if g.applies(caps, family)]
    return profile
