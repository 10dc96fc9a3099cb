"""Prometheus metrics of one runtime process, on a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip  # vLLM's time-to-first-token buckets, up to 80 s
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ember_inference_requests",
            "Inference requests answered, by model and HTTP status code",
            ["model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ember_inference_request_duration_seconds",
            "Time from receiving an inference request to answering it",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ember_batch_size",
            "Items per executed batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        # named as vLLM names them, so its dashboards read a generation model's
        self.generation_running = Gauge(
            "vllm:num_requests_running",
            "Sequences a text-generation model is decoding",
            ["model_name"],
            registry=self.registry,
        )
        self.generation_waiting = Gauge(
            "vllm:num_requests_waiting",
            "Sequences waiting to join a text-generation model's running batch",
            ["model_name"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time from a sequence's submission to its first generated token",
            ["model_name"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between a sequence's successive generated tokens",
            ["model_name"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens",
            "Prompt tokens prefilled",
            ["model_name"],
            registry=self.registry,
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Tokens generated (an end-of-sequence token included)",
            ["model_name"],
            registry=self.registry,
        )
        self.kv_cache_usage = Gauge(
            "vllm:kv_cache_usage_perc",
            "Fraction of the KV-cache bound (max_kv_tokens) the running sequences hold, 0 to 1",
            ["model_name"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "ember_queue_depth",
            "Requests waiting for a batch slot",
            ["model"],
            registry=self.registry,
        )
        self.load_duration = Gauge(
            "ember_model_load_duration_seconds",
            "Duration of the model's last load, warm-up included",
            ["model"],
            registry=self.registry,
        )
        self.load_phase = Gauge(
            "ember_model_load_phase_seconds",
            "Seconds of the model's last load per phase: plan, fetch, tier, imports, load, warmup;"
            " materialise and device overlap fetch (tensors made while the bytes arrive)",
            ["model", "phase"],
            registry=self.registry,
        )
        self.wake_duration = Histogram(
            "ember_model_wake_seconds",
            "Time to wake a sleeping model, by the level it slept at (host, disk)",
            ["model", "level"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sleep_duration = Histogram(
            "ember_model_sleep_seconds",
            "Time to put a model to sleep (after its running batches finished), by level",
            ["model", "level"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.device_hot_bytes = Gauge(
            "ember_device_memory_hot_bytes",
            "Bytes of device memory the awake models' weights hold (their measured footprints)",
            registry=self.registry,
        )
        self.device_budget_bytes = Gauge(
            "ember_device_memory_budget_bytes",
            "The device memory budget the awake models must fit in; 0: no budget",
            registry=self.registry,
        )
        self.host_sleeping_bytes = Gauge(
            "ember_host_memory_sleeping_bytes",
            "Bytes of host memory the weights of the models asleep at level host hold",
            registry=self.registry,
        )
        self.host_budget_bytes = Gauge(
            "ember_host_memory_budget_bytes",
            "The host memory budget the models asleep at level host must fit in; 0: no budget",
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "ember_model_ready",
            "1 when the model can answer",
            ["model"],
            registry=self.registry,
        )
