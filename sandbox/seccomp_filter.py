"""The seccomp filter every task runs under, compiled to classic BPF here, in the harness.

The fork-server (stdlib-only, inside bwrap) receives the BPF bytes; its zygote installs them on
itself once, and every task it forks inherits the filter. The monitor process, which kills, stays
unfiltered. Denied calls return EPERM (the program sees an OSError, not a crash).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import tempfile

# Signals to other processes, inspecting or writing other processes, leaving the process group,
# namespaces and mounts, and kernel surfaces a test program never needs.
DENIED = (
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "process_mrelease",
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
    "setsid",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "syslog", "acct", "quotactl", "swapon", "swapoff", "reboot", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "sethostname", "setdomainname",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    # SysV IPC and POSIX message queues outlive a task (the sandbox's IPC namespace is shared by its
    # tasks, and /tmp and /dev/shm wiping does not reach them): no channel from one task to the next
    "shmget", "semget", "msgget", "mq_open",
)  # fmt: skip
AF_UNIX = 1  # the only socket family allowed: AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, ... get EPERM
PRIO_PROCESS, IOPRIO_WHO_PROCESS = 0, 1
SELF_ONLY = {  # syscall -> the leading argument values meaning "this process"; any other value: EPERM
    "setpgid": (0, 0),
    "prlimit64": (0,),
    "setpriority": (PRIO_PROCESS, 0),
    "ioprio_set": (IOPRIO_WHO_PROCESS, 0),
    "sched_setaffinity": (0,),
    "sched_setscheduler": (0,),
    "sched_setparam": (0,),
    "sched_setattr": (0,),
    "migrate_pages": (0,),
    "move_pages": (0,),
}
# fcntl commands that would aim SIGIO/SIGURG at another process (the monitor shares the task's uid)
F_SETOWN, F_SETSIG, F_SETOWN_EX = 8, 10, 15
FIOSETOWN, SIOCSPGRP = 0x8901, 0x8902  # the same through ioctl


@functools.lru_cache(maxsize=1)
def build_bpf() -> bytes:
    """Compile the filter. Raises ImportError/OSError when pyseccomp or libseccomp2 is missing."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        # a syscall this libseccomp does not know cannot be called by that name here either
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            f.add_rule(deny, name)
    for call in ("socket", "socketpair"):
        f.add_rule(deny, call, sc.Arg(0, sc.NE, AF_UNIX))
    # Calls that take a pid act on the caller only (pid 0): the next task, forked while this one runs,
    # and the fork-server share its uid. setpgid(0, 0) is how each task makes its own group; joining or
    # moving groups (an escape from the group kill) is denied.
    for call, self_only in SELF_ONLY.items():
        for arg, value in enumerate(self_only):
            f.add_rule(deny, call, sc.Arg(arg, sc.NE, value))
    for cmd in (F_SETOWN, F_SETSIG, F_SETOWN_EX):
        f.add_rule(deny, "fcntl", sc.Arg(1, sc.EQ, cmd))
    for req in (FIOSETOWN, SIOCSPGRP):
        f.add_rule(deny, "ioctl", sc.Arg(1, sc.EQ, req))
    with tempfile.TemporaryFile() as fh:
        f.export_bpf(fh)
        fh.seek(0)
        return fh.read()
