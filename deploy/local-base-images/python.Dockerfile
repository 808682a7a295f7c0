# Stand-in for python:3.11-slim (see ../local-base-images.sh): Debian's Python 3.11 as a venv at
# /usr/local, so `python`, `pip` and installed scripts are in /usr/local/bin as in the official image.
ARG BASE
FROM ${BASE}
ENV LANG=C.UTF-8 PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
# Check-Valid-Until: a snapshot mirror serves Release files past their validity date
RUN apt-get -o Acquire::Check-Valid-Until=false update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3.11 python3.11-venv ca-certificates passwd \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /usr/local \
    && python --version && pip --version
CMD ["python3"]
