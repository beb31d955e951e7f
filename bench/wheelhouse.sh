#!/usr/bin/env bash
# A wheelhouse for a GPU machine that has Python and torch but none of trainpipe's other
# packages, and may have no network: the wheels of everything pyproject.toml needs besides
# torch and torchvision (and pytest, for the CUDA tests), for that machine's Python.
#
#   bench/wheelhouse.sh DIR [--have FILE] [--python-version 3.12] [--platform manylinux_2_28_x86_64]
#
# DIR gets the wheels and requirements.txt; bench/gpu_session.sh --wheelhouse DIR installs them
# there with `pip install --no-index --find-links DIR -r DIR/requirements.txt` (pip keeps what
# the machine already has when it satisfies the requirement).
# Left out, since a machine with torch has them already: torch, torchvision, triton, the
# nvidia-* and cuda-* libraries, torch's own dependencies (sympy, networkx, jinja2, filelock,
# fsspec, typing-extensions, ...), numpy and pillow. --have FILE leaves out more: the output of
# `python3 -m pip freeze` (or one package name a line) run on the GPU machine, so that only
# what it lacks travels.
# At the end it prints the wheelhouse's size, and with the data (CIFAR10_TAR, default
# ../shared/data/cifar10/images.tar.gz) and this checkout's tracked files, the total against
# LIMIT_MIB (default 64: what one run may carry to the machine); exit 3 when over.
# Needs pip >= 23 here and access to the package index; nothing is installed here.

set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
[ -x "$REPO/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY=$REPO/.venv/bin/python
PYVER=${PYTHON_VERSION:-3.12}
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
HAVE_FILE=""
DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --have) HAVE_FILE=${2:?--have needs a file}; shift ;;
        --python-version) PYVER=${2:?}; shift ;;
        --platform) PLATFORMS=("${2:?}"); shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "wheelhouse.sh: unknown option $1" >&2; exit 2 ;;
        *) DIR=$1 ;;
    esac
    shift
done
[ -n "$DIR" ] || { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PLAT_ARGS=(--only-binary=:all: --python-version "$PYVER" --implementation cp)
for p in "${PLATFORMS[@]}"; do PLAT_ARGS+=(--platform "$p"); done

# 1. What pyproject.toml needs, less torch and torchvision, plus pytest.
"$PY" - "$REPO/pyproject.toml" "$DIR/requirements.txt" <<'PYEOF'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
keep = [d for d in deps if re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() not in ("torch", "torchvision")]
open(sys.argv[2], "w").write("\n".join([*keep, "pytest>=8"]) + "\n")
PYEOF
echo "wheelhouse: requirements ($DIR/requirements.txt): $(tr '\n' ' ' <"$DIR/requirements.txt")"

# 2. Resolve them for the target (Python $PYVER, Linux x86-64), without installing anything.
echo "wheelhouse: resolving for Python $PYVER on ${PLATFORMS[0]} (a minute or so)..."
"$PY" -m pip install --dry-run --ignore-installed --quiet --disable-pip-version-check \
    --report "$DIR/resolved.json" "${PLAT_ARGS[@]}" -r "$DIR/requirements.txt" 2> >(grep -v "is ignored: it is neither" >&2)

# 3. Download the resolved wheels, less what the machine has.
mapfile -t WANT < <("$PY" - "$DIR/resolved.json" "$HAVE_FILE" <<'PYEOF'
import json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {"torch", "torchvision", "torchaudio", "triton", "numpy", "pillow", "sympy", "mpmath", "networkx",
        "jinja2", "markupsafe", "filelock", "fsspec", "typing-extensions", "setuptools", "pip", "wheel"}
if sys.argv[2]:
    for line in open(sys.argv[2]):
        name = re.split(r"[<>=!~ @\[;]", line.strip(), maxsplit=1)[0]
        if name and not name.startswith("#"):
            have.add(norm(name))
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = norm(item["metadata"]["name"]), item["metadata"]["version"]
    if name in have or name.startswith(("nvidia-", "cuda-")):
        continue
    print(f"{name}=={version}")
PYEOF
)
rm -f "$DIR"/*.whl
if [ ${#WANT[@]} -gt 0 ]; then
    "$PY" -m pip download --no-deps --quiet --disable-pip-version-check -d "$DIR" "${PLAT_ARGS[@]}" "${WANT[@]}" \
        2> >(grep -v "is ignored: it is neither" >&2)
fi

# 4. Sizes.
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
WHEELS=$(find "$DIR" -maxdepth 1 -name '*.whl' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
TAR=${CIFAR10_TAR:-$REPO/../shared/data/cifar10/images.tar.gz}
DATA=0; [ -f "$TAR" ] && DATA=$(stat -c %s "$TAR")
TREE=$(cd "$REPO" && git ls-files -z 2>/dev/null | xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
TOTAL=$(( WHEELS + DATA + TREE ))
LIMIT=${LIMIT_MIB:-64}
echo "wheelhouse: ${#WANT[@]} wheels, the largest:"
find "$DIR" -maxdepth 1 -name '*.whl' -printf '%s %f\n' | sort -rn | head -n 8 \
    | awk '{ printf "  %6.1f MiB  %s\n", $1 / 1048576, $2 }'
echo "wheelhouse: $(mib "$WHEELS") MiB in $DIR"
echo "with the data ($(mib "$DATA") MiB, $TAR) and the checkout's files ($(mib "$TREE") MiB): $(mib "$TOTAL") MiB (limit $LIMIT MiB)"
if [ "$TOTAL" -gt $(( LIMIT * 1048576 )) ]; then
    echo "OVER the limit: pass --have FILE (pip freeze of the GPU machine) to leave out what it has already." >&2
    exit 3
fi
