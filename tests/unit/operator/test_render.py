"""Rendering children is a pure function of the spec: the specs every pod must carry."""
import json

import yaml

from modelloop.api import ModelDeploymentSpec, ModelTrainingSpec
from modelloop.rollout import rollout_state
from modelloop.runs import (
    job_failure_message, job_outcome, next_version, onnx_skipped, wanted_trigger,
)
from modelloop.config import Settings
from modelloop.render.deployment import (
    ServedModel, render_deployment, render_hpa, render_network_policy, render_pdb, render_service,
)
from modelloop.render.training import effective_spec, job_name, render_job
from tests.fixtures.cluster import ROOT

EXAMPLES = {d["kind"]: d for p in (ROOT / "examples").glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d}
OWNER = {"apiVersion": "modelloop.dev/v1alpha1", "kind": "X",
         "metadata": {"name": "churn", "namespace": "ml", "uid": "u-1", "generation": 4}}


def training_spec(**over):
    spec = {**EXAMPLES["ModelTraining"]["spec"], **over}
    return ModelTrainingSpec.model_validate(spec)


def test_job_has_deterministic_name_owner_labels_and_limits():
    job = render_job({**OWNER, "kind": "ModelTraining"}, training_spec(), 3, "RetrainRequested")
    assert job["metadata"]["name"] == job_name("churn", 3) == "churn-v3"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["metadata"]["labels"]["modelloop.dev/training"] == "churn"
    assert job["metadata"]["labels"]["modelloop.dev/version"] == "3"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 1800
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["--version", "3"]
    assert "envFrom" not in c
    assert c["resources"]["limits"]["memory"] == "2Gi"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert json.loads(env["MODELLOOP_TRAINING_SPEC"])["dataset"]["uri"] == "s3://modelloop-demo/churn.csv"
    assert env["MODELLOOP_TRAINING_GENERATION"] == "4"


def test_every_pod_runs_as_non_root_with_a_read_only_root_filesystem():
    job = render_job({**OWNER, "kind": "ModelTraining"}, training_spec(), 1, "Created")
    dep = render_deployment({**OWNER, "kind": "ModelDeployment"},
                            ModelDeploymentSpec.model_validate(EXAMPLES["ModelDeployment"]["spec"]),
                            ServedModel(2, "s3://b/m/v2", "ab" * 32, "ba" * 32))
    for pod in (job["spec"]["template"]["spec"], dep["spec"]["template"]["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        c = pod["containers"][0]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert pod["automountServiceAccountToken"] is False


def test_no_credentials_are_rendered_into_pod_specs():
    job = render_job({**OWNER, "kind": "ModelTraining"}, training_spec(), 1, "Created")
    text = json.dumps(job)
    assert "demo-secret" not in text and "envFrom" not in text


def _deployment(spec: dict | None = None, **over) -> dict:
    raw = {**EXAMPLES["ModelDeployment"]["spec"], **(spec or {}), **over}
    return render_deployment({**OWNER, "kind": "ModelDeployment"}, ModelDeploymentSpec.model_validate(raw),
                             ServedModel(2, "s3://b/m/v2", "ab" * 32, "ba" * 32))


def test_storage_credentials_reach_pods_as_secret_key_refs_of_the_named_keys_only():
    job = render_job({**OWNER, "kind": "ModelTraining"}, training_spec(), 1, "Created")
    dep = _deployment()
    for c in (job["spec"]["template"]["spec"]["containers"][0], dep["spec"]["template"]["spec"]["containers"][0]):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert set(refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                             "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"}
        assert all(r["name"] == "modelloop-s3" and r["key"] == name for name, r in refs.items())
        assert not refs["AWS_ACCESS_KEY_ID"].get("optional") and not refs["AWS_SECRET_ACCESS_KEY"].get("optional")
        assert all(refs[k]["optional"] is True for k in refs if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
        assert "envFrom" not in c


def test_without_a_secret_ref_pods_get_no_credential_variables():
    raw = {**EXAMPLES["ModelTraining"]["spec"]}
    raw.pop("storage")
    job = render_job({**OWNER, "kind": "ModelTraining"}, ModelTrainingSpec.model_validate(raw), 1, "Created")
    names = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not {n for n in names if n.startswith("AWS_")}


def test_what_the_operator_sets_wins_over_the_pod_template():
    template = {"labels": {"app.kubernetes.io/managed-by": "someone-else", "modelloop.dev/deployment": "other",
                           "modelloop.dev/anything": "x", "team": "ml"},
                "annotations": {"modelloop.dev/model-sha256": "0" * 64, "modelloop.dev/model-version": "99",
                                "prometheus.io/port": "9999", "note": "kept"},
                "env": [{"name": "AWS_ACCESS_KEY_ID", "value": "mine"}, {"name": "HOME", "value": "/root"},
                        {"name": "LOG_FORMAT", "value": "json"}]}
    dep = _deployment(podTemplate=template)
    meta = dep["spec"]["template"]["metadata"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelloop"
    assert meta["labels"]["modelloop.dev/deployment"] == "churn" and "modelloop.dev/anything" not in meta["labels"]
    assert meta["labels"]["team"] == "ml"
    assert meta["annotations"]["modelloop.dev/model-sha256"] == "ab" * 32
    assert meta["annotations"]["modelloop.dev/model-version"] == "2"
    assert meta["annotations"]["prometheus.io/port"] == "8080" and meta["annotations"]["note"] == "kept"
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {}
    for e in env:
        assert e["name"] not in by_name, f"{e['name']} rendered twice"
        by_name[e["name"]] = e
    assert "secretKeyRef" in by_name["AWS_ACCESS_KEY_ID"]["valueFrom"]
    assert by_name["HOME"]["value"] == "/tmp" and by_name["LOG_FORMAT"]["value"] == "json"


def test_reserved_environment_names_from_objects_stored_before_the_schema_refused_them_are_dropped():
    spec = training_spec(podTemplate={"env": [{"name": "MODELLOOP_TRAINING_SPEC", "value": "{}"},
                                              {"name": "MODELLOOP_PVC_ROOT", "value": "/"}]})
    job = render_job({**OWNER, "kind": "ModelTraining"}, spec, 1, "Created")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    specs = [e for e in env if e["name"] == "MODELLOOP_TRAINING_SPEC"]
    assert len(specs) == 1 and json.loads(specs[0]["value"])["dataset"]["target"] == "churned"
    assert [e["value"] for e in env if e["name"] == "MODELLOOP_PVC_ROOT"] == ["/var/lib/modelloop/pvc"]


def test_training_pods_report_only_the_trainers_message_never_log_lines():
    job = render_job({**OWNER, "kind": "ModelTraining"}, training_spec(), 1, "Created")
    assert job["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] == "File"


def test_server_exposes_the_sketch_on_its_own_port_which_the_service_does_not_publish():
    dep = _deployment()
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "sketch": 8081}
    assert c["args"][c["args"].index("--sketch-port") + 1] == "8081"
    svc = render_service({**OWNER, "kind": "ModelDeployment"})
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080]


def test_network_policy_opens_the_sketch_port_to_the_operator_pods_only():
    settings = Settings(operator_namespace="ops", operator_pod_labels={"app.kubernetes.io/name": "modelloop-operator",
                                                                      "app.kubernetes.io/instance": "ml"})
    np = render_network_policy({**OWNER, "kind": "ModelDeployment"}, settings)
    assert np["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    spec = np["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "modelloop-server",
                                                  "modelloop.dev/deployment": "churn"}
    assert spec["policyTypes"] == ["Ingress"]
    open_port, sketch = spec["ingress"]
    assert open_port == {"ports": [{"protocol": "TCP", "port": 8080}]}  # inference and /metrics, from anywhere
    assert sketch["ports"] == [{"protocol": "TCP", "port": 8081}]
    assert sketch["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "modelloop-operator",
                                                               "app.kubernetes.io/instance": "ml"}}}]


def test_pvc_uris_mount_their_claims():
    spec = training_spec(dataset={"uri": "pvc://data/churn.csv", "target": "churned"},
                         output={"uri": "pvc://models/churn"})
    pod = render_job({**OWNER, "kind": "ModelTraining"}, spec, 1, "Created")["spec"]["template"]["spec"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["data", "models"]
    mounts = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]]
    assert "/var/lib/modelloop/pvc/data" in mounts and "/var/lib/modelloop/pvc/models" in mounts


def test_retrain_with_fresh_data_changes_only_the_dataset_uri():
    spec = training_spec()
    fresh = effective_spec(spec, "s3://b/fresh.csv")
    assert fresh.dataset.uri == "s3://b/fresh.csv" and fresh.dataset.target == spec.dataset.target
    assert effective_spec(spec, None) is spec


def test_pod_template_overrides_apply_without_breaking_selectors():
    spec = training_spec(podTemplate={"labels": {"modelloop.dev/training": "evil", "team": "ml"},
                                      "nodeSelector": {"type": "kwok"},
                                      "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}]})
    job = render_job({**OWNER, "kind": "ModelTraining"}, spec, 1, "Created")
    t = job["spec"]["template"]
    assert t["metadata"]["labels"]["modelloop.dev/training"] == "churn"
    assert t["metadata"]["labels"]["team"] == "ml"
    assert t["spec"]["nodeSelector"] == {"type": "kwok"}


def test_deployment_carries_version_in_pod_template_and_never_reduces_availability():
    spec = ModelDeploymentSpec.model_validate(EXAMPLES["ModelDeployment"]["spec"])
    dep = render_deployment({**OWNER, "kind": "ModelDeployment"}, spec, ServedModel(7, "s3://b/m/v7", "cd" * 32, "dc" * 32))
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["modelloop.dev/model-version"] == "7" and ann["modelloop.dev/model-sha256"] == "cd" * 32
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert dep["spec"]["replicas"] == 2
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "--model-uri" in c["args"] and "s3://b/m/v7" in c["args"]
    assert render_pdb({**OWNER, "kind": "ModelDeployment"}, spec)["spec"]["maxUnavailable"] == 1
    assert render_hpa({**OWNER, "kind": "ModelDeployment"}, spec) is None
    assert render_service({**OWNER, "kind": "ModelDeployment"})["spec"]["ports"][0]["port"] == 8080


def test_server_pods_are_pinned_to_the_digests_of_the_model_and_its_metadata():
    spec = ModelDeploymentSpec.model_validate(EXAMPLES["ModelDeployment"]["spec"])
    model = ServedModel(7, "s3://b/m/v7", "cd" * 32, "dc" * 32)
    dep = render_deployment({**OWNER, "kind": "ModelDeployment"}, spec, model)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELLOOP_MODEL_SHA256"] == "cd" * 32 and env["MODELLOOP_METADATA_SHA256"] == "dc" * 32
    assert dep["spec"]["template"]["metadata"]["annotations"]["modelloop.dev/metadata-sha256"] == "dc" * 32


def test_server_pods_get_the_runtime_of_the_spec_default_auto():
    spec = EXAMPLES["ModelDeployment"]["spec"]
    model = ServedModel(7, "s3://b/m/v7", "cd" * 32, "dc" * 32)
    for server, runtime in (({}, "auto"), ({"runtime": "onnx"}, "onnx"), ({"runtime": "sklearn"}, "sklearn")):
        parsed = ModelDeploymentSpec.model_validate({**spec, "server": server})
        dep = render_deployment({**OWNER, "kind": "ModelDeployment"}, parsed, model)
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MODELLOOP_RUNTIME"] == runtime


def test_autoscaling_renders_an_hpa_and_leaves_replicas_to_it():
    raw = {**EXAMPLES["ModelDeployment"]["spec"], "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}
    raw.pop("replicas")
    spec = ModelDeploymentSpec.model_validate(raw)
    dep = render_deployment({**OWNER, "kind": "ModelDeployment"}, spec, ServedModel(1, "s3://b/m/v1", "e" * 64, "f" * 64))
    assert "replicas" not in dep["spec"]
    hpa = render_hpa({**OWNER, "kind": "ModelDeployment"}, spec)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)


def test_single_replica_has_no_pdb():
    raw = {**EXAMPLES["ModelDeployment"]["spec"], "replicas": 1}
    assert render_pdb({**OWNER, "kind": "ModelDeployment"}, ModelDeploymentSpec.model_validate(raw)) is None


def test_run_triggers_generation_and_retrain_requests():
    assert wanted_trigger(1, [], None, None) == "Created"
    runs = [{"generation": 1, "result": "Succeeded"}]
    assert wanted_trigger(1, runs, None, None) is None
    assert wanted_trigger(2, runs, None, None) == "SpecChanged"
    assert wanted_trigger(1, runs, "drift at 10:00", None) == "RetrainRequested"
    assert wanted_trigger(1, runs, "drift at 10:00", "drift at 10:00") is None


def test_versions_only_grow():
    assert next_version({}, []) == 1
    assert next_version({"nextVersion": 4, "latestVersion": 2}, [1, 2]) == 4
    assert next_version({"latestVersion": 2, "runs": [{"version": 3}]}, []) == 4
    assert next_version({}, [1, 5]) == 6  # a recreated resource writing to an output that has versions


def test_job_outcome_and_failure_reason_from_the_termination_message():
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    pod = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {"containerStatuses": [
        {"state": {"terminated": {"exitCode": 4, "message": "DatasetInvalid: column 'churned' missing\n"}}}]}}
    assert job_outcome(job) == "Failed"
    assert job_failure_message(job, [pod]) == "exit code 4: DatasetInvalid: column 'churned' missing"
    assert job_outcome({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "Succeeded"
    assert job_outcome({"status": {}}) is None


def test_rollout_state_reads_the_deployment_of_that_version():
    def dep(version, **status):
        return {"metadata": {"generation": 2}, "spec": {"replicas": 2, "template": {"metadata": {
            "annotations": {"modelloop.dev/model-version": str(version)}}}}, "status": {"observedGeneration": 2, **status}}
    assert rollout_state(None, 1) == "Missing"
    assert rollout_state(dep(1, replicas=2, updatedReplicas=2, availableReplicas=2), 1) == "Available"
    assert rollout_state(dep(1, replicas=3, updatedReplicas=2, availableReplicas=2), 1) == "Progressing"
    assert rollout_state(dep(1, replicas=2, updatedReplicas=2, availableReplicas=2), 2) == "Progressing"
    failed = dep(2, replicas=3, updatedReplicas=1, availableReplicas=2, conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}])
    assert rollout_state(failed, 2) == "Failed"


def test_rendered_pods_get_no_service_link_variables():
    """A Service in the user's namespace named like a setting (modelloop-model-sha256 → MODELLOOP_MODEL_SHA256_...)
    must not reach the pods' environment."""
    job = render_job({**OWNER, "kind": "ModelTraining"}, training_spec(), 1, "Created")
    assert job["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert _deployment()["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_pods_without_resources_get_defaults_and_are_not_best_effort():
    spec = {k: v for k, v in EXAMPLES["ModelDeployment"]["spec"].items() if k != "resources"}
    server = render_deployment({**OWNER, "kind": "ModelDeployment"}, ModelDeploymentSpec.model_validate(spec),
                               ServedModel(2, "s3://b/m/v2", "ab" * 32, "ba" * 32))
    res = server["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    raw = {k: v for k, v in training_spec().model_dump(by_alias=True, exclude_none=True).items() if k != "resources"}
    job = render_job({**OWNER, "kind": "ModelTraining"}, type(training_spec()).model_validate(raw), 1, "Created")
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]


def test_a_run_records_why_its_version_has_no_model_onnx():
    assert onnx_skipped({"onnx": {"file": "model.onnx", "sha256": "a" * 64}}) is None
    assert onnx_skipped({"onnx": {"skipped": "skl2onnx has no converter for KernelRidge"}}) == (
        "skl2onnx has no converter for KernelRidge")
    assert onnx_skipped({}) == "the version was written before modelloop exported ONNX"


def test_feedback_reaches_the_servers_with_the_pod_name_and_a_writable_claim():
    dep = _deployment({"feedback": {"uri": "pvc://records/churn", "maxDelay": "24h", "retention": "48h",
                                    "logInputs": True}})
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MODELLOOP_FEEDBACK_URI"]["value"] == "pvc://records/churn"
    assert env["MODELLOOP_FEEDBACK_MAX_DELAY_SECONDS"]["value"] == "86400"
    assert env["MODELLOOP_FEEDBACK_RETENTION_SECONDS"]["value"] == "172800"
    assert env["MODELLOOP_FEEDBACK_LOG_INPUTS"]["value"] == "true"
    assert env["MODELLOOP_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"records": False}  # the model (s3://) needs no claim; the records' claim is written


def test_without_feedback_nothing_is_recorded():
    spec = {k: v for k, v in EXAMPLES["ModelDeployment"]["spec"].items() if k != "feedback"}
    dep = render_deployment({**OWNER, "kind": "ModelDeployment"}, ModelDeploymentSpec.model_validate(spec),
                            ServedModel(2, "pvc://models/m/v2", "ab" * 32, "ba" * 32))
    pod = dep["spec"]["template"]["spec"]
    assert not [e for e in pod["containers"][0]["env"] if e["name"].startswith("MODELLOOP_FEEDBACK")]
    assert [v["persistentVolumeClaim"]["readOnly"] for v in pod["volumes"] if "persistentVolumeClaim" in v] == [True]
