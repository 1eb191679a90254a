"""structlog set-up: one JSON object per line (or readable console lines), for our logs and kopf's alike."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(fmt: str = "json", level: str = "info") -> None:
    """Route structlog and the standard library (kopf, kubernetes) through one renderer on stderr."""
    shared = [
        structlog.contextvars.merge_contextvars,
        _kopf_object,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kopf says "Timer ... succeeded" for every pool on every tick; our decision line says more.
    if root.level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.WARNING)


def _kopf_object(_, __, event_dict):
    """kopf's per-object lines carry the object in the record's `k8s_ref` extra, which structlog drops:
    keep its namespace and name as `namespace` and `pool`, like our own lines (issue 15)."""
    ref = getattr(event_dict.get("_record"), "k8s_ref", None)
    if isinstance(ref, dict):
        event_dict.setdefault("namespace", ref.get("namespace"))
        event_dict.setdefault("pool", ref.get("name"))
    return event_dict


HANDLER_FAILED = ("failed with an exception", "failed temporarily", "failed permanently")


class QuietWarnings:
    """Warning Events on pools, the same object and message at most once per `quiet` seconds, so a
    failure that repeats every tick does not flood Events; best effort (the log line stays)."""

    def __init__(self, quiet: float = 60.0, clock=None, warn=None):
        import threading
        import time

        self.quiet, self._clock, self._warn, self._last = quiet, clock or time.monotonic, warn, {}
        self._lock = threading.Lock()  # the rounds' deciding threads post from several threads

    def post(self, key, body, reason: str, message: str) -> None:
        now, key = self._clock(), (key, message)
        with self._lock:
            if now - self._last.get(key, -self.quiet) < self.quiet:
                return
            self._last = {k: t for k, t in self._last.items() if now - t < self.quiet} | {key: now}
        try:
            if self._warn is not None:
                self._warn(body, reason=reason, message=message[:1024])
            else:
                import kopf

                kopf.warn(body, reason=reason, message=message[:1024])
        except Exception:  # noqa: BLE001 - an Event is best effort (no kopf context here); the log line stays
            pass


class FailureEvents(logging.Handler):
    """A Warning Event on the pool for each of kopf's handler-failure lines (kopf posts log lines as
    Events only with settings.posting.loggers, which would post every tick's success line too), at most
    one per pool and message per `quiet` seconds."""

    def __init__(self, quiet: float = 60.0, clock=None):
        super().__init__(logging.ERROR)
        self.warnings = QuietWarnings(quiet, clock)

    def emit(self, record: logging.LogRecord) -> None:
        ref, message = getattr(record, "k8s_ref", None), record.getMessage()
        if not isinstance(ref, dict) or not any(words in message for words in HANDLER_FAILED):
            return
        body = {"apiVersion": ref.get("apiVersion"), "kind": ref.get("kind"),
                "metadata": {"name": ref.get("name"), "namespace": ref.get("namespace"), "uid": ref.get("uid")}}
        self.warnings.post(ref.get("uid"), body, "HandlerFailed", message)


def post_failures(quiet: float = 60.0) -> FailureEvents:
    """Attach FailureEvents to kopf's per-object logger (once)."""
    objects = logging.getLogger("kopf.objects")
    objects.handlers[:] = [h for h in objects.handlers if not isinstance(h, FailureEvents)]
    handler = FailureEvents(quiet)
    objects.addHandler(handler)
    return handler


def get(name: str = "inferencepool"):
    return structlog.get_logger(name)
