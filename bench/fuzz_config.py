"""A longer fuzz run of the configuration promise (issue #13), with time and memory bounds per case.

Each case is a mutation of a shipped file or of the reference file (testkit/config_fuzz.py), plus the targeted
inputs of tests/unit/test_config_robust.py's classes; each runs `check` (and, when accepted, `compile` of every
site) in a forked child, which must keep the promise, answer within --max-seconds and stay under --max-mb of
resident memory. Prints how many cases it tried and how many broke the promise, by kind, and keeps each
breaking input under --keep.

    .venv/bin/python bench/fuzz_config.py --cases 3000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from testkit.config_fuzz import MAX_NASTY_LINES, broken_promises, dump, mutate_doc, mutate_text, seed_docs  # noqa: E402


def run_case(path: str, max_seconds: float) -> tuple[list[str], float, float]:
    """broken_promises(path) in a child process; with the child's wall time and peak memory (MB)."""
    read, write = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: one case, its answer down the pipe
        os.close(read)
        signal.alarm(int(max_seconds * 3) + 1)  # a hang still ends; the parent reports it from the time
        try:
            broken = broken_promises(path)
        except BaseException as exc:  # noqa: BLE001
            broken = [f"the harness itself raised {exc!r}"]
        os.write(write, "\0".join(broken).encode("utf-8", "replace"))
        os._exit(0)
    os.close(write)
    chunks = []
    while True:
        data = os.read(read, 1 << 16)
        if not data:
            break
        chunks.append(data)
    os.close(read)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.monotonic() - t0
    text = b"".join(chunks).decode()
    broken = [b for b in text.split("\0") if b]
    if os.WIFSIGNALED(status):
        broken.append(f"check died of signal {os.WTERMSIG(status)}")
    return broken, elapsed, usage.ru_maxrss / 1024


def judge(path: str, case: str, args: argparse.Namespace) -> tuple[list[str], float, float]:
    """The case written to `path` and run: what broke the promise (also its time and memory bounds)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(case)
    broken, elapsed, mb = run_case(path, args.max_seconds)
    if elapsed > args.max_seconds:
        broken.append(f"took {elapsed:.1f} s")
    if mb > args.max_mb:
        broken.append(f"used {mb:.0f} MB")
    return broken, elapsed, mb


def heavy_cases(work: str) -> dict[str, str]:
    """The inputs of the issue's classes that cost the most, at the size the promise names (up to 10 MB)."""
    from testkit.config_fuzz import GOOD

    with open(os.path.join(ROOT, "topologies", "routes.yaml")) as fh:
        routes_head = fh.read().split("routes:")[0] + "routes:\n"
    out = {
        "10 MB of unknown keys": "version: 1\n" + "".join(f"k{i}: {i % 10}\n" for i in range(1_000_000)),
        "10 MB of duplicate keys": "version: 1\n" + "k: 1\n" * 2_000_000,
        "an alias bomb": "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9 if i else ['x'] * 9)}]\n"
                                 for i in range(9)),
        "nesting 100,000 deep": "sites: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "nesting 5,000,000 deep (10 MB)": "sites: " + "[" * 5_000_000 + "]" * 5_000_000 + "\n",
        "10,000 routes": routes_head + "".join(
            f"  - {{name: r{i}, match: {{proto: tcp, dst_port: {1 + i}, from_site: onprem, to_site: cloud1}}, "
            f"split: {{direct: 1, via cloud2: 1}}}}\n" for i in range(10_000)),
        "10,000 overlapping routes": routes_head + "".join(
            f"  - {{name: r{i}, match: {{proto: tcp, from_site: onprem, to_site: cloud1}}, split: auto}}\n"
            for i in range(10_000)),
        "4,000 rules in one group": GOOD.replace("ip: 10.0.0.1}", "ip: 10.0.0.1, groups: [web]}")
        + "security_groups:\n  web:\n    ingress:\n" + "".join(
            f"      - {{from: 10.{i // 250}.{i % 250}.0/24, proto: tcp, ports: {1000 + i}, "
            f"action: {'deny' if i % 2 else 'allow'}}}\n" for i in range(4000)),
        "a 10 MB scalar": "version: 1\nsites: '" + "x" * (10 << 20) + "'\n",
        "a 5,000-digit number": "version: 1\nsites: {a: {dpid: " + "9" * 5000 + "}}\n",
    }
    os.symlink("/dev/zero", os.path.join(work, "zero.yaml"))
    os.mkfifo(os.path.join(work, "pipe.yaml"))
    out["an include of /dev/zero (by a link)"] = GOOD + "include: zero.yaml\n"
    out["an include of a FIFO"] = GOOD + "include: pipe.yaml\n"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--max-mb", type=float, default=500.0)
    ap.add_argument("--keep", default="/tmp/cloudweave-fuzz", help="directory for the inputs that broke it")
    args = ap.parse_args()
    import cloudweave.cli  # noqa: F401 - imported once, before the forks: each case pays only its own work
    import cloudweave.flows.compile  # noqa: F401

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a runaway case ends; its peak is still over
    rng = random.Random(args.seed)
    seeds = seed_docs()
    kinds: collections.Counter[str] = collections.Counter()
    slowest = (0.0, "")
    biggest = (0.0, "")
    os.makedirs(args.keep, exist_ok=True)
    work = tempfile.mkdtemp(prefix="cw-fuzz-")
    try:
        print(f"{'heavy input':<36} {'bytes':>10} {'seconds':>8} {'MB':>6}  promise")
        for what, case in heavy_cases(work).items():
            broken, elapsed, mb = judge(os.path.join(work, "heavy.yaml"), case, args)
            for b in broken:
                kinds[f"{what}: {b.strip().splitlines()[-1][:100]}"] += 1
            print(f"{what:<36} {len(case.encode()):>10} {elapsed:>8.2f} {mb:>6.0f}  {'broken' if broken else 'kept'}")
        for _ in range(args.cases):
            _, text, doc = rng.choice(seeds)
            r = rng.random()
            if r < 0.6:
                case = dump(mutate_doc(doc, rng, rng.choice((1, 1, 2, 3))))
            elif r < 0.95:
                case = mutate_text(text, rng)
            else:
                case = text + rng.choice(MAX_NASTY_LINES)
            path = os.path.join(work, "case.yaml")
            broken, elapsed, mb = judge(path, case, args)
            slowest = max(slowest, (elapsed, path))
            biggest = max(biggest, (mb, path))
            for b in broken:
                kind = b.strip().splitlines()[-1][:120]
                kinds[kind] += 1
                if kinds[kind] == 1:
                    shutil.copy(path, os.path.join(args.keep, f"break-{len(kinds)}.yaml"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"fuzz_config: {args.cases} cases, {sum(kinds.values())} broke the promise "
          f"({len(kinds)} kinds); slowest case {slowest[0]:.2f} s, largest {biggest[0]:.0f} MB "
          f"(bounds {args.max_seconds:g} s, {args.max_mb:g} MB)")
    for kind, n in kinds.most_common():
        print(f"  {n:5d}  {kind}")
    if kinds:
        print(f"inputs that broke it: {args.keep}/break-N.yaml")
    print(f"reproduce: .venv/bin/python bench/fuzz_config.py --cases {args.cases} --seed {args.seed}")
    return 1 if kinds else 0


if __name__ == "__main__":
    sys.exit(main())
