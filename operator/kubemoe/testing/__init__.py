"""Stand-ins for what cannot run on a developer machine, shared by the tests and the demos in `hack/`.

`stub_backend`: an OpenAI-compatible server in place of vLLM (no GPU, no weights here). Nothing in the
operator or the router imports this package.
"""
