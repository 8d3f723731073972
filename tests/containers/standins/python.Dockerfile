# Stand-in for python:3.11-slim-bookworm, for the container tests only (no image registry is reachable there).
# Debian's own Python 3.11, with pip (the Dockerfile's builder installs uv with it) and the build machine's CA
# bundle, so that pip and uv inside `docker build` trust the same TLS as the machine itself.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3-pip \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# Debian marks its Python "externally managed"; the official image's pip installs system-wide without a word.
ENV LANG=C.UTF-8 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3.11"]
