# The payments API. A first version: one stage, the dependencies from PyPI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
COPY payments/ payments/
COPY sql/ sql/
RUN pip install --no-cache-dir .
COPY openapi.yaml ./

# Run from /app: `python -m payments` then imports the package from /app/payments, which reads
# its migrations from /app/sql and the contract it serves at /openapi.yaml and /docs from
# /app/openapi.yaml (the installed copy would look for both beside site-packages, where the
# wheel does not put them). tests/unit/test_dockerfile.py checks that every file the package
# reads is copied where it looks.
RUN useradd --system --create-home --home-dir /home/payments --shell /usr/sbin/nologin payments \
 && mkdir -p /app/.data \
 && chown payments:payments /app/.data
USER payments

ENV HOST=0.0.0.0 \
    PORT=8000

EXPOSE 8000

# Migrates, then serves. `python -m payments run` also creates the seed users.
CMD ["python", "-m", "payments", "serve"]
