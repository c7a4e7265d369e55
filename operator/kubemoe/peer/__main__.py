"""`python -m kubemoe.peer --config FILE`: one decentralised MoA peer (the CLI's `kubemoe peer` calls `main`)."""

from __future__ import annotations

import sys

from kubemoe.router.__main__ import Serve, serve_main


def _peer() -> Serve:
    from kubemoe.peer.server import run_peer

    return run_peer


def main(argv: list[str] | None = None) -> int:
    return serve_main(
        argv, prog="kubemoe peer", description="Serve one decentralised MoA peer.", what="Peer", serve=_peer
    )


if __name__ == "__main__":
    sys.exit(main())
