"""The `portrait` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from portrait.settings import get_settings


def _models_build(args: argparse.Namespace) -> int:
    from portrait.modelrepo.build import build_repository
    from portrait.modelrepo.sources import SourceError

    settings = get_settings()
    try:
        summary = build_repository(settings.model_repository, settings.cache_dir, settings.model_mirror)
    except SourceError as exc:
        print(f"portrait models build: {exc}", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portrait", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="model repository").add_subparsers(dest="action", required=True)
    build = models.add_parser("build", help="fetch, convert, validate and write the model repository")
    build.add_argument("--json", action="store_true", help="one-line JSON summary")
    build.set_defaults(func=_models_build)

    triton = commands.add_parser("triton", help="serve the model repository from the bundled Triton server")
    triton.set_defaults(func=_triton)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
