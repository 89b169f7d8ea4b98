"""Jobs on the local node: exit codes become pod phases the Job controller acts on, and the
termination message reaches the pod status."""
from __future__ import annotations

import pytest

from tests.fixtures.cluster import wait_for
from tests.integration.localnode.helpers import container, pod_spec

pytestmark = [pytest.mark.cluster, pytest.mark.localnode]


def job(namespace: str, name: str, code: str, backoff_limit: int = 0) -> dict:
    main = container("main", ["python", "-c", code])
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
            "spec": {"backoffLimit": backoff_limit,
                     "template": {"spec": pod_spec(main, restartPolicy="Never")}}}


def job_condition(cluster, namespace: str, name: str) -> str | None:
    conditions = cluster.get("job", name, "-n", namespace).get("status", {}).get("conditions") or []
    return next((c["type"] for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)


def test_job_whose_command_exits_zero_completes(cluster, namespace, local_node):
    cluster.apply(job(namespace, "ok", "print('trained')"))
    finished = wait_for(lambda: job_condition(cluster, namespace, "ok"), timeout=30, message="the Job to finish")
    assert finished == "Complete"
    [pod] = cluster.get("pods", "-n", namespace, "-l", "job-name=ok")["items"]
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")


def test_job_exiting_3_fails_with_its_exit_code_and_message_after_one_retry(cluster, namespace, local_node):
    code = ("import sys\n"
            "open('/dev/termination-log', 'w').write('no data at s3://bucket/x.csv')\n"
            "sys.exit(3)")
    cluster.apply(job(namespace, "bad", code, backoff_limit=1))
    assert wait_for(lambda: job_condition(cluster, namespace, "bad"), timeout=60, message="the Job to fail") == "Failed"
    pods = cluster.get("pods", "-n", namespace, "-l", "job-name=bad")["items"]
    assert len(pods) == 2, "backoffLimit 1: the Job controller retries once"
    for pod in pods:
        assert pod["status"]["phase"] == "Failed"
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 3
        assert terminated["reason"] == "Error"
        assert terminated["message"] == "no data at s3://bucket/x.csv"
