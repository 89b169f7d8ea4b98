#!/usr/bin/env bash
# `make test`: the whole suite as three pytest sessions side by side against one cluster, then the RBAC audit.
# The unit tests are CPU-bound and need no cluster; the integration tests (the operator as a subprocess, kwok
# nodes) and the end-to-end tests (the Helm-installed operator, pods on the real node) mostly wait on the cluster
# (drift intervals, rollouts, autoscaling) and use their own namespaces, releases and operators. One after the
# other they took 8 + 7 + 5 minutes on 2 cores; side by side, about the longest of them.
#
# The cluster is started here, once, before the sessions (they reuse it) and stopped at the end when this
# script started it (MODELLOOP_KEEP_CLUSTER=1 keeps it). The RBAC test compares the chart's rules with every
# call both operators made during the run, so it runs last, on its own. The output of the integration session
# is shown as it runs, the others' when all have finished; the exit status is non-zero when any session fails
# (pytest's 5, "no tests collected", included).
#
# With arguments (make test PYTEST_ARGS="..."), one ordinary pytest session with those arguments.
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
if (($#)); then
  exec "$py" -m pytest "$@"
fi

logs="$(mktemp -d)"
started=0
"$py" hack/cluster.py status >/dev/null 2>&1 || started=1
cleanup() {
  if ((started)) && [[ "${MODELLOOP_KEEP_CLUSTER:-}" != 1 ]]; then "$py" hack/cluster.py down; fi
  rm -rf "$logs"
}
trap cleanup EXIT
"$py" hack/cluster.py up >"$logs/cluster" 2>&1 || { cat "$logs/cluster"; echo "could not start the cluster"; exit 1; }
MODELLOOP_TESTS_SINCE="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)"
export MODELLOOP_TESTS_SINCE

# No cache plugin beside the first session: they would write .pytest_cache at once.
"$py" -m pytest tests/unit -p no:cacheprovider >"$logs/unit" 2>&1 &
unit=$!
"$py" -m pytest tests/e2e --ignore=tests/e2e/test_rbac.py -p no:cacheprovider --durations=10 -rP >"$logs/e2e" 2>&1 &
e2e=$!
"$py" -m pytest tests/integration --durations=10
integration_status=$?
wait "$e2e"; e2e_status=$?
wait "$unit"; unit_status=$?
"$py" -m pytest tests/e2e/test_rbac.py -p no:cacheprovider >"$logs/rbac" 2>&1
rbac_status=$?
for session in e2e unit rbac; do
  echo "================ $session tests (ran beside the integration tests) ================"
  cat "$logs/$session"
done
echo "pytest exited: unit $unit_status, integration $integration_status, e2e $e2e_status, rbac $rbac_status"
((unit_status == 0 && integration_status == 0 && e2e_status == 0 && rbac_status == 0))
