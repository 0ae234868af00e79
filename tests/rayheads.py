"""Ray heads that tests start and stop themselves.

A head runs as `ray start --head --block` in a process group of its own, with its own temp
dir and free ports; stopping it kills that process group (and any straggler whose command
line names its temp dir), never the CLI's machine-wide stop, which would also stop a
user's cluster or another test run's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Head:
    gcs_address: str
    dashboard: str
    temp_dir: str
    env: Dict[str, str] = field(default_factory=dict)
    process: Optional[subprocess.Popen] = None  # `ray start --block`, leader of its process group

    def pids(self) -> List[int]:
        """Every process of this head and its nodes: their command lines name its temp dir."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.temp_dir.encode() in f.read():
                        out.append(int(pid))
            except OSError:
                continue
        return out

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
        for _ in range(3):  # processes that left the group (Ray daemonises a few): by temp dir
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)


def start_head(num_cpus: int = 4, extra_args=(), extra_env=None, port: int = 0) -> Head:
    """`ray start --head` on loopback with its own temp dir, free ports and token auth."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ)
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"})
    env.update(extra_env or {})
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    # The token every test driver and CLI call finds (~/.ray/auth_token), created once.
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, timeout=60, check=True)
    gcs, dash = port or free_port(), free_port()
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--num-cpus={num_cpus}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           # the agents' ports too: their defaults (52365, ...) are taken by any other Ray on the
           # machine, the suite's shared one among them, and a head without its agent takes no job
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
           *extra_args]
    log = open(os.path.join(temp_dir, "ray-start.log"), "wb")
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()  # the child has its own copy
    head = Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", temp_dir, env, process)
    deadline = time.monotonic() + 180
    while not all(_listening(p) for p in (gcs, dash)):
        if process.poll() is not None or time.monotonic() > deadline:
            head.stop()
            with open(os.path.join(temp_dir, "ray-start.log"), "rb") as f:
                raise RuntimeError(f.read().decode(errors="replace")[-4000:])
        time.sleep(0.5)
    return head


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
