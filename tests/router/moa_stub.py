"""The router tests' name for the stand-in backend, which lives in `kubemoe.testing.stub_backend` so that
`hack/demo_router.py` imports the same code without editing `sys.path`."""

from kubemoe.testing.stub_backend import HANG_SECONDS, Behavior, StubBackend

__all__ = ["HANG_SECONDS", "Behavior", "StubBackend"]
