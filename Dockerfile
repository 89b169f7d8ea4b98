# modelloop's two images, from one build stage (so they share every layer but the last):
#   docker build --target operator -t ghcr.io/modelloop/operator:0.1.0 .    the operator (modelloop-operator)
#   docker build --target runtime  -t ghcr.io/modelloop/runtime:0.1.0 .     trainer (modelloop-train) and
#                                                                            model server (modelloop-serve)
# `make images` builds both with --build-arg BASE=<a Debian bookworm + Python 3.11 image made here>, because
# no registry is reachable where modelloop is developed; elsewhere BASE defaults to python:3.11-slim,
# pinned by digest (refresh: `docker buildx imagetools inspect python:3.11-slim`).
ARG BASE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# The runtime dependency list alone, so that editing anything else in pyproject.toml (dev extras, tool
# settings) keeps the dependency layer below cached: COPY --from is keyed by the file's content.
FROM ${BASE} AS requirements
COPY pyproject.toml /src/
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml','rb'))['project']['dependencies']))" \
      > /requirements.txt

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CERT=/tmp/ca.pem
# Extra CA certificates (PEM) for pip, for builds behind a TLS-inspecting proxy; `make images` passes the
# host's /usr/local/share/ca-certificates. Build stage only: the final images never see them.
ARG EXTRA_CA_CERTS=""
RUN { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_CERTS"; } > /tmp/ca.pem \
 && python3 -m venv /opt/modelloop && /opt/modelloop/bin/pip install -q --upgrade 'pip>=24' 'setuptools>=69' wheel
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN /opt/modelloop/bin/pip install -q -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY operator/ /src/operator/
COPY model-server/ /src/model-server/
RUN /opt/modelloop/bin/pip install -q --no-deps --no-build-isolation /src \
 && find /opt/modelloop -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/modelloop/bin/python -m compileall -q /opt/modelloop/lib
# LightGBM's wheel needs the system's libgomp.so.1, which neither python:3.11-slim nor the minbase image has
# (scikit-learn's and XGBoost's wheels bring their own copy). lib/libgomp.so.1 is scikit-learn's copy, on the
# loader's path (LD_LIBRARY_PATH below): the same file, so the process maps one OpenMP runtime, not two.
RUN cd /opt/modelloop/lib && gomp="$(ls python3*/site-packages/scikit_learn.libs/libgomp-*.so* | head -n1)" \
 && ln -s "$gomp" libgomp.so.1 \
 && LD_LIBRARY_PATH=/opt/modelloop/lib /opt/modelloop/bin/python -c 'import lightgbm, xgboost'

# What both images are: the base and the venv, no compilers, no pip cache, no source tree; a numeric
# non-root user (runAsNonRoot can verify it) with a passwd entry (getpass, and so kopf's identity, look it up).
FROM ${BASE} AS app
COPY --from=build /opt/modelloop /opt/modelloop
RUN echo 'modelloop:x:65532:65532:modelloop:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'modelloop:x:65532:' >> /etc/group
ENV PATH=/opt/modelloop/bin:/usr/local/bin:/usr/bin:/bin PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp TMPDIR=/tmp LD_LIBRARY_PATH=/opt/modelloop/lib
USER 65532:65532

FROM app AS operator
ENTRYPOINT ["modelloop-operator"]

# Last, so that a plain `docker build .` gives the runtime image.
FROM app AS runtime
EXPOSE 8080 8081
CMD ["modelloop-serve"]
