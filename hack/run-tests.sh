#!/usr/bin/env bash
# `make test`: the whole suite as two pytest sessions side by side. The unit tests are CPU-bound and need no
# cluster; the integration and end-to-end tests mostly wait on the cluster (drift intervals, rollouts,
# autoscaling). Run one after the other they took 4 + 8 minutes on 2 cores; side by side, about the longer
# of the two. The unit session's output is printed when both have finished; the exit status is non-zero
# when either session fails (pytest's 5, "no tests collected", included).
#
# With arguments (make test PYTEST_ARGS="..."), one ordinary pytest session with those arguments.
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
if (($#)); then
  exec "$py" -m pytest "$@"
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# No cache plugin in the second session: both would write .pytest_cache at once.
"$py" -m pytest tests/unit -p no:cacheprovider >"$log" 2>&1 &
unit_pid=$!
"$py" -m pytest tests/integration tests/e2e
cluster_status=$?
wait "$unit_pid"
unit_status=$?
echo "================ unit tests (ran beside the integration and end-to-end tests) ================"
cat "$log"
echo "pytest tests/unit exited $unit_status; pytest tests/integration tests/e2e exited $cluster_status"
((unit_status == 0 && cluster_status == 0))
