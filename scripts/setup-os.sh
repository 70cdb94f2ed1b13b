#!/usr/bin/env bash
# The OS packages that make's set-up needs, installed when missing (Debian/Ubuntu: apt-get).
#
#   scripts/setup-os.sh [NEED...]     NEED: java fashion-mnist wrk nginx venv (default: java fashion-mnist)
#
#   java           Java 11+ for TorchServe's frontend (the version test is scripts/check-java.sh)
#   fashion-mnist  Debian's dataset-fashion-mnist, which scripts/fetch_data.py copies into data/
#   wrk            the C load generator of bench and tune (make test, bench and integration)
#   nginx          the TLS gateway of `torchship serve start --tls` (make test, bench and integration);
#                  torchship runs /usr/sbin/nginx with a config of its own, never the system's
#   venv           Python's venv and ensurepip, to create .venv (Debian splits them off)
#
# Silent, and well under a second, when everything is there. Otherwise as root: apt-get update
# once, then one apt-get install of exactly what is missing; not root: the same through `sudo -n`
# when sudo needs no password; else one line naming the command to run, exit 1, nothing done.
# Environment: FASHION_MNIST_DIR (default /usr/share/datasets/fashion-mnist; any folder with
# the four IDX .gz files will do), JAVA_PACKAGE (default default-jre-headless: Java 17 on
# Debian 12), PYTHON (default python3, the one that makes .venv), TORCHSHIP_NGINX (default
# /usr/sbin/nginx: Debian's, not on a user's PATH).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
fashion_dir="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
python="${PYTHON:-python3}"
[ $# -gt 0 ] || set -- java fashion-mnist
wanted=("$@")

fashion_files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
has_fashion() {  # the Debian folder, or data/ already filled by an earlier `make data`
  local dir f
  for dir in "$fashion_dir" "$root/data/fashion"; do
    for f in "${fashion_files[@]}"; do [ -f "$dir/$f" ] || continue 2; done
    return 0
  done
  return 1
}

present() {
  case "$1" in
    java) "$here/check-java.sh" >/dev/null 2>&1 ;;
    fashion-mnist) has_fashion ;;
    wrk) command -v wrk >/dev/null 2>&1 ;;
    nginx) command -v nginx >/dev/null 2>&1 || [ -x "${TORCHSHIP_NGINX:-/usr/sbin/nginx}" ] ;;
    venv) "$python" -c 'import ensurepip, venv' >/dev/null 2>&1 ;;
  esac
}

package=() purpose=()  # per wanted NEED: its Debian package, what it is for
for need in "${wanted[@]}"; do
  case "$need" in
    java) package+=("${JAVA_PACKAGE:-default-jre-headless}") purpose+=("Java 11+ (for TorchServe)") ;;
    fashion-mnist) package+=(dataset-fashion-mnist) purpose+=("Fashion-MNIST in $fashion_dir (the fashion example's data)") ;;
    wrk) package+=(wrk) purpose+=("wrk (the load generator of bench and tune)") ;;
    nginx) package+=(nginx) purpose+=("nginx (the TLS gateway of serve start --tls)") ;;
    venv) package+=(python3-venv) purpose+=("$python's venv module (to make .venv)") ;;
    *) echo "error: setup-os.sh: unknown need '$need' (java, fashion-mnist, wrk, nginx, venv)" >&2; exit 2 ;;
  esac
done

missing=() missing_why=() needs=()
for i in "${!wanted[@]}"; do
  if ! present "${wanted[$i]}"; then
    needs+=("${wanted[$i]}") missing+=("${package[$i]}") missing_why+=("${purpose[$i]}")
  fi
done
[ ${#missing[@]} -gt 0 ] || exit 0
if [ -n "${JAVA_HOME:-}" ] && [[ " ${needs[*]} " == *" java "* ]]; then
  "$here/check-java.sh" || exit 1  # an old Java named by JAVA_HOME: no package fixes that
fi

joined() { local IFS=';'; local s="$*"; echo "${s//;/, }"; }
what="$(joined "${missing_why[@]}")"
install=(apt-get install -y --no-install-recommends "${missing[@]}")

if ! command -v apt-get >/dev/null 2>&1; then
  hint=""
  [[ " ${needs[*]} " != *" fashion-mnist "* ]] || hint=" (or set FASHION_MNIST_DIR to a folder of its .gz files)"
  echo "error: missing $what; no apt-get here: install them with this system's package manager" \
    "(Debian names: ${missing[*]})$hint, then run make again" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  as_root=(sudo -n)
else
  echo "error: missing $what; run: sudo apt-get update && sudo ${install[*]} (then make again)" >&2
  exit 1
fi

echo "installing with ${as_root[*]:+${as_root[*]} }apt-get: ${missing[*]} ..." >&2
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { ${as_root[@]+"${as_root[@]}"} apt-get update -qq &&
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive "${install[@]}"; } >"$log" 2>&1; then
  tail -n 15 "$log" >&2
  echo "error: could not install ${missing[*]}: apt-get failed (its last lines are above)" >&2
  exit 1
fi

for i in "${!needs[@]}"; do  # installed, yet still not usable (e.g. an old java first on PATH)
  if ! present "${needs[$i]}"; then
    case "${needs[$i]}" in
      java) "$here/check-java.sh" || true ;;
      *) echo "error: still not found after installing ${missing[$i]}: ${missing_why[$i]}" >&2 ;;
    esac
    exit 1
  fi
done
