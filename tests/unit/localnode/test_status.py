"""Pod phase, conditions, restarts and termination messages, as kubelet computes them."""
from __future__ import annotations

import pytest

from modelloop_localnode import status as st


def running(name="main", ready=True):
    return {"name": name, "ready": ready, "state": {"running": {}}, "lastState": {}}


def terminated(code, name="main"):
    return {"name": name, "ready": False, "state": {"terminated": {"exitCode": code}}, "lastState": {}}


def waiting(name="main", restarted=False):
    last = {"terminated": {"exitCode": 1}} if restarted else {}
    return {"name": name, "ready": False, "state": {"waiting": {"reason": "x"}}, "lastState": last}


@pytest.mark.parametrize("policy, statuses, phase", [
    ("Always", [waiting()], "Pending"),
    ("Always", [running()], "Running"),
    ("Always", [waiting(restarted=True)], "Running"),
    ("Always", [terminated(0)], "Running"),
    ("OnFailure", [terminated(0)], "Succeeded"),
    ("OnFailure", [terminated(1)], "Running"),
    ("Never", [terminated(0), terminated(0, "b")], "Succeeded"),
    ("Never", [terminated(3), terminated(0, "b")], "Failed"),
    ("Never", [terminated(3), running("b")], "Running"),
])
def test_pod_phase(policy, statuses, phase):
    assert st.pod_phase({"restartPolicy": policy}, [], statuses) == phase


def test_init_containers_hold_the_pod_pending_and_fail_it_under_never():
    spec = {"restartPolicy": "Never", "initContainers": [{"name": "init"}]}
    assert st.pod_phase(spec, [running("init")], [waiting()]) == "Pending"
    assert st.pod_phase(spec, [terminated(1, "init")], [waiting()]) == "Failed"
    assert st.pod_phase({**spec, "restartPolicy": "Always"}, [terminated(1, "init")], [waiting()]) == "Pending"
    assert st.pod_phase(spec, [terminated(0, "init")], [running()]) == "Running"


def test_a_deleted_pod_ends_succeeded_only_when_every_container_exited_zero():
    assert st.pod_phase({}, [], [terminated(0)], terminating=True) == "Succeeded"
    assert st.pod_phase({}, [], [terminated(143)], terminating=True) == "Failed"
    assert st.pod_phase({}, [], [waiting()], terminating=True) == "Failed"


def test_restart_policy_and_backoff():
    assert st.should_restart({}, {"restartPolicy": "Always"}, 0, init=False)
    assert not st.should_restart({}, {"restartPolicy": "OnFailure"}, 0, init=False)
    assert st.should_restart({}, {"restartPolicy": "OnFailure"}, 1, init=False)
    assert not st.should_restart({}, {"restartPolicy": "Never"}, 1, init=False)
    assert not st.should_restart({}, {"restartPolicy": "Always"}, 0, init=True), "a succeeded init container is done"
    assert st.should_restart({}, {"restartPolicy": "Always"}, 1, init=True)
    assert [st.backoff_seconds(n) for n in (1, 2, 3, 4, 10)] == [0, 10, 20, 40, 300]
    assert st.exit_code(-15) == 143 and st.exit_code(3) == 3


def test_termination_message_prefers_the_file_and_falls_back_to_the_log_tail_on_error(tmp_path):
    message, log = tmp_path / "msg", tmp_path / "log"
    log.write_text("".join(f"line {i}\n" for i in range(200)))
    message.write_text("")
    assert st.termination_message(message, "File", 1, log) == ""
    tail = st.termination_message(message, "FallbackToLogsOnError", 1, log)
    assert tail.endswith("line 199") and "line 119" not in tail and len(tail) <= st.FALLBACK_LOG_BYTES
    assert st.termination_message(message, "FallbackToLogsOnError", 0, log) == ""
    message.write_text("x" * 10000)
    assert st.termination_message(message, "FallbackToLogsOnError", 1, log) == "x" * st.MAX_MESSAGE_BYTES


def test_conditions_follow_readiness_and_keep_transition_times():
    pod = {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {}}
    computed = st.pod_conditions(pod, [], [running("a"), running("b", ready=False)], "Running", True)
    assert computed["Ready"] == ("False", "ContainersNotReady", "containers with unready status: [b]")
    assert computed["Initialized"][0] == "True" and computed["PodReadyToStartContainers"][0] == "True"
    first = st.merge_conditions({}, computed, "t1")
    again = st.merge_conditions({c["type"]: c for c in first}, computed, "t2")
    assert all(c["lastTransitionTime"] == "t1" for c in again)
    ready = st.pod_conditions(pod, [], [running("a"), running("b")], "Running", True)
    changed = {c["type"]: c for c in st.merge_conditions({c["type"]: c for c in again}, ready, "t3")}
    assert changed["Ready"]["lastTransitionTime"] == "t3" and changed["Initialized"]["lastTransitionTime"] == "t1"


def test_readiness_gates_hold_ready_until_their_condition_is_true():
    pod = {"spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "example.com/gate"}]},
           "status": {"conditions": []}}
    assert st.pod_conditions(pod, [], [running("a")], "Running", True)["Ready"][1] == "ReadinessGatesNotReady"
    pod["status"]["conditions"] = [{"type": "example.com/gate", "status": "True"}]
    assert st.pod_conditions(pod, [], [running("a")], "Running", True)["Ready"][0] == "True"
