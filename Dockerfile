# CIFAR-10 classifier: a Docker Space or any container host.
#   docker build -t cifar-space . && docker run -p 7860:7860 -v cifar-data:/data cifar-space
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    CIFAR_HOME=/data \
    TF_CPP_MIN_LOG_LEVEL=2

# Spaces run containers as uid 1000.
RUN useradd --create-home --uid 1000 user && mkdir -p /data && chown user /data
WORKDIR /home/user/app

COPY --chown=user requirements.txt .
# The default TensorFlow wheel runs on the CPU; no CUDA libraries are installed.
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=user app.py ./
COPY --chown=user cifar ./cifar
COPY --chown=user assets ./assets
COPY --chown=user models ./models

USER 1000
# OpenVINO and NNCF send usage events to Google Analytics by default each time a model is converted
# (every version that serves), forking the process for each; the app calls nobody home. Their documented opt-out.
RUN opt_in_out --opt_out
EXPOSE 7860
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/healthz', timeout=4)"]
CMD ["python", "app.py"]
