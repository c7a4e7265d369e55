"""The kubemoe MoA router: one OpenAI-compatible endpoint in front of a Mixture-of-Agents pipeline.

Modules, one concern each:

- `config`: the resolved pipeline the router serves (pure pydantic; the renderer writes it to a ConfigMap).
- `prompts`: sandboxed jinja2 prompt templates and how a system prompt merges into a conversation.
- `capacity`: pure stability math (max stable request rate, bottleneck model).
- `errors`: the router's error hierarchy and its OpenAI-style error bodies.
- `upstream`: calls to OpenAI-compatible backends; maps aiohttp/JSON errors into `errors` at one boundary.
- `pipeline`: the MoA algorithm (layers in parallel, quorum, deadline, aggregator stream).
- `metrics`: Prometheus collectors on a per-app registry.
- `request`: the strict request schema (400 naming the field) and the `/openapi.json` document.
- `http1`, `http1_wire`: the lean upstream HTTP/1.1 client (pool; one connection's protocol and parser).
- `auth`, `buckets`: client keys; per-key token buckets (in the process, or shared by a pod's workers).
- `server`: aiohttp app, handlers, limits, playground.
- `process`, `workers`: one serving process (`run_router`, what `main` calls), or several on one port.

The router knows nothing of Kubernetes: it reads a config file and calls URLs.
"""
