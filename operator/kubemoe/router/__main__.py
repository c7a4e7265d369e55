"""`python -m kubemoe.router --config FILE`: the router process (the CLI's `kubemoe router` calls `main`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from kubemoe.router.config import ConfigError

#: Serves `config` on host:port until stopped; raises ConfigError on a bad config.
Serve = Callable[..., None]


def serve_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    what: str,
    serve: Callable[[], Serve],
    workers: bool = False,
) -> int:
    """The command line of a kubemoe serving process (the router, a decentralised peer): parse arguments,
    load the config and serve; 2 on a bad config (the pod's log says why). `serve` returns the server's run
    function, imported only then so that `--help` works without the server's dependencies loaded. `workers`:
    the server also takes `--workers` and `--loop` (the router does)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help=f"{what} config file (JSON or YAML).")
    parser.add_argument("--host", default="0.0.0.0", help="Address to listen on (default: all).")
    parser.add_argument("--port", type=int, default=8080, help="Port to listen on (default: 8080).")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    if workers:
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="Processes sharing the port (SO_REUSEPORT); limits are split among them (default: 1).",
        )
        parser.add_argument(
            "--loop",
            default="auto",
            choices=["auto", "asyncio", "uvloop"],
            help="Event loop (auto: uvloop if installed).",
        )
    args = parser.parse_args(argv)
    if workers and args.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = serve()
    try:
        options = {"workers": args.workers, "loop": args.loop} if workers else {}
        run(args.config, host=args.host, port=args.port, **options)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return 0


def _router() -> Serve:
    from kubemoe.router.process import run_router

    return run_router


def main(argv: list[str] | None = None) -> int:
    return serve_main(
        argv,
        prog="kubemoe router",
        description="Serve a MoA pipeline (OpenAI API).",
        what="Router",
        serve=_router,
        workers=True,
    )


if __name__ == "__main__":
    sys.exit(main())
