# LLM Gateway: the HTTP API (Gunicorn) and the job runner, started by `python3 -m app`.
#   docker build -t llm-gateway .
#   docker run -p 8000:8000 -e OPENAI_API_BASE=http://my-engine:8000/v1 -v llm-gateway-db:/var/lib/llm-gateway llm-gateway
# Every setting is a flag of `python3 -m app` and an environment variable (README, Settings).
FROM python:3.11-slim

# The seed's variables, each with its default; SERVICES_DIR is the seed's mount point.
ENV SERVICE_NAME=LLM_Gateway \
    OPENAI_API_BASE=http://vllm-backend:8000/v1 \
    OPENAI_API_TOKEN=EMPTY \
    HTTP_PORT=8000 \
    CONCURRENCY=2 \
    TIMEOUT=60 \
    SWAGGER_PREFIX= \
    SWAGGER_PATH=document/swagger_llm_gateway.yml \
    SERVICES_DIR=/usr/src/services \
    RESULT_DB_PATH=/var/lib/llm-gateway/results.sqlite \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /usr/src/app

# Dependencies in their own layer: rebuilt only when requirements.txt or the install step change.
COPY requirements.txt ./
COPY scripts/install.sh scripts/install.sh
RUN sh scripts/install.sh

COPY app/ app/
COPY document/ document/
# The shipped services; mount your own folder over /usr/src/services to replace them (watched).
COPY services/ /usr/src/services/

RUN useradd --create-home --uid 10001 --user-group gateway \
    && mkdir -p /var/lib/llm-gateway \
    && chown gateway:gateway /var/lib/llm-gateway
USER gateway

# The job database survives the container.
VOLUME ["/var/lib/llm-gateway"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthcheck' % os.environ.get('HTTP_PORT', '8000'), timeout=4)" || exit 1

CMD ["python3", "-m", "app"]
