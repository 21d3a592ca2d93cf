"""Two network namespaces joined by an emulated link with delay, loss and cuts, for tests
of an actor and a learner on two hosts. Needs root (CAP_NET_ADMIN) and /dev/net/tun.

This machine's kernel has no netem (``tc qdisc ... netem`` fails), so the link is a small
user-space relay instead of a veth pair: each namespace gets a TUN device
(``10.77.<n>.1/24`` and ``10.77.<n>.2/24``), and the relay process reads every IP packet one
side sends and writes it into the other side after ``delay_ms``, dropping each with
probability ``loss`` and everything while the link is cut. Control the relay on its
stdin: ``cut <seconds>``; it prints ``ready`` once forwarding, and counters at exit.

    link = Link.create(delay_ms=20, loss=0.01)      # namespaces drqv2a_<n>, drqv2b_<n>
    subprocess.Popen(link.exec_in("a", [...]))      # a command inside namespace a
    link.cut(5.0); ...; link.close()                # counters: link.stats()
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def available() -> str:
    """'' when the link can be built here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "no iproute2 'ip' command"
    name = f"drqv2probe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ""


def _tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def relay_main(tag: str, delay_ms: float, loss: float, seed: int) -> int:
    """The relay process: creates both TUN devices, moves them into the namespaces, then
    forwards packets until stdin closes."""
    rnd = random.Random(seed)
    fds, ns = {}, {}
    for side, host in (("a", 1), ("b", 2)):
        dev = f"dq{tag}{side}"
        fds[side] = _tun(dev)
        ns[side] = f"drqv2{side}_{tag}"
        _ip("link", "set", dev, "netns", ns[side])
        _ip("-n", ns[side], "addr", "add", f"10.77.{tag}.{host}/24", "dev", dev)
        _ip("-n", ns[side], "link", "set", dev, "multicast", "on")
        _ip("-n", ns[side], "link", "set", dev, "up")
        _ip("-n", ns[side], "link", "set", "lo", "up")
        _ip("-n", ns[side], "route", "add", "224.0.0.0/4", "dev", dev)
    other = {fds["a"]: fds["b"], fds["b"]: fds["a"]}
    delay = delay_ms / 1000.0
    queue: list[tuple[float, int, int, bytes]] = []
    seq = 0
    cut_until = 0.0
    stats = {"forwarded": 0, "dropped_loss": 0, "dropped_cut": 0, "bytes": 0}
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    watch = [fds["a"], fds["b"], stdin]
    while True:
        now = time.monotonic()
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        readable, _, _ = select.select(watch, [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                line = sys.stdin.readline()
                if not line:
                    print(json.dumps(stats), flush=True)
                    return 0
                cmd = line.split()
                if cmd and cmd[0] == "cut":
                    cut_until = now + float(cmd[1])
                continue
            for _ in range(64):  # drain what is there
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if now < cut_until:
                    stats["dropped_cut"] += 1
                elif rnd.random() < loss:
                    stats["dropped_loss"] += 1
                else:
                    seq += 1
                    heapq.heappush(queue, (now + delay, seq, other[fd], pkt))
                if not select.select([fd], [], [], 0)[0]:
                    break
        while queue and queue[0][0] <= now:
            _, _, out, pkt = heapq.heappop(queue)
            if now < cut_until:  # in flight when the link was cut
                stats["dropped_cut"] += 1
                continue
            try:
                os.write(out, pkt)
                stats["forwarded"] += 1
                stats["bytes"] += len(pkt)
            except OSError:
                pass


@dataclass
class Link:
    tag: str
    proc: subprocess.Popen
    addresses: dict[str, str] = field(default_factory=dict)
    final_stats: dict | None = None

    @classmethod
    def create(cls, delay_ms: float = 20.0, loss: float = 0.01, seed: int = 0) -> Link:
        tag = str(100 + os.getpid() % 150)
        for side in "ab":
            subprocess.run(["ip", "netns", "del", f"drqv2{side}_{tag}"], capture_output=True)
            _ip("netns", "add", f"drqv2{side}_{tag}")
        proc = subprocess.Popen(
            [sys.executable, __file__, tag, str(delay_ms), str(loss), str(seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            raise RuntimeError(f"link relay did not start: {line!r}")
        return cls(tag, proc, {"a": f"10.77.{tag}.1", "b": f"10.77.{tag}.2"})

    def namespace(self, side: str) -> str:
        return f"drqv2{side}_{self.tag}"

    def exec_in(self, side: str, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(side), *cmd]

    def cut(self, seconds: float) -> None:
        self.proc.stdin.write(f"cut {seconds}\n")
        self.proc.stdin.flush()

    def close(self) -> dict:
        if self.final_stats is None:
            try:
                self.proc.stdin.close()
                out = self.proc.stdout.read()
                self.proc.wait(5)
                self.final_stats = json.loads(out.strip().splitlines()[-1]) if out else {}
            except Exception:
                self.proc.kill()
                self.final_stats = {}
            for side in "ab":
                subprocess.run(["ip", "netns", "del", self.namespace(side)],
                               capture_output=True)
        return self.final_stats


if __name__ == "__main__":
    sys.exit(relay_main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))
