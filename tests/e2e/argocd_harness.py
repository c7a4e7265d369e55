"""Plumbing of the Argo CD sync test (test_argocd_sync.py): the tools' paths, processes started in a network
namespace whose only interface is loopback, the forwarder that carries the API server's port into it, and
bare git repositories for `git daemon`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .harness import wait_for

ROOT = Path(__file__).resolve().parents[2]

FORWARD = """
import asyncio, ctypes, os, socket, sys
sys.path.insert(0, sys.argv[3])
from forward import _pipe
libc = ctypes.CDLL(None, use_errno=True)
def setns(path):
    fd = os.open(path, os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns " + path)
    os.close(fd)
home = "/proc/%d/ns/net" % os.getpid()
home_fd = os.open(home, os.O_RDONLY)
setns("/run/netns/" + sys.argv[1])
listener = socket.create_server(("127.0.0.1", int(sys.argv[2])))  # stays in the namespace
if libc.setns(home_fd, 0x40000000) != 0:
    raise OSError(ctypes.get_errno(), "setns back")
async def main():
    async def handle(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    server = await asyncio.start_server(handle, sock=listener)
    print("forwarding", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def tools() -> dict[str, Path]:
    out = subprocess.run(
        [str(ROOT / "hack/tools-observability"), "paths"], check=True, capture_output=True, text=True
    ).stdout
    paths = {k: Path(v) for k, v in (line.split("=", 1) for line in out.split())}
    for key in ("ARGOCD", "ARGOCD_CRDS", "REDIS_SERVER"):
        assert paths[key].exists(), f"{paths[key]} is missing: run `hack/tools-observability install`"
    return paths


class Processes:
    """Processes started in the test's network namespace; stopped by their own pids, logs kept for failures."""

    def __init__(self, netns: str, logs: Path) -> None:
        self.netns, self.logs = netns, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, inside: bool = True
    ) -> None:
        with (self.logs / f"{name}.log").open("wb") as out:
            self.procs[name] = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv] if inside else argv,
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    def log(self, name: str, tail: int = 4000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-tail:]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """A short probe inside the namespace."""
        argv_ = ["ip", "netns", "exec", self.netns, *argv]
        return subprocess.run(argv_, check=False, capture_output=True, text=True, timeout=20)

    def wait(self, name: str, *probe: str, timeout_s: float = 60) -> None:
        def ready() -> bool:
            proc = self.procs[name]
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{self.log(name)}"
            return self.run(*probe).returncode == 0

        try:
            wait_for(f"{name} ready in {self.netns}", ready, timeout_s=timeout_s, every_s=0.5)
        except pytest.fail.Exception as exc:
            pytest.fail(f"{exc}; `{' '.join(probe)}` fails; its log:\n{self.log(name)}")

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)


@contextlib.contextmanager
def loopback_netns() -> Iterator[str]:
    name = f"kmargo-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def listening(port: int) -> tuple[str, ...]:
    return ("bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}")


def git_repository(bare: Path, files: dict[str, Path], *, manifests: bool) -> Path:
    """A bare repository at `bare` holding `files` (path in the repository -> source). `manifests`: each is
    one Kubernetes object, written without its namespace (left to the Application); else copied as it is."""
    work = bare.parent / f"{bare.stem}-work"
    for rel, src in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        if manifests:
            doc = yaml.safe_load(src.read_text())
            doc["metadata"].pop("namespace", None)
            (work / rel).write_text(yaml.safe_dump(doc, sort_keys=False))
        else:
            (work / rel).write_bytes(src.read_bytes())
    git = ["git", "-c", "user.name=kubemoe-tests", "-c", "user.email=tests@kubemoe.invalid", "-C", str(work)]
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "kubemoe"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def head(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "main"], check=True, capture_output=True, text=True
    ).stdout.strip()
