"""`flowtide profile`: measure the engine in use, or a running endpoint, into a capacity profile (perf_model.csv schema)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from orchestrator.config import ConfigError, FlowtideConfig, load_config


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sizes


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"expected a base URL like http://127.0.0.1:8000, got {text!r}")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    from workers.profiling import ProfilePlan

    default = ProfilePlan()
    p = subparsers.add_parser(
        "profile",
        help="profile prefill time vs prompt length and decode step time vs batch size; write a perf_model.csv",
    )
    p.add_argument("--config", help="YAML config file (default: $FLOWTIDE_CONFIG or built-in defaults)")
    p.add_argument("--engine", choices=["transformers", "vllm"], help="engine to profile (default: engine.kind)")
    p.add_argument("--model", help="local Hugging Face checkpoint directory (default: the embedded tiny model)")
    p.add_argument("--endpoint", type=_url, help="profile a running service at this base URL (e.g. http://127.0.0.1:8000) "
                   "through its OpenAI API instead of an engine in this process; the prompts' token ids come from "
                   "--model / the config's model, which must be the one it serves")
    p.add_argument("--out", required=True, help="CSV to write (Splitwise perf_model.csv columns)")
    p.add_argument("--prompt-sizes", type=_sizes, default=default.prompt_sizes,
                   help=f"prompt sweep at batch 1 (default: {','.join(map(str, default.prompt_sizes))})")
    p.add_argument("--batch-sizes", type=_sizes, default=default.batch_sizes,
                   help=f"batch sweep (default: {','.join(map(str, default.batch_sizes))})")
    p.add_argument("--batch-prompt-size", type=int, default=default.batch_prompt_size,
                   help="prompt length in the batch sweep (default: %(default)s)")
    p.add_argument("--token-size", type=int, default=default.token_size,
                   help="tokens generated per request (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=default.repeats, help="runs per (prompt, batch) point (default: %(default)s)")
    p.add_argument("--hardware", help="hardware column (default: the GPU name, else cpu-<arch>-<cores>c; "
                   "with --endpoint, that name plus '-served')")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = {"engine.kind": args.engine, "model.path": args.model}
    config = load_config(args.config, **{k: v for k, v in overrides.items() if v is not None})
    from workers.profiling import ProfileError, ProfilePlan

    plan = ProfilePlan(
        prompt_sizes=args.prompt_sizes,
        batch_sizes=args.batch_sizes,
        batch_prompt_size=args.batch_prompt_size,
        token_size=args.token_size,
        repeats=args.repeats,
    )
    from workers.engines.base import EngineUnavailableError

    try:
        _check_fits(plan, config, served=bool(args.endpoint))
        profiling = (_profile_endpoint(config, plan, Path(args.out), args.hardware, args.endpoint) if args.endpoint
                     else _profile(config, plan, Path(args.out), args.hardware))
        out = asyncio.run(profiling)
    except ProfileError as exc:
        raise ConfigError(f"profile: {exc}") from exc
    except EndpointError as exc:
        print(f"flowtide: {exc}", file=sys.stderr)
        return 1
    except EngineUnavailableError as exc:
        print(f"flowtide: the {config.engine.kind} engine cannot start: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def _check_fits(plan, config: FlowtideConfig, served: bool) -> None:
    """Raises ProfileError for runs a replica cannot batch, or (``served``) prompts the endpoint refuses."""
    from workers.profiling import ProfileError

    if max(plan.batch_sizes) > config.serving.max_batch_size:
        raise ProfileError(
            f"batch size {max(plan.batch_sizes)} exceeds serving.max_batch_size={config.serving.max_batch_size}"
        )
    longest = max(*plan.prompt_sizes, plan.batch_prompt_size)
    if served and longest > config.model.max_prompt_tokens:
        raise ProfileError(f"prompt size {longest} exceeds model.max_prompt_tokens={config.model.max_prompt_tokens}")


def _served_model(config: FlowtideConfig) -> tuple[str, int, int]:
    """The checkpoint directory, its vocabulary size (the prompts' token ids) and the GPUs per replica."""
    from orchestrator.app import resolve_model_path

    model_path = resolve_model_path(config)
    vocab_size = json.loads((Path(model_path) / "config.json").read_text())["vocab_size"]
    tensor_parallel = config.engine.vllm.tensor_parallel_size if config.engine.kind == "vllm" else 1
    return model_path, vocab_size, tensor_parallel


async def _profile(config: FlowtideConfig, plan, out: Path, hardware: str | None) -> Path:
    from rich.progress import Progress

    from orchestrator.app import engine_options
    from workers.engines import build_engine
    from workers.gpu_power import NvmlPower
    from workers.profiling import hardware_name, profile_engine, write_perf_csv

    model_path, vocab_size, tensor_parallel = _served_model(config)
    kind = config.engine.kind
    model = config.model.served_name if config.model.path is None else Path(model_path).name
    gpus = tensor_parallel if kind == "vllm" or config.engine.device == "cuda" else 0
    power = NvmlPower.open(gpus) if gpus else None
    print(f"power: {f'NVML, {gpus} GPU(s)' if power else 'not measured (no GPU seen by NVML)'}")
    with Progress() as progress:
        task = progress.add_task(f"profiling {model} on the {kind} engine", total=len(plan.runs()))
        engine = build_engine(kind, "colocated", model_path, **engine_options(config, "colocated"))
        try:
            rows = await profile_engine(
                engine,
                plan,
                model=model,
                hardware=hardware or hardware_name(),
                tensor_parallel=tensor_parallel,
                vocab_size=vocab_size,
                max_model_len=config.model.max_model_len,
                on_row=lambda row: progress.advance(task),
                power=power,
            )
        finally:
            await engine.shutdown()
            if power is not None:
                power.close()
    return write_perf_csv(rows, out)


class EndpointError(RuntimeError):
    """The endpoint to profile cannot be reached or does not serve the model."""


async def _profile_endpoint(config: FlowtideConfig, plan, out: Path, hardware: str | None, base_url: str) -> Path:
    """The same plan and rows as :func:`_profile`, each request over HTTP to the service at ``base_url``."""
    import openai
    from rich.progress import Progress

    from workers.profiling import endpoint_timer, hardware_name, profile_runs, write_perf_csv

    _, vocab_size, tensor_parallel = _served_model(config)
    model = config.model.served_name
    url = base_url.rstrip("/") + "/v1"
    async with openai.AsyncOpenAI(base_url=url, api_key="-", max_retries=0, timeout=600) as client:
        try:
            served = [m.id async for m in client.models.list()]
        except openai.APIError as exc:
            raise EndpointError(f"cannot list the models at {url}: {exc}") from exc
        if model not in served:
            raise EndpointError(f"{url} serves {served}, not {model!r} (model.served_name)")
        print("power: not measured (profiled through the endpoint)")
        with Progress() as progress:
            task = progress.add_task(f"profiling {model} at {url}", total=len(plan.runs()))
            try:
                rows = await profile_runs(
                    endpoint_timer(client, model),
                    plan,
                    model=model,
                    hardware=hardware or f"{hardware_name()}-served",
                    tensor_parallel=tensor_parallel,
                    vocab_size=vocab_size,
                    max_model_len=config.model.max_model_len,
                    on_row=lambda row: progress.advance(task),
                )
            except openai.APIError as exc:
                raise EndpointError(f"{url} failed a profiling request: {exc}") from exc
    return write_perf_csv(rows, out)
