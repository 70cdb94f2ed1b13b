#!/usr/bin/env bash
# One real prediction for an example model, as `torchship predict` prints it.
# usage: scripts/demo_predict.sh MODEL [VERSION]
set -euo pipefail
model=$1
version=${2:-}
bin=.venv/bin
args=("$model")
[ -n "$version" ] && args+=(--version "$version")
if [ "$model" = fashion ]; then
  png=$(mktemp --suffix=.png)
  trap 'rm -f "$png"' EXIT
  "$bin/python" scripts/demo_request.py fashion --png "$png"
  "$bin/torchship" predict "${args[@]}" --file "$png"
elif [ "$model" = textgen ]; then
  "$bin/torchship" predict "${args[@]}" --stream --json "$("$bin/python" scripts/demo_request.py "$model")"
else
  "$bin/torchship" predict "${args[@]}" --json "$("$bin/python" scripts/demo_request.py "$model")"
fi
