# The HTTP gateway in a container:
#   docker build -t manifold .
#   docker run -p 8765:8765 -v $PWD/manifold.yaml:/config/manifold.yaml -e MANIFOLD_API_TOKEN=... manifold
# Inside a container the gateway must listen beyond loopback, so set MANIFOLD_API_TOKEN:
# without a token the management API answers loopback clients only.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres]"

FROM python:3.11-slim
RUN useradd --create-home manifold
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config.example.yaml /config/manifold.yaml
USER manifold
ENV MANIFOLD_DB=sqlite+aiosqlite:////home/manifold/manifold.db
EXPOSE 8765
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz')"
ENTRYPOINT ["manifold", "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "8765"]
CMD ["--config", "/config/manifold.yaml"]
