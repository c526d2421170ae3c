"""Model-level figures: build time, ONNX Runtime latency per batch size, Triton round trip
and throughput beside ONNX Runtime direct doing the same work in the same run.

    python benchmarks/bench_models.py [--quick]

Prints a table and a JSON object. Benchmarks are not tests: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from portrait import ort
from portrait.modelrepo import specs
from portrait.modelrepo.build import build_repository, synthetic_batch
from portrait.modelrepo.repository import model_path
from portrait.settings import Settings
from portrait.triton.server import TritonServer


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def _input(spec: specs.ModelSpec, batch: int) -> np.ndarray:
    data = synthetic_batch(spec, batch)
    return data[:, :, :480, :640].copy() if spec is specs.DETECTOR else data


def bench_build(mirror: Path | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        repo, cache = Path(tmp) / "repo", Path(tmp) / "cache"
        start = time.perf_counter()
        build_repository(repo, cache, mirror)
        scratch = time.perf_counter() - start
        start = time.perf_counter()
        build_repository(repo, cache, mirror)
        cached = time.perf_counter() - start
    return {"from_scratch_s": round(scratch, 2), "from_cache_s": round(cached, 3)}


def bench_ort(repository: Path, repeats: int) -> dict[str, dict]:
    table = {}
    for spec in specs.MODELS:
        session = ort.session(model_path(repository, spec.name))
        table[spec.name] = {}
        for batch in (1, 8, 32):
            x = _input(spec, batch)
            session.run(None, {spec.input.name: x})
            times = []
            for _ in range(repeats if batch < 32 else max(3, repeats // 4)):
                start = time.perf_counter()
                session.run(None, {spec.input.name: x})
                times.append(time.perf_counter() - start)
            table[spec.name][batch] = {**_percentiles(times), "items_per_s": round(batch / np.median(times), 1)}
    return table


def bench_triton(repository: Path, repeats: int) -> dict[str, dict]:
    import tritonclient.grpc as grpcclient

    server = TritonServer(repository, http_port=_port(), grpc_port=_port(), metrics_port=_port())
    server.start()
    results = {}
    try:
        for spec in specs.MODELS:
            session = ort.session(model_path(repository, spec.name))

            def via_triton(x, client):
                inp = grpcclient.InferInput(spec.input.name, list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                client.infer(spec.name, [inp])

            client = grpcclient.InferenceServerClient(server.urls()["grpc"])
            one = _input(spec, 1)
            via_triton(one, client)
            rtt, direct = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                via_triton(one, client)
                rtt.append(time.perf_counter() - start)
                start = time.perf_counter()
                session.run(None, {spec.input.name: one})
                direct.append(time.perf_counter() - start)

            x16 = _input(spec, 16)
            calls = max(4, repeats // 4)

            def triton_worker(_):
                c = grpcclient.InferenceServerClient(server.urls()["grpc"])
                for _ in range(calls):
                    via_triton(x16, c)

            def ort_worker(_):
                for _ in range(calls):
                    session.run(None, {spec.input.name: x16})

            throughput = {}
            for name, worker in (("triton", triton_worker), ("ort_direct", ort_worker)):
                start = time.perf_counter()
                with ThreadPoolExecutor(2) as pool:
                    list(pool.map(worker, range(2)))
                throughput[name] = round(2 * calls * 16 / (time.perf_counter() - start), 1)
            results[spec.name] = {
                "batch1_triton": _percentiles(rtt),
                "batch1_ort_direct": _percentiles(direct),
                "batch16_2clients_items_per_s": throughput,
            }
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 10 if args.quick else 30
    settings = Settings()
    report = {"build": bench_build(settings.model_mirror)}
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        build_repository(repository, settings.cache_dir, settings.model_mirror)
        report["onnxruntime"] = bench_ort(repository, repeats)
        report["triton"] = bench_triton(repository, repeats)

    print(f"build: from scratch {report['build']['from_scratch_s']} s, from cache {report['build']['from_cache_s']} s")
    print(f"{'model':<16}{'ORT b1 p50':>12}{'ORT b8 p50':>12}{'ORT b32 p50':>13}"
          f"{'Triton b1 p50':>15}{'ORT b1 p50':>12}{'Triton b16x2':>14}{'ORT b16x2':>11}")
    for spec in specs.MODELS:
        o, t = report["onnxruntime"][spec.name], report["triton"][spec.name]
        print(f"{spec.name:<16}{o[1]['p50_ms']:>10}ms{o[8]['p50_ms']:>10}ms{o[32]['p50_ms']:>11}ms"
              f"{t['batch1_triton']['p50_ms']:>13}ms{t['batch1_ort_direct']['p50_ms']:>10}ms"
              f"{t['batch16_2clients_items_per_s']['triton']:>12}/s{t['batch16_2clients_items_per_s']['ort_direct']:>9}/s")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
