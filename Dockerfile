# One image for every process: web (daphne), run_firehose and run_worker differ only by command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 appview

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# collectstatic reads settings only; this throwaway key (the settings refuse weak ones) is not kept in the image.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    python manage.py collectstatic --noinput --verbosity 0

USER appview
EXPOSE 5002
# Trusts no X-Forwarded-* header: docker-compose.yml adds --proxy-headers (with TRUST_PROXY_HEADERS) for the web
# service, which only its reverse proxy can reach.
CMD ["daphne", "--bind", "0.0.0.0", "--port", "5002", "config.asgi:application"]
