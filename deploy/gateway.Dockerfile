# The gateway as compose.yaml runs it: the package and the demo model, no test dependencies.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY adapters adapters
COPY protos protos
RUN pip install --no-cache-dir .
COPY models /app/models
EXPOSE 8080 8500
CMD ["gateway", "serve", "--config", "/etc/gateway/gateway.toml"]
