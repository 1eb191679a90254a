"""A vLLM-shaped metrics exporter: the vllm:* series a pool's pods would export, at a load the test sets.

The test bed's pods are fake (KWOK), so nothing serves requests; this stands in for the whole pool's
/metrics on a 127.0.0.1 port that Prometheus scrapes with pool/namespace labels from its static config.

Requests "finish" at `arrival_rate` per second (steadily, so the measured rate is the set rate); each
one's inference time is drawn from an exponential with mean `service_time` on a golden-ratio sequence
(quasi-random, so a 30 s window's sample mean is within a few % of the mean and its CV close to 1).
Queue wait and prefill are constants. The running gauge follows Little's law (rate x service time).

    python e2e/vllm_exporter.py --port 18000 --rate 4 --service-time 2
"""

from __future__ import annotations

import argparse
import math
import threading
import time

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_wsgi_server

from exposition import serve_exposition, stop_server

LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # vLLM's request_latency_buckets
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0]  # vLLM's inter-token latency buckets (vllm/v1/metrics/buckets.py in 0.33)
TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]  # 1-2-5 up to max_model_len
GOLDEN = (math.sqrt(5) - 1) / 2
BLOCK_SIZE = 16  # vLLM's default KV block size (tokens per block)


FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM 0.33 pre-creates every child
REJECTION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")


class VllmSeries:
    """vLLM's series for one engine, with the names, labels and buckets `vllm serve` 0.33 exports.

    Families and label children as in vLLM 0.33.0's vllm/v1/metrics/loggers.py (tests/data/vllm-0.33.0 holds
    that release's exposition): every family has model_name and engine, except admission_rejections
    (model_name and reason); request_success has one child per finished_reason from the start.
    """

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str], per_pod: bool = False):
        names = tuple(labels)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, names, buckets=buckets, registry=registry).labels(**labels)

        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          (*names, "finished_reason"), registry=registry)
        self.finished_by_reason = {r: success.labels(**labels, finished_reason=r) for r in FINISHED_REASONS}
        self.success = self.finished_by_reason["stop"]
        self.aborted = self.finished_by_reason["abort"]  # vLLM's reason for a cut-off request
        no_engine = {k: v for k, v in labels.items() if k != "engine"}
        rejections = Counter("vllm:admission_rejections", "Number of admission attempts rejected by a queue limit, by reason.",
                             (*no_engine, "reason"), registry=registry)
        self.rejected_by_reason = {r: rejections.labels(**no_engine, reason=r) for r in REJECTION_REASONS}
        self.rejections = self.rejected_by_reason["max_num_queued_reqs"]
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.", names,
                                         registry=registry).labels(**labels)
        # per_pod: one running series per pod (label `pod`), as Prometheus has it from each vLLM pod's scrape
        running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                        (*names, "pod") if per_pod else names, registry=registry)
        self.running_by_pod = running if per_pod else None
        self.running = None if per_pod else running.labels(**labels)
        self._labels = labels
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", names,
                             registry=registry).labels(**labels)
        self.inference = histogram("vllm:request_inference_time_seconds", "RUNNING phase time.", LATENCY_BUCKETS)
        self.queue = histogram("vllm:request_queue_time_seconds", "WAITING phase time.", LATENCY_BUCKETS)
        self.prefill = histogram("vllm:request_prefill_time_seconds", "PREFILL phase time.", LATENCY_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End to end latency.", LATENCY_BUCKETS)
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.prompt_tokens = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS)
        self.output_tokens = histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                                       TOKEN_BUCKETS)
        # KV pressure, as vLLM 0.33 exports it (vllm/v1/metrics/loggers.py): kv_cache_usage_perc is a 0-1
        # fraction per engine, num_preemptions a counter per engine (pre-created at 0), and cache_config_info
        # a gauge at 1 whose labels are CacheConfig's attributes as strings plus engine, without model_name
        # (CacheConfig.metrics_info, vllm/config/cache.py; set once the cache is sized)
        pod = ("pod",) if per_pod else ()
        self.kv_usage_family = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                                     (*names, *pod), registry=registry)
        self.preemptions = Counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", names,
                                   registry=registry).labels(**labels)
        self.cache_config = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                  (*(k for k in names if k != "model_name"), *pod, "block_size", "cache_dtype",
                                   "enable_prefix_caching", "gpu_memory_utilization", "num_cpu_blocks", "num_gpu_blocks"),
                                  registry=registry)
        self._per_pod = per_pod

    def pod_running(self, pod: str, value: float | None) -> None:
        """Set one pod's running series (per_pod), or drop it (None) once the pod is gone."""
        if value is None:
            try:
                self.running_by_pod.remove(*self._labels.values(), pod)
            except KeyError:
                pass
        else:
            self.running_by_pod.labels(**self._labels, pod=pod).set(value)

    def kv(self, usage: float | None, num_gpu_blocks: int | None = None, pod: str | None = None) -> None:
        """One engine's KV usage (0-1) and, once its cache is sized, its cache_config_info; None drops them."""
        engine = {k: v for k, v in self._labels.items() if k != "model_name"}
        where = {**self._labels, **({"pod": pod} if self._per_pod else {})}
        config = {**engine, **({"pod": pod} if self._per_pod else {}), "block_size": str(BLOCK_SIZE),
                  "cache_dtype": "auto", "enable_prefix_caching": "True", "gpu_memory_utilization": "0.9",
                  "num_cpu_blocks": "None", "num_gpu_blocks": str(num_gpu_blocks)}
        if usage is None:
            for family, labels in ((self.kv_usage_family, where), (self.cache_config, config)):
                try:
                    family.remove(*labels.values())
                except KeyError:
                    pass
            return
        self.kv_usage_family.labels(**where).set(usage)
        if num_gpu_blocks is not None:
            self.cache_config.labels(**config).set(1)

    def finished(self, wait: float, inference: float, prefill: float, reason: str = "stop", tokens: int = 100,
                 token_time: float | None = None, prompt_tokens: int = 0) -> None:
        """One finished request, in every histogram, as vLLM records it (the inter-token latency once per
        generated token after the first, at `token_time` seconds each, when given)."""
        if token_time is not None:
            for _ in range(max(tokens - 1, 0)):
                self.itl.observe(token_time)
        self.prompt_tokens.observe(prompt_tokens)
        self.output_tokens.observe(tokens)
        self.inference.observe(inference)
        self.queue.observe(wait)
        self.prefill.observe(prefill)
        self.ttft.observe(wait + prefill)
        self.e2e.observe(wait + inference)
        self.finished_by_reason[reason].inc()
        self.generation_tokens.inc(tokens)


EXPOSITIONS = ("negotiate", "unescaped")


def serve(registry: CollectorRegistry, host: str, port: int, exposition: str = "negotiate"):
    """Serve the registry's /metrics on host:port (0: any free port) in a daemon thread.

    negotiate: as vLLM does. vLLM mounts prometheus_client.make_asgi_app at /metrics
    (vllm/entrypoints/openai/api_server.py); its Accept-header negotiation (prometheus_client's
    choose_encoder, shared with make_wsgi_app, which serves here) answers a Prometheus 2.x scrape with
    OpenMetrics and escaping=underscores from prometheus_client 0.23 on, so Prometheus stores vllm_*.
    unescaped: always the classic text format, which keeps vllm:* (what an image with an older
    prometheus_client ends up with in Prometheus 2.x, and what Prometheus 3 stores).
    """
    if exposition not in EXPOSITIONS:
        raise ValueError(f"exposition must be one of {EXPOSITIONS}, got {exposition!r}")
    if exposition == "negotiate":
        server, _ = start_wsgi_server(port, host, registry)
        return server

    return serve_exposition(lambda path: generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4, host, port)


class VllmExporter:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, model: str = "test-model", tick: float = 0.1,
                 exposition: str = "negotiate"):
        if not host.startswith("127."):
            raise ValueError("the exporter listens on loopback only")
        self.host, self.port, self.tick, self.exposition = host, port, tick, exposition
        self.arrival_rate = 0.0
        self.service_time = 1.0
        self.queue_wait = 0.0
        self.prefill_time = 0.05
        self.waiting = 0.0
        self._credit = 0.0
        self.rejection_rate = 0.0
        self._rejected_credit = 0.0
        self._k = 0
        self.wait_for = None  # optional (unix time, request number) -> queue wait, for per-window SLO tests
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server = self._ticker = None

        self.registry = CollectorRegistry()
        self.series = VllmSeries(self.registry, {"model_name": model, "engine": "0"})

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def set_load(self, arrival_rate: float, service_time: float, queue_wait: float = 0.0,
                 prefill_time: float = 0.05, waiting: float = 0.0, rejection_rate: float = 0.0) -> None:
        """The load to export from now on: `arrival_rate` requests/s admitted and finished, and
        `rejection_rate` more refused with a 503 (vllm:admission_rejections_total)."""
        with self._lock:
            self.rejection_rate = rejection_rate
            self.arrival_rate, self.service_time = arrival_rate, service_time
            self.queue_wait, self.prefill_time, self.waiting = queue_wait, prefill_time, waiting
            self.series.running.set(arrival_rate * service_time)
            self.series.waiting.set(waiting)

    def _finish_one(self) -> None:
        self._k += 1
        u = (self._k * GOLDEN) % 1.0
        inference = -self.service_time * math.log(1.0 - u)
        wait = self.wait_for(time.time(), self._k) if self.wait_for else self.queue_wait
        self.series.finished(wait, inference, self.prefill_time)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            with self._lock:
                self._credit += self.arrival_rate * (now - last)
                self._rejected_credit += self.rejection_rate * (now - last)
                while self._rejected_credit >= 1.0:
                    self._rejected_credit -= 1.0
                    self.series.rejections.inc()
                while self._credit >= 1.0:
                    self._credit -= 1.0
                    self._finish_one()
                self.series.running.set(self.arrival_rate * self.service_time)
                self.series.waiting.set(self.waiting)
            last = now

    def start(self) -> VllmExporter:
        self._server = serve(self.registry, self.host, self.port, self.exposition)
        self.port = self._server.server_port
        self._stop.clear()
        self._ticker = threading.Thread(target=self._run, name="vllm-exporter", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        """Stop serving: Prometheus's next scrape fails and the pool's series go stale."""
        self._stop.set()
        if self._server:
            stop_server(self._server)
            self._server = None

    def __enter__(self) -> VllmExporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--rate", type=float, default=1.0, help="requests per second")
    parser.add_argument("--service-time", type=float, default=1.0, help="mean seconds a slot is busy per request")
    parser.add_argument("--queue-wait", type=float, default=0.0)
    parser.add_argument("--exposition", choices=EXPOSITIONS, default="negotiate")
    args = parser.parse_args()
    exporter = VllmExporter(port=args.port, exposition=args.exposition).start()
    exporter.set_load(args.rate, args.service_time, args.queue_wait)
    print(f"serving vllm:* metrics on http://{exporter.target}/metrics", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        exporter.stop()


if __name__ == "__main__":
    main()
