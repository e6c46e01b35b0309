# The segmenter worker image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY config ./config
COPY streams ./streams
RUN pip install --no-cache-dir .
ENV SEGMENTER_DATA_DIR=/data
VOLUME /data
ENTRYPOINT ["segmenter"]
CMD ["worker"]
