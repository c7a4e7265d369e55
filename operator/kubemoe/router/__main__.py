"""`python -m kubemoe.router --config FILE`: the router process (the CLI's `kubemoe router` calls `main`)."""

from __future__ import annotations

import argparse
import logging
import sys

from kubemoe.router.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the config and serve; 2 on a bad config (the pod's log says why)."""
    parser = argparse.ArgumentParser(prog="kubemoe router", description="Serve a MoA pipeline (OpenAI API).")
    parser.add_argument("--config", required=True, help="Router config file (JSON or YAML).")
    parser.add_argument("--host", default="0.0.0.0", help="Address to listen on (default: all).")
    parser.add_argument("--port", type=int, default=8080, help="Port to listen on (default: 8080).")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here so `--help` works without the server's dependencies loaded.
    from kubemoe.router.server import run_router

    try:
        run_router(args.config, host=args.host, port=args.port)
    except ConfigError as exc:
        print(f"kubemoe router: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
