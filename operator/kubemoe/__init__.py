"""kubemoe: a Kubernetes-native operator for Mixture-of-Experts models and Mixture-of-Agents pipelines.

Data flows one way, each step a module that can be read alone::

    spec (api) -> plan (planner, pure) -> render (pure) -> apply (controller, SSA) -> observe (status)
"""

__version__ = "0.1.0"
