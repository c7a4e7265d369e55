# The operator and router image: one image, two entrypoints (`kubemoe run`, `kubemoe router`).
#
# Users with Docker: `docker build -t ghcr.io/kubemoe/kubemoe:0.1.0 .` (the default base is the official
# Python image). `make image` builds the same file here without a Docker daemon (buildah), on a Debian
# bookworm base made locally from Debian packages (hack/image), passed as BASE_IMAGE
# (and BUILD_BASE_IMAGE for the build stage).
# BUILD_BASE_IMAGE needs python3 with venv/ensurepip; BASE_IMAGE only python3 (hack/image makes both).
ARG BASE_IMAGE=python:3.11-slim
ARG BUILD_BASE_IMAGE=${BASE_IMAGE}

FROM ${BUILD_BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Unset for a plain build. Behind a TLS-intercepting proxy, mount its CA bundle at build time and
# name it here (hack/image does): it is read by pip in this stage only and never copied into the image.
ARG PIP_CERT
COPY pyproject.toml README.md /src/
COPY operator /src/operator
# A virtualenv under /opt, so the runtime stage copies one directory. pip, setuptools and wheel are removed
# from it afterwards: no installer or build tool stays in the image (pip has compiled the bytecode already,
# which matters because the root filesystem is read-only at run time). kubernetes>=35 ships a second,
# asyncio copy of its generated client (kubernetes/aio, 68 MB with bytecode) that neither kubemoe nor kopf
# imports and that `import kubernetes` does not load; it is dropped.
RUN python3 -m venv /opt/kubemoe \
 && /opt/kubemoe/bin/pip install /src \
 && rm -rf /opt/kubemoe/lib/python3*/site-packages/kubernetes/aio \
 && /opt/kubemoe/bin/python -m pip uninstall -y pip setuptools wheel \
 && rm -rf /opt/kubemoe/bin/pip* /opt/kubemoe/bin/activate* /opt/kubemoe/bin/Activate.ps1

FROM ${BASE_IMAGE}
COPY --from=build /opt/kubemoe /opt/kubemoe
ENV PATH=/opt/kubemoe/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Nothing in the image needs a writable root filesystem: the operator and router write only to /tmp
# (an emptyDir in the chart) and their sockets.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT []
CMD ["kubemoe", "run"]
