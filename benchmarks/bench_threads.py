"""Pipeline workers against intra-op threads (and any other settings) through the real
service, at one concurrency, in one run: each configuration is a `portrait serve` started
with those settings and driven with the standard workload. Where the default
`PORTRAIT_WORKERS` and `PORTRAIT_INFERENCE_THREADS` come from.

    python benchmarks/bench_threads.py [--concurrency 4] [--requests 2] \
        [--configs "WORKERS=2,INFERENCE_THREADS=1" "WORKERS=4,INFERENCE_THREADS=1" ...]

Each configuration runs `--rounds` times, in turn with the others, so a change of load on a
shared machine falls on all of them; the table gives each round.
"""

from __future__ import annotations

import argparse
import json
import os

from portrait.bench import Service, Workload, default_testdata, machine

DEFAULT_CONFIGS = [f"WORKERS={w},INFERENCE_THREADS={t}" for w in (2, 4) for t in (1, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    args = parser.parse_args()
    testdata = default_testdata()
    workload = Workload(testdata / "images/compreface/004_A.jpg", testdata / "videos/replay_pair/real.mp4")
    id_bytes, video_bytes = workload.load()
    results: dict[str, list[dict]] = {c: [] for c in args.configs}
    for _ in range(args.rounds):
        for config in args.configs:
            env = {f"PORTRAIT_{k.strip()}": v.strip() for k, v in (p.split("=", 1) for p in config.split(","))}
            service = Service(env=env)
            try:
                service.verify(id_bytes, video_bytes)
                level = service.level(args.concurrency, args.concurrency * args.requests, id_bytes, video_bytes)
            finally:
                service.close()
            results[config].append({**level.summary(), "load_average": round(os.getloadavg()[0], 1)})
    print(f"{machine()}; concurrency {args.concurrency}")
    print(f"{'config':<44}{'verif/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'CPU s/verif':>12}{'load':>6}")
    for config, rows in results.items():
        for r in rows:
            print(f"{config:<44}{r['verifications_per_s']:>9}{r['p50_ms']:>8}{r['p95_ms']:>8}"
                  f"{r['cpu_s_per_verification']:>12}{r['load_average']:>6}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
