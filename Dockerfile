# kard-bridge: a small image running `kard-bridge run` as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 bridge
COPY --from=build /install /usr/local
COPY topics /app/topics
WORKDIR /app
USER 10001
ENV PYTHONUNBUFFERED=1 BRIDGE_METRICS_PORT=9400
EXPOSE 9400
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["kard-bridge"]
CMD ["run"]
