#!/usr/bin/env bash
# Make a Docker engine answer for tests/e2e on a clean Debian machine: install docker.io and
# debootstrap (for docker/base-image.sh) when missing, start dockerd when nothing answers, and
# wait for it, bounded by DOCKERD_START_TIMEOUT seconds (default 60). Needs root.
set -euo pipefail

start_timeout="${DOCKERD_START_TIMEOUT:-60}"
log="${DOCKERD_LOG:-/tmp/dockerd.log}"

if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null \
    || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi

# No init system starts services here (policy-rc.d refuses them in images), so dockerd runs
# detached from this shell and outlives it, for the test run that follows.
setsid dockerd >"$log" 2>&1 </dev/null &
dockerd_pid=$!
deadline=$((SECONDS + start_timeout))
until docker info >/dev/null 2>&1; do
    if ! kill -0 "$dockerd_pid" 2>/dev/null; then
        echo "dockerd exited while starting; the end of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "dockerd did not answer within ${start_timeout} s; the end of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    sleep 0.2
done
echo "dockerd $dockerd_pid answers ($(docker version --format '{{.Server.Version}}'))"
