# The operator image: `inferencepool run`. Multi-stage so that build tools stay out of the runtime layer.
# Its install step is CI's (`pip install` of this package and its pinned-by-pyproject dependencies).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin inferencepool
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# matplotlib wants a writable config dir; the root filesystem is read-only in the chart.
ENV MPLCONFIGDIR=/tmp/matplotlib PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
USER 10001:10001
EXPOSE 9808
ENTRYPOINT ["inferencepool", "run"]
