"""Decentralised Mixture-of-Agents: one peer per member model, gossiping each query to k neighbours per layer.

No Kubernetes here (import-linter enforces it); `render.peers` writes the objects that run peers in a cluster.
"""
