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
# In the sessions against the cluster (integration, e2e, rbac) a skip is a failure: a missing audit log, a
# cluster without its node or a fixture that gave up all look like a skip, and a skipped test proves nothing.
# They run with MODELLOOP_SKIPS_FAIL=1, which makes tests/conftest.py report the skip of any test not marked
# `@pytest.mark.optional(reason="when the skip is legitimate")` as a failure ("skipped, and skips fail in this
# session: <reason>"), and a module skipped at import as a collection error. The unit session keeps ordinary skips.
#
# With arguments (make test PYTEST_ARGS="..."), one ordinary pytest session with those arguments.
# `--session NAME ARGS...` runs pytest as session NAME (unit, integration, e2e or rbac) does, with the same
# environment and options, on ARGS instead of its tests (tests/unit/test_run_tests_script.py uses it).
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python

# No cache plugin beside the first session (integration): they would write .pytest_cache at once.
session() {
  local name=$1
  shift
  case "$name" in
    unit) "$py" -m pytest -p no:cacheprovider "$@" ;;
    integration) MODELLOOP_SKIPS_FAIL=1 "$py" -m pytest --durations=10 "$@" ;;
    e2e) MODELLOOP_SKIPS_FAIL=1 "$py" -m pytest -p no:cacheprovider --durations=10 -rP "$@" ;;
    rbac) MODELLOOP_SKIPS_FAIL=1 "$py" -m pytest -p no:cacheprovider "$@" ;;
    *) echo "run-tests.sh: unknown session '$name' (unit, integration, e2e or rbac)" >&2; return 2 ;;
  esac
}

if [[ "${1:-}" == --session ]]; then
  (($# >= 2)) || { echo "usage: hack/run-tests.sh --session unit|integration|e2e|rbac [pytest args]" >&2; exit 2; }
  shift
  session "$@"
  exit
fi
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

session unit tests/unit >"$logs/unit" 2>&1 &
unit=$!
session e2e tests/e2e --ignore=tests/e2e/test_rbac.py >"$logs/e2e" 2>&1 &
e2e=$!
session integration tests/integration
integration_status=$?
wait "$e2e"; e2e_status=$?
wait "$unit"; unit_status=$?
session rbac tests/e2e/test_rbac.py >"$logs/rbac" 2>&1
rbac_status=$?
for session in e2e unit rbac; do
  echo "================ $session tests (ran beside the integration tests) ================"
  cat "$logs/$session"
done
echo "pytest exited: unit $unit_status, integration $integration_status, e2e $e2e_status, rbac $rbac_status"
((unit_status == 0 && integration_status == 0 && e2e_status == 0 && rbac_status == 0))
