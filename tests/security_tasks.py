"""Tasks for the security tests (issue 13): each runs a program the way a task might, and
returns the descriptors that program found open. Importable by name, as workers need."""
import json
import os
import shlex
import subprocess
import sys

#: A program that prints, as JSON, {fd: what it points to} for every descriptor it has open.
#: Listing /proc/self/fd opens one descriptor, closed again when the listing returns: fstat()
#: tells it apart from the descriptors the program really inherited.
LISTER = r"""
import json, os
found = {}
for name in os.listdir("/proc/self/fd"):
    fd = int(name)
    try:
        os.fstat(fd)
        found[fd] = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        continue  # the listing's own descriptor, closed by now
print(json.dumps(found))
"""


def _parse(text):
    return {int(fd): target for fd, target in json.loads(text).items()}


def fds_after_subprocess_run():
    """``subprocess.run(..., close_fds=False)``: the child inherits every inheritable fd."""
    out = subprocess.run([sys.executable, "-c", LISTER], close_fds=False,
                         stdout=subprocess.PIPE, check=True).stdout
    return _parse(out)


def fds_after_os_system(path):
    """``os.system()``: a shell, then the program, both by fork and exec."""
    status = os.system("%s -c %s > %s" % (shlex.quote(sys.executable), shlex.quote(LISTER),
                                          shlex.quote(path)))
    assert status == 0, status
    with open(path) as f:
        return _parse(f.read())


def fds_after_posix_spawn(path):
    """``os.posix_spawn()``: no close_fds at all, only what is close-on-exec is dropped."""
    actions = [(os.POSIX_SPAWN_OPEN, 1, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)]
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", LISTER], dict(os.environ),
                         file_actions=actions)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    with open(path) as f:
        return _parse(f.read())

