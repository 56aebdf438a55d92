"""Load test of the cloud server: well-behaved edges with and without hostile clients.

Starts `python -m realrun.cloud.server --synthetic-target --profile P` on loopback (seeded
logits, the profile's target latency: no model needed), then runs two phases of
`--duration-s` each: the well-behaved edges alone, then the same edges while a separate
attacker process runs issue 17's attacks from their own loopback addresses (127.0.0.0/8 is
all loopback on Linux, so each address is another client to the server):

- hoard: open sessions and never close them (2 addresses);
- out of order: 80 uploads at once with a future `seq`, again every second;
- slowloris: up to 1,500 connections sending half a request line and headers;
- big bodies: 150 concurrent 4 MB link probes (from 3 addresses), a few waves;
- droppers: requests whose client hangs up halfway through the body.

Each edge (its own address, its own httpx connections, as realrun.edge.client) loops: open a
session (32-token prompt), 12 rounds of a numbered upload of 2 drafts then a numbered verify
carrying 2 more (a 4-token NAV), 10 ms of "drafting" between rounds, close. Reported: the
verify round trips' p50/p95/p99 per phase and their ratio, the edges' 5xx and lost sessions
(a refused or failed request on a session the edge opened), what the attackers got (status
counts), and the server's resident memory (VmRSS sampled every 0.2 s: start, peak per
phase). Goal (issue 17): p99 under attack within 2x of the attack-free p99, zero 5xx and
zero lost sessions for the edges, memory bounded. Loopback only; every count and time is
bounded, and a watchdog ends the run (and the server) after 3 phases' time + 60 s.

    python benchmarks/load_cloud.py [--edges 8] [--duration-s 10] [--profile P]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from realrun.edge.client import CloudClient, CloudError
from realrun.protocol import CONTENT_TYPE, encode

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "scenarios" / "profiles" / "default.json"
HOST = "127.0.0.1"
PROMPT = list(range(100, 132))
ROUNDS = 12
THINK_S = 0.010
DROPPED_HEAD = (b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                b"Content-Length: 1000\r\n\r\n")  # fmt: skip
MAX_SLOWLORIS_ATTEMPTS = 3000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """The process's resident memory (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------ well-behaved edges


class EdgeStats:
    """What the edges saw (thread-safe appends)."""

    def __init__(self) -> None:
        self.verify_s: list[float] = []
        self.status: collections.Counter[int] = collections.Counter()
        self.lost = 0
        self.sessions = 0
        self.transport_errors = 0
        self.lock = threading.Lock()


def edge(url: str, address: str, deadline: float, stats: EdgeStats) -> None:
    """One well-behaved edge: sessions of ROUNDS NAVs until the deadline."""
    transport = httpx.HTTPTransport(local_address=address)
    with CloudClient(url, timeout=60.0, transport=transport) as cloud:
        while time.monotonic() < deadline:
            try:
                sid = cloud.open(PROMPT)["session"]
            except (CloudError, httpx.HTTPError) as exc:
                with stats.lock:
                    stats.status[getattr(exc, "status", 0)] += 1
                    stats.lost += 1
                time.sleep(0.1)
                continue
            ok = run_session(cloud, sid, stats)
            with stats.lock:
                stats.sessions += 1
                stats.lost += 0 if ok else 1


def run_session(cloud: CloudClient, sid: str, stats: EdgeStats) -> bool:
    """ROUNDS numbered upload + verify pairs, then close; False if any request failed."""
    seq = 0
    try:
        for r in range(ROUNDS):
            time.sleep(THINK_S)
            cloud.upload(sid, [r % 97, (r + 1) % 97], seq=seq)
            start = time.perf_counter()
            cloud.verify(sid, 4, [(r + 2) % 97, (r + 3) % 97], seq=seq + 1)
            elapsed = time.perf_counter() - start
            seq += 2
            with stats.lock:
                stats.verify_s.append(elapsed)
                stats.status[200] += 2
        cloud.close(sid, seq=seq)
        return True
    except CloudError as exc:
        with stats.lock:
            stats.status[exc.status] += 1
        return False
    except httpx.HTTPError:
        with stats.lock:
            stats.transport_errors += 1
        return False


def run_edges(url: str, n: int, duration_s: float) -> EdgeStats:
    stats = EdgeStats()
    deadline = time.monotonic() + duration_s
    threads = [
        threading.Thread(target=edge, args=(url, f"127.0.2.{i + 1}", deadline, stats))
        for i in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 60)
    return stats


# ------------------------------------------------------------------------ attackers


def label(status: int) -> str:
    """A status for the attackers' counts (0: the connection was refused or cut)."""
    return str(status) if status else "cut"


async def http(addr: str, port: int, path: str, body: bytes) -> int:
    """One POST from `addr` (Connection: close): the status, 0 if the connection failed."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(addr, 0))
    except OSError:
        return 0
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    try:
        writer.write(head + body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 40)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (TimeoutError, OSError, ValueError, IndexError):
        return 0
    finally:
        writer.close()


async def open_session(addr: str, port: int) -> str | None:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(addr, 0))
    body = encode({"prompt": PROMPT})
    head = (f"POST /v1/open HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    writer.write(head.encode() + body)
    data = await reader.read()
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        return None
    import msgpack  # the answer's body (msgpack comes with the realrun extra)

    return str(msgpack.unpackb(payload, raw=False)["session"])


async def hoard(port: int, addr: str, deadline: float, counts: collections.Counter) -> None:
    while time.monotonic() < deadline:
        sid = await open_session(addr, port)
        counts["hoard 200" if sid else "hoard refused"] += 1
        await asyncio.sleep(0.05 if sid else 0.5)


async def out_of_order(port: int, addr: str, deadline: float, counts: collections.Counter) -> None:
    sid = await open_session(addr, port)
    if sid is None:
        return
    body = encode({"session": sid, "tokens": [5], "seq": 40})
    pending: set[asyncio.Task[int]] = set()
    while time.monotonic() < deadline:
        wave = {asyncio.create_task(http(addr, port, "/v1/upload", body)) for _ in range(80)}
        pending |= wave
        await asyncio.sleep(1.0)
        for task in [t for t in pending if t.done()]:
            counts[f"out-of-order {label(task.result())}"] += 1
            pending.discard(task)
    for task in pending:
        task.cancel()


async def slowloris(
    port: int, addrs: list[str], deadline: float, counts: collections.Counter
) -> None:
    held: list[asyncio.StreamWriter] = []
    attempts = 0
    while time.monotonic() < deadline and attempts < MAX_SLOWLORIS_ATTEMPTS:
        for _ in range(min(1500 - len(held), MAX_SLOWLORIS_ATTEMPTS - attempts)):
            attempts += 1
            try:
                addr = addrs[attempts % len(addrs)]
                _, writer = await asyncio.open_connection(HOST, port, local_addr=(addr, 0))
                writer.write(b"POST /v1/open HTTP/1.1\r\nHost: x\r\n")
                held.append(writer)
            except OSError:
                counts["slowloris connect failed"] += 1
        await asyncio.sleep(1.0)
        alive = [w for w in held if not w.is_closing() and not w.transport.is_closing()]
        counts["slowloris closed by server"] += len(held) - len(alive)
        held = alive
    counts["slowloris attempts"] = attempts
    for writer in held:
        writer.close()


async def big_bodies(
    port: int, addrs: list[str], deadline: float, counts: collections.Counter
) -> None:
    body = encode({"pad": b"\x00" * (4_000_000 - 64)})
    waves = 0
    while time.monotonic() < deadline and waves < 3:
        waves += 1
        tasks = [http(addrs[i % len(addrs)], port, "/v1/probe", body) for i in range(150)]
        for status in await asyncio.gather(*tasks):
            counts[f"big-body {label(status)}"] += 1
        await asyncio.sleep(1.0)


async def droppers(port: int, addr: str, deadline: float, counts: collections.Counter) -> None:
    n = 0
    while time.monotonic() < deadline and n < 400:
        n += 1
        try:
            _, writer = await asyncio.open_connection(HOST, port, local_addr=(addr, 0))
            writer.write(DROPPED_HEAD + b"\x00" * 10)
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.close()
            counts["dropped"] += 1
        except OSError:
            counts["dropper connect failed"] += 1
        await asyncio.sleep(0.03)


async def attack(port: int, duration_s: float) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + duration_s
    await asyncio.gather(
        hoard(port, "127.0.1.1", deadline, counts),
        hoard(port, "127.0.1.2", deadline, counts),
        out_of_order(port, "127.0.1.3", deadline, counts),
        slowloris(port, [f"127.0.1.{i}" for i in range(10, 14)], deadline, counts),
        big_bodies(port, ["127.0.1.20", "127.0.1.21", "127.0.1.22"], deadline, counts),
        droppers(port, "127.0.1.30", deadline, counts),
    )
    return dict(counts)


# ------------------------------------------------------------------------ the run


def percentiles_ms(samples: list[float]) -> tuple[float, float, float]:
    if not samples:
        return (float("nan"),) * 3
    p50, p95, p99 = np.percentile(np.asarray(samples) * 1e3, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def start_server(port: int, profile: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "realrun.cloud.server", "--synthetic-target", "--profile",
               str(profile), "--host", HOST, "--port", str(port)]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{HOST}:{port}/v1/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
        if process.poll() is not None:
            break
    process.kill()
    raise SystemExit(f"the server did not start; see {log}")


class RssSampler(threading.Thread):
    """The server's VmRSS every 0.2 s; `peak()` since the last `reset()`."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.samples.append(rss_mb(self.pid))
            except OSError:
                return

    def reset(self) -> None:
        self.samples = []

    def peak(self) -> float:
        return max(self.samples, default=float("nan"))


def attacker_process(port: int, duration_s: float) -> subprocess.Popen[bytes]:
    code = f"import asyncio, json, sys; sys.path.insert(0, {str(REPO)!r}); " \
           f"from benchmarks.load_cloud import attack; " \
           f"print(json.dumps(asyncio.run(attack({port}, {duration_s}))))"  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def report(name: str, stats: EdgeStats, rss_peak: float) -> tuple[float, float, float]:
    p50, p95, p99 = percentiles_ms(stats.verify_s)
    fives = sum(c for s, c in stats.status.items() if s >= 500)
    print(f"{name:14s} {len(stats.verify_s):6d} {p50:8.1f} {p95:8.1f} {p99:8.1f} "
          f"{fives:4d} {stats.lost:5d} {stats.transport_errors:5d} {stats.sessions:8d} "
          f"{rss_peak:9.0f}")  # fmt: skip
    return p50, p95, p99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--profile", type=Path, default=PROFILE)
    args = parser.parse_args()
    if not 1 <= args.edges <= 64 or not 1 <= args.duration_s <= 120:
        parser.error("--edges must be in [1, 64] and --duration-s in [1, 120]")
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"load_cloud_server_{port}.log"
    server = start_server(port, args.profile, log)
    watchdog = threading.Timer(
        3 * args.duration_s + 60, lambda: os.killpg(server.pid, signal.SIGKILL)
    )
    watchdog.daemon = True
    watchdog.start()
    url = f"http://{HOST}:{port}"
    sampler = RssSampler(server.pid)
    sampler.start()
    try:
        start_rss = rss_mb(server.pid)
        print(f"server: synthetic target, {args.profile.name} timing, default limits; "
              f"{args.edges} edges x {args.duration_s:g} s per phase; RSS at start "
              f"{start_rss:.0f} MiB")  # fmt: skip
        print(f"{'phase':14s} {'NAVs':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} "
              f"{'5xx':>4s} {'lost':>5s} {'conn':>5s} {'sessions':>8s} "
              f"{'peak RSS':>9s}")  # fmt: skip
        calm = run_edges(url, args.edges, args.duration_s)
        base = report("no attack", calm, sampler.peak())
        sampler.reset()
        attackers = attacker_process(port, args.duration_s)
        time.sleep(0.5)  # the attacks are under way
        hostile = run_edges(url, args.edges, args.duration_s)
        under = report("under attack", hostile, sampler.peak())
        out, _ = attackers.communicate(timeout=args.duration_s + 60)
        time.sleep(1.0)
        end_rss = rss_mb(server.pid)
        health = httpx.get(f"{url}/v1/health", timeout=5)
        ratio = under[2] / base[2]
        fives = sum(c for s, c in [*calm.status.items(), *hostile.status.items()] if s >= 500)
        lost = calm.lost + hostile.lost
        print(f"p99 under attack / without: {ratio:.2f} (goal <= 2); edges' 5xx: {fives}; "
              f"lost sessions: {lost}; RSS after: {end_rss:.0f} MiB")  # fmt: skip
        print("attackers got:", json.dumps(json.loads(out or b"{}"), sort_keys=True))
        import msgpack  # health's body (the realrun extra)

        print("server health:", {k: v for k, v in msgpack.unpackb(health.content).items()
                                 if k in ("sessions", "expired_sessions")})  # fmt: skip
        verdict = ratio <= 2 and fives == 0 and lost == 0
        print("goal met" if verdict else "goal NOT met")
        return 0 if verdict else 1
    finally:
        sampler.stop.set()
        watchdog.cancel()
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
