"""The `portrait` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from portrait.settings import get_settings
from portrait.challenge import ACTIONS, ChallengeSpec


def _models_build(args: argparse.Namespace) -> int:
    from portrait.modelrepo.build import build_repository
    from portrait.modelrepo.sources import SourceError

    settings = get_settings()
    try:
        summary = build_repository(settings.model_repository, settings.cache_dir, settings.model_mirror)
        if args.int8:
            from portrait.bench import default_testdata
            from portrait.modelrepo.int8 import build_int8

            summary.update(build_int8(settings, args.calibration_root or default_testdata()))
    except (SourceError, FileNotFoundError) as exc:
        print(f"portrait models build: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"portrait models build --int8 needs the `quantize` extra ({exc})", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2 if not args.json else None))
    return 0


def _triton(args: argparse.Namespace) -> int:
    from portrait.triton.server import TritonServer, TritonStartError

    settings = get_settings()
    server = TritonServer(settings.model_repository, http_port=settings.triton_http_port,
                          grpc_port=settings.triton_grpc_port, metrics_port=settings.triton_metrics_port)
    try:
        server.start(timeout_s=settings.triton_startup_timeout_s)
    except TritonStartError as exc:
        print(f"portrait triton: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"ready": True, **server.urls()}), flush=True)
    return server.wait()


def _serve(args: argparse.Namespace) -> int:
    """Settings from the environment, the flags over them; everything is built (and every
    setting checked) before the port opens, and a refusal is one line on stderr."""
    import signal
    import threading

    import uvicorn
    from pydantic import ValidationError

    from portrait.security.keys import KeyConfigError
    from portrait.service import logs
    from portrait.service.app import create_app
    from portrait.service.engine import Engine
    from portrait.settings import Settings, settings_error

    flags = {name: getattr(args, name) for name in ("host", "port", "workers") if getattr(args, name) is not None}
    try:
        settings = Settings(**flags)
    except ValidationError as error:
        print(f"portrait serve: {settings_error(error)}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, native=True)
    log = logging.getLogger("portrait.service")
    try:
        engine = Engine(settings)
    except (KeyConfigError, RuntimeError, ImportError, ValueError, OSError) as error:
        print(f"portrait serve: {error}", file=sys.stderr)
        return 2

    class Server(uvicorn.Server):
        """Readiness turns 503 the moment SIGTERM (or Ctrl-C) arrives, before the listener
        closes; with PORTRAIT_DRAIN_GRACE_S the port stays open that long for load balancers
        to notice, then in-flight work finishes. A second signal stops at once (a second
        Ctrl-C forces the exit). A drain is the normal end of the process: exit status 0,
        where uvicorn would raise the signal again once stopped (143 for SIGTERM)."""

        def handle_exit(self, sig: int, frame) -> None:
            if sig == signal.SIGINT and self.should_exit:
                super().handle_exit(sig, frame)
                return
            if engine.draining:
                self.should_exit = True
                return
            engine.draining = True
            log.info("drain started", extra={"signal": signal.Signals(sig).name, "grace_s": settings.drain_grace_s,
                                             "uploading": engine.uploading, "admitted": engine.admitted})
            if settings.drain_grace_s <= 0:
                self.should_exit = True
                return
            timer = threading.Timer(settings.drain_grace_s, setattr, (self, "should_exit", True))
            timer.daemon = True
            timer.start()

    from portrait.service.sessions import MAX_MESSAGE_BYTES

    config = uvicorn.Config(create_app(settings, engine), host=settings.host, port=settings.port, log_config=None,
                            timeout_graceful_shutdown=int(settings.request_timeout_s), access_log=False,
                            ws_max_size=MAX_MESSAGE_BYTES)
    Server(config).run()
    return 0


def _receipt_verify(args: argparse.Namespace) -> int:
    from portrait.security.receipts import ReceiptError, verify_receipt

    token = sys.stdin.read().strip() if args.receipt == "-" else args.receipt
    try:
        claims = verify_receipt(token, args.public_key.read_bytes())
    except ReceiptError as error:
        print(json.dumps({"valid": False, "code": error.code, "detail": str(error)}))
        return 1
    print(json.dumps({"valid": True, "claims": claims}, indent=None if args.json else 2))
    return 0


def _receipt_public_key(args: argparse.Namespace) -> int:
    from portrait.security.receipts import ReceiptSigner

    key_file = get_settings().receipt_key_file
    if key_file is None:
        print("portrait receipt public-key: set PORTRAIT_RECEIPT_KEY_FILE", file=sys.stderr)
        return 2
    sys.stdout.write(ReceiptSigner(key_file.read_bytes()).public_key_pem().decode())
    return 0


def _actions(text: str) -> list[str]:
    actions = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown action(s) {', '.join(unknown)}; choose from {', '.join(ACTIONS)}")
    return actions


def _offline():
    from portrait.offline import Offline

    return Offline(get_settings())


def _emit(result: dict, as_json: bool) -> int:
    print(json.dumps(result) if as_json else json.dumps(result, indent=2))
    return 0


def _seconds(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("give seconds separated by commas, e.g. 1.2,3.0") from None


def _asked(args: argparse.Namespace) -> ChallengeSpec | None:
    """The challenge the video answers: timed when a schedule is given, else order only."""
    if not args.require:
        if args.schedule:
            raise ValueError("--schedule needs --require")
        return None
    from portrait.security.tokens import TokenError, parse_actions, parse_schedule

    try:
        actions = parse_actions(args.require)
        if args.schedule is None:
            return ChallengeSpec(tuple(actions), mirrored=args.mirrored)
        return ChallengeSpec.timed(actions, parse_schedule(args.schedule, len(actions)), args.mirrored)
    except TokenError as error:
        raise ValueError(str(error)) from None


def _verify(args: argparse.Namespace) -> int:
    return _emit(_offline().verify(args.id_image, args.video, _asked(args)), args.json)


def _compare(args: argparse.Namespace) -> int:
    return _emit(_offline().compare(args.first, args.second), args.json)


def _eval_pairs(args: argparse.Namespace) -> int:
    return _emit(_offline().eval_pairs(args.pairs, args.root, plot=args.plot, scores_csv=args.scores, by=args.by),
                 args.json)


def _eval_liveness(args: argparse.Namespace) -> int:
    return _emit(_offline().eval_liveness(args.list, args.root, args.require, plot=args.plot, by=args.by), args.json)


def _eval_actions(args: argparse.Namespace) -> int:
    return _emit(_offline().eval_actions(args.events, args.root), args.json)


def _eval_challenge(args: argparse.Namespace) -> int:
    return _emit(_offline().eval_challenge(args.root, args.draws, args.seed, args.events), args.json)


def _calibrate(args: argparse.Namespace) -> int:
    if args.synthetic is not None:
        if args.pairs is None or args.same_capture is None or args.liveness is not None or args.actions is not None \
                or args.light is not None:
            raise ValueError("--synthetic takes --pairs (genuine photo pairs) and --same-capture, nothing else")
        return _emit(_offline().calibrate_synthetic(args.synthetic, args.pairs, args.same_capture, args.root,
                                                    args.output), args.json)
    if sum(x is not None for x in (args.pairs, args.liveness, args.actions, args.light)) != 1:
        raise ValueError("give --pairs (match thresholds), --liveness (PAD and continuity), --actions (action "
                         "thresholds), --synthetic (the generated-face check) or --light (the screen light check), "
                         "one of them")
    if args.light is not None:
        from portrait import light_eval

        return _emit(light_eval.calibrate(_offline(), args.root, args.light, args.output), args.json)
    if args.actions is not None:
        from portrait.action_calibration import STARTING_POINT
        from portrait.offline import Offline
        from portrait.pipeline import CALIBRATION, config_from_record

        # The signals a calibration reads do not depend on the action thresholds in force.
        settings = get_settings()
        config = config_from_record(settings.calibration or CALIBRATION, detect_every=settings.video_detect_every,
                                    liveness=STARTING_POINT)
        offline = Offline(settings, config=config)
        return _emit(offline.calibrate_actions(args.actions, args.root, args.output), args.json)
    if args.liveness is not None:
        return _emit(_offline().calibrate_liveness(args.liveness, args.root, args.output), args.json)
    return _emit(_offline().calibrate(args.pairs, args.root, args.far, args.output), args.json)


def _eval_light(args: argparse.Namespace) -> int:
    from portrait import light_eval

    offline = _offline()
    threshold = offline.pipeline.config.light_threshold  # the calibration record in force
    if threshold is None:
        raise ValueError("the calibration record has no light threshold: run portrait calibrate --light first")
    return _emit(light_eval.evaluate(offline, args.root, args.list, threshold, args.seed, args.per_clip, args.draws),
                 args.json)


def _bench(args: argparse.Namespace) -> int:
    from portrait.bench import main_args

    return main_args(args)


def _levels(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("plain", "profile", "in_process", "service")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {', '.join(unknown)}; "
                                         "choose from plain, profile, in_process, service")
    return modes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portrait", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="model repository").add_subparsers(dest="action", required=True)
    build = models.add_parser("build", help="fetch, convert, validate and write the model repository")
    build.add_argument("--json", action="store_true", help="one-line JSON summary")
    build.add_argument("--int8", action="store_true", help="also write the iris model's int8 copy (faster on CPUs "
                       "with VNNI or AMX; needs the `quantize` extra and the calibration media)")
    build.add_argument("--calibration-root", type=Path, default=None,
                       help="folder holding the int8 calibration media (default: the test data, as the tests find it)")
    build.set_defaults(func=_models_build)

    triton = commands.add_parser("triton", help="serve the model repository from the bundled Triton server")
    triton.set_defaults(func=_triton)

    serve = commands.add_parser("serve", help="the HTTP service (settings from PORTRAIT_* variables; flags win)")
    serve.add_argument("--host", default=None, help="address to listen on (PORTRAIT_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (PORTRAIT_PORT, default 8080)")
    serve.add_argument("--workers", type=int, default=None,
                       help="requests processed at once: pipeline threads in this process (PORTRAIT_WORKERS, default 8)")
    serve.set_defaults(func=_serve)

    receipt = commands.add_parser("receipt", help="signed receipts").add_subparsers(dest="action", required=True)
    check = receipt.add_parser("verify", help="check a receipt's signature; print its claims (exit 1 if invalid)")
    check.add_argument("receipt", help="the receipt token, or - to read it from standard input")
    check.add_argument("--public-key", type=Path, required=True, help="the service's Ed25519 public key (PEM)")
    check.add_argument("--json", action="store_true", help="one line of JSON")
    check.set_defaults(func=_receipt_verify)
    public = receipt.add_parser("public-key", help="print the public key of PORTRAIT_RECEIPT_KEY_FILE")
    public.set_defaults(func=_receipt_public_key)

    verify = commands.add_parser("verify", help="ID photo + selfie video -> decision")
    verify.add_argument("--id-image", type=Path, required=True)
    verify.add_argument("--video", type=Path, required=True)
    verify.add_argument("--require", type=_actions, default=[],
                        help="comma-separated actions the video must show, exactly and in this order "
                             f"({', '.join(ACTIONS)})")
    verify.add_argument("--schedule", type=_seconds, default=None,
                        help="seconds after the start of recording at which each prompt was shown; "
                             "with it each action must begin in its window")
    verify.add_argument("--mirrored", action="store_true", help="the video was flipped (front camera preview)")
    verify.add_argument("--json", action="store_true", help="one line of JSON")
    verify.set_defaults(func=_verify)

    compare = commands.add_parser("compare", help="photo vs photo similarity")
    compare.add_argument("first", type=Path)
    compare.add_argument("second", type=Path)
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(func=_compare)

    evaluate = commands.add_parser("eval", help="accuracy on labelled data").add_subparsers(dest="what", required=True)
    pairs = evaluate.add_parser("pairs", help="CSV img_a,img_b,same_person[,fold][,group]: accuracy, TAR at FAR,"
                                " refusals; SFace, dlib and fused")
    pairs.add_argument("--pairs", type=Path, required=True)
    pairs.add_argument("--root", type=Path, required=True)
    pairs.add_argument("--plot", type=Path, default=None, help="write the DET curve to this PNG (extra `plot`)")
    pairs.add_argument("--scores", type=Path, default=None, help="write each pair's scores and decision to this CSV")
    pairs.add_argument("--by", default=None, help="a column of the pairs file (e.g. group): FMR and FNMR per value")
    pairs.add_argument("--json", action="store_true")
    pairs.set_defaults(func=_eval_pairs)
    live = evaluate.add_parser("liveness", help="CSV path,label[,attack,family,source_image]: APCER, BPCER")
    live.add_argument("--list", type=Path, required=True)
    live.add_argument("--root", type=Path, required=True)
    live.add_argument("--require", type=_actions, default=[])
    live.add_argument("--plot", type=Path, default=None,
                      help="write live and attack passive-score distributions with the threshold to this PNG (extra `plot`)")
    live.add_argument("--by", default=None, help="a column (such as family): rates per group, with the generated-face "
                      "threshold recalibrated without the group (leave one out)")
    live.add_argument("--json", action="store_true")
    live.set_defaults(func=_eval_liveness)

    acts = evaluate.add_parser("actions", help="CSV path,action,start_s,end_s (annotated clips): per action type, "
                               "found once / missed / split / merged / extra, and onset errors")
    acts.add_argument("--events", type=Path, required=True)
    acts.add_argument("--root", type=Path, required=True)
    acts.add_argument("--json", action="store_true")
    acts.set_defaults(func=_eval_actions)

    sim = evaluate.add_parser("challenge", help="how many random server challenges each video under ROOT "
                              "would answer if replayed, and the best a crafted recording does")
    sim.add_argument("--root", type=Path, required=True)
    sim.add_argument("--events", type=Path, default=None,
                     help="annotated clips (path,action,start_s,end_s): judge those clips, and simulate genuine "
                          "customers from their durations")
    sim.add_argument("--draws", type=int, default=100_000)
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(func=_eval_challenge)

    lit = evaluate.add_parser("light", help="the screen light check on simulated positives (the list's live clips "
                              "lit by drawn sequences) and every unlit clip under ROOT: APCER, BPCER, and the chance "
                              "that a recording lit for another sequence passes")
    lit.add_argument("--list", type=Path, required=True, help="the dev liveness list (its live clips are lit)")
    lit.add_argument("--root", type=Path, required=True)
    lit.add_argument("--draws", type=int, default=2_000, help="sequences drawn per unlit clip and per positive "
                     "(the defaults give 200,000 wrong-sequence trials and 76,000 unlit ones)")
    lit.add_argument("--per-clip", type=int, default=10, help="lit versions of each live clip")
    lit.add_argument("--seed", type=int, default=1919)
    lit.add_argument("--json", action="store_true")
    lit.set_defaults(func=_eval_light)

    calibrate = commands.add_parser("calibrate", help="match thresholds (SFace, dlib, fused) for a target false-match"
                                    " rate, the fusion's parameters, and whether fusion ships")
    calibrate.add_argument("--pairs", type=Path, default=None, help="CSV img_a,img_b,same_person: match thresholds")
    calibrate.add_argument("--liveness", type=Path, default=None,
                           help="CSV path,label[,attack]: the PAD box map and threshold, and the continuity threshold")
    calibrate.add_argument("--light", type=Path, default=None,
                           help="CSV path,label[,attack]: the screen light check's threshold, on its live clips lit "
                                "by the reflection simulation and every unlit clip under ROOT")
    calibrate.add_argument("--synthetic", type=Path, default=None,
                           help="CSV path,label,attack,family,source_image: the generated-face check's threshold, "
                                "with --pairs (its genuine pairs) and --same-capture")
    calibrate.add_argument("--same-capture", type=Path, default=None,
                           help="CSV img_a,img_b: pairs of --pairs that are one photograph (derived, not genuine)")
    calibrate.add_argument("--actions", type=Path, default=None,
                           help="CSV path,action,start_s,end_s (annotated clips): the action thresholds")
    calibrate.add_argument("--root", type=Path, required=True)
    calibrate.add_argument("--far", type=float, default=1e-3)
    calibrate.add_argument("--output", type=Path, default=None, help="default: the shipped calibration file")
    calibrate.add_argument("--json", action="store_true")
    calibrate.set_defaults(func=_calibrate)

    bench = commands.add_parser("bench", help="verifications/s and latency of the standard workload, in process "
                                "and through the service, beside a plain OpenCV job in the same run")
    bench.add_argument("--id-image", type=Path, default=None, help="default: testdata images/compreface/004_A.jpg")
    bench.add_argument("--video", type=Path, default=None, help="default: testdata videos/replay_pair/real.mp4")
    bench.add_argument("--concurrency", type=_levels, default=[1, 4, 16], help="comma-separated levels (1,4,16)")
    bench.add_argument("--requests", type=int, default=3, help="requests per client at each level")
    bench.add_argument("--quick", action="store_true", help="one request per client at each level (CI)")
    bench.add_argument("--modes", type=_modes, default=["plain", "profile", "in_process", "service"],
                       help="comma-separated: plain, profile (CPU s per stage and model, one verification at "
                            "a time), in_process, service")
    bench.add_argument("--url", default=None, help="a running service; default: start `portrait serve` here")
    bench.add_argument("--api-key", default=None, help="API key for --url")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from portrait.backends.base import BackendError
    from portrait.media.errors import MediaError
    from portrait.modelrepo.repository import ModelRepositoryError

    try:
        return args.func(args)
    except MediaError as error:
        print(f"portrait {args.command}: {error.code}: {error}", file=sys.stderr)
    except (ModelRepositoryError, BackendError, ValueError, OSError) as error:
        print(f"portrait {args.command}: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
