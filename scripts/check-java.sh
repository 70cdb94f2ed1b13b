#!/usr/bin/env bash
# TorchServe's frontend is Java: stop with one clear line when Java 11+ is missing.
set -u
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  echo "error: TorchServe needs Java 11 or newer and none was found: install it (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless)" >&2
  exit 1
fi
version=$("$java_bin" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)\(\.[0-9]*\)*.*".*/\1/p' | head -n 1)
if [ -z "$version" ] || [ "$version" = 1 ] || [ "$version" -lt 11 ]; then
  echo "error: TorchServe needs Java 11 or newer, found: $("$java_bin" -version 2>&1 | head -n 1) (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless)" >&2
  exit 1
fi
