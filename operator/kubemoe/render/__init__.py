"""The renderer: pure functions from (spec, plan) to the Kubernetes manifests that realise them.

Nothing here reads the cluster: the same inputs always give the same objects, which is what makes
server-side apply diffs stable and `kubemoe render` show exactly what the operator would apply.
"""

from kubemoe.render.engine import EngineDialectError
from kubemoe.render.moemodel import model_endpoint, render_moemodel

__all__ = ["EngineDialectError", "model_endpoint", "render_moemodel"]
