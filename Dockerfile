# One image for every process of the system; docker-compose.yml picks the command.
FROM python:3.13-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY requirements/runtime.txt requirements/runtime.txt
# Runtime packages only (no pytest, ruff, selenium...), each checked against the lock's hashes.
RUN pip install --require-hashes -r requirements/runtime.txt

COPY . .
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v 0

RUN useradd --system --uid 1000 app
USER app

EXPOSE 8000
CMD ["gunicorn", "ordering.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
