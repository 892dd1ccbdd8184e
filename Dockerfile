# One image for every process of the system; docker-compose.yml picks the command.
FROM python:3.13-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY requirements.txt .
# Runtime packages only: requirements.txt ends with a "# Tests and tooling" section (pytest, ruff,
# matplotlib...) that has no business in a production image.
RUN sed '/^# Tests and tooling/,$d' requirements.txt > /tmp/runtime.txt \
    && pip install -r /tmp/runtime.txt && rm /tmp/runtime.txt

COPY . .
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v 0

RUN useradd --system --uid 1000 app
USER app

EXPOSE 8000
CMD ["gunicorn", "ordering.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
