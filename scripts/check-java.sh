#!/usr/bin/env bash
# TorchServe's frontend is Java: exit 0 when Java 11+ is there ($JAVA_HOME/bin/java, else java on
# PATH), else one clear line and exit 1. scripts/setup-os.sh uses it to decide whether to install.
set -u
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
how="install it (Debian/Ubuntu: sudo apt-get install default-jre-headless; make java does it)"
[ -z "${JAVA_HOME:-}" ] || how="point JAVA_HOME at Java 11+ or unset it (now $JAVA_HOME)"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  echo "error: TorchServe needs Java 11 or newer and none was found: $how" >&2
  exit 1
fi
version=$("$java_bin" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)\(\.[0-9]*\)*.*".*/\1/p' | head -n 1)
if [ -z "$version" ] || [ "$version" = 1 ] || [ "$version" -lt 11 ]; then
  echo "error: TorchServe needs Java 11 or newer, found: $("$java_bin" -version 2>&1 | head -n 1): $how" >&2
  exit 1
fi
