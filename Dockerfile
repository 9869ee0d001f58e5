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
# collectstatic reads settings only; these values exist for that step and are not kept in the image's env.
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput --verbosity 0

USER appview
EXPOSE 5002
CMD ["daphne", "--bind", "0.0.0.0", "--port", "5002", "--proxy-headers", "config.asgi:application"]
