# olla from this checkout: docker build -t olla .   (or: docker compose up, see compose.yaml)
# Needs no network beyond the base image's registry and PyPI.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY olla ./olla
COPY twisted ./twisted
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
# twistd's plugin cache is written now, as root: at run time site-packages is not ours to write.
RUN pip install --no-cache-dir --disable-pip-version-check /wheels/*.whl \
    && rm -rf /wheels \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin olla
COPY etc/olla.docker.yaml /etc/olla/olla.yaml

USER olla
WORKDIR /tmp
# Listen on every interface of the container even with a mounted config that says localhost.
ENV OLLA_SERVER_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 40114
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/internal/health' % os.environ.get('OLLA_SERVER_PORT', '40114'), timeout=2)"
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "olla"]
CMD ["--config", "/etc/olla/olla.yaml"]
