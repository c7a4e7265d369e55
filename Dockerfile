# The operator and router image (one image, two entrypoints: `kubemoe run`, `kubemoe router`).
# Not built in this repository's CI: its machines have no container runtime.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir . && rm -rf /src
USER 65532:65532
ENTRYPOINT []
CMD ["kubemoe", "run"]
