"""KV pressure and load-dependent service on the test bed: e2e/fleet.py models them as vLLM exports them
(vllm:kv_cache_usage_perc per engine, vllm:num_preemptions_total, vllm:cache_config_info with the cache's
size as labels, vllm:inter_token_latency_seconds stretched by the running requests), a real Prometheus
scrapes them (escaped, as a 2.x scrape of a recent prometheus_client stores them), and the operator sizes
with what the KV cache holds, not with slotsPerReplica.

8 slots per replica but KV for 2 requests of 1100 tokens: sized on 8 slots the load (2/s x ~1 s) fits
one replica; a replica really runs 2 at once, so the operator must read the cache's size, say
`2 effective slots per replica (kv_cache)` and order more.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import Fleet  # noqa: E402
from test_operator import (H100, crd, erlang_c_replicas, get_pool, operator, pool_manifest,  # noqa: E402,F401
                           replicas, wait_for_full_window)

POOL, SLOTS, KV_SEQUENCES, RATE, SERVICE = "kvfull", 8, 2, 2.0, 1.0


def test_the_operator_sizes_with_the_requests_the_kv_cache_holds(cluster, namespace, operator, prometheus):  # noqa: F811
    fleet = Fleet(cluster.api_client(), namespace, POOL, SLOTS, lambda t: RATE, SERVICE, seed=5,
                  token_time=lambda n: 0.01 * (1 + 0.5 * (n - 1)), kv_sequences=KV_SEQUENCES,
                  prompt_tokens=1000, output_tokens=100)
    try:
        fleet.start()
        prom = prometheus(scrape_configs=[{"job_name": "vllm", "static_configs": [{"targets": [fleet.target]}]}])
        operator(prom.url)
        cluster.apply(pool_manifest(POOL, minReplicas=1, maxReplicas=6, slotsPerReplica=SLOTS), namespace=namespace)
        cluster.wait_until(lambda: fleet.ready >= 1, timeout=120, desc="a Ready pod")
        wait_for_full_window(prom, POOL)

        # What Prometheus holds is what vLLM exports: per-engine KV usage, the preemption counter, the cache config.
        blocks = math.ceil(KV_SEQUENCES * 1100 / 16)
        config = prom.wait_for(f'vllm_cache_config_info{{pool="{POOL}", num_gpu_blocks="{blocks}", block_size="16"}}',
                               timeout=60)
        assert "model_name" not in config[0]["metric"] and config[0]["metric"]["engine"] == "0"
        assert prom.wait_for(f'vllm_num_preemptions_total{{pool="{POOL}"}}', timeout=30)[0]["value"][1] == "0"
        usage = prom.wait_for(f'max(vllm_kv_cache_usage_perc{{pool="{POOL}"}})', timeout=30)
        assert 0.0 <= float(usage[0]["value"][1]) <= 1.0

        def sized_by_kv():
            status = get_pool(cluster, namespace, POOL).get("status") or {}
            return status if "2 effective slots per replica (kv_cache)" in (status.get("reason") or "") else None

        status = cluster.wait_until(sized_by_kv, timeout=180, desc="the reason names the KV cache's 2 slots")
        measured = status["serviceTimeSeconds"]
        assert measured > SERVICE  # two requests share each decode step: t(2) / t(1) = 1.5
        on_slots = erlang_c_replicas(RATE, measured, SLOTS, 1.0, 0.99)
        assert on_slots == 1  # what slotsPerReplica alone would say
        cluster.wait_until(lambda: (replicas(cluster, namespace, POOL) or 0) >= 2, timeout=60,
                           desc="more replicas than slotsPerReplica alone asks for")
        assert all(run <= ready * KV_SEQUENCES for _, _, ready, run, _ in fleet.timeline if ready)  # the KV cap held
        assert fleet.aborted == 0
    finally:
        fleet.stop()
