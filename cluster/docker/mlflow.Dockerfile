# syntax=docker/dockerfile:1
# The MLflow tracking server for vssflow: the same MLflow as the client pin of pyproject.toml, plus the PostgreSQL
# driver (backend store) and boto3 (S3/MinIO artifact store). Used by cluster/mlflow/docker-compose.yaml and by
# cluster/k8s/templates/50-mlflow.yaml (image mlflow.image of cluster/values.yaml).
#
#   docker build -f cluster/docker/mlflow.Dockerfile -t vssflow-mlflow:3.17.2 cluster/docker
FROM python:3.11-slim-bookworm

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.8

RUN pip install --no-cache-dir --disable-pip-version-check \
        "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" "boto3==${BOTO3_VERSION}" \
 && useradd --create-home --uid 1000 mlflow

USER mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
