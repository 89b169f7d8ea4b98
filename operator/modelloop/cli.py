"""`modelloop`: the command a person runs beside kubectl.

    modelloop report dmon/NAME -n NAMESPACE > report.html

prints the HTML report a DriftMonitor wrote to its model's store at its last decision (modelloop.report): it reads
the monitor's status.report.uri with the kubeconfig's identity, and the store with the credentials of the
watched ModelDeployment's Secret (the ones the operator uses), or with the caller's own AWS_* environment when
--own-credentials is given. --s3-endpoint replaces the Secret's endpoint where the cluster's is not reachable
from here.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from kubernetes.client.exceptions import ApiException

from . import kube
from .api.deployment import ModelDeploymentSpec
from .artifacts import StorageError, read_object
from .controllers import storage
from .names import API_VERSION, DEPLOYMENT, MONITOR

MAX_REPORT_BYTES = 32 * 1024 * 1024
MONITOR_NAMES = {"dmon", "driftmonitor", "driftmonitors", MONITOR.plural, f"{MONITOR.plural}.{API_VERSION.split('/')[0]}"}


class Refused(Exception):
    """What the command cannot do, said to the person who asked."""


def monitor_name(resource: str) -> str:
    kind, _, name = resource.rpartition("/")
    if not name or (kind and kind.lower() not in MONITOR_NAMES):
        raise Refused(f"'{resource}' is not a DriftMonitor: give dmon/NAME (or driftmonitor/NAME)")
    return name


def fetch_report(name: str, namespace: str, *, own_credentials: bool = False, endpoint: str | None = None) -> bytes:
    try:
        monitor = kube.get(API_VERSION, MONITOR.kind, namespace, name)
    except ApiException as e:
        raise Refused(f"cannot read DriftMonitor {namespace}/{name}: {e.status} {e.reason}") from e
    if monitor is None:
        raise Refused(f"DriftMonitor {namespace}/{name} not found")
    uri = ((monitor.get("status") or {}).get("report") or {}).get("uri")
    if not uri:
        raise Refused(f"DriftMonitor {namespace}/{name} has no report yet: its status.report is empty until a check "
                      "decides something (see `kubectl describe dmon {name} -n {namespace}`)")
    if own_credentials:
        credentials: dict[str, str] = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    else:
        credentials = dict(_deployment_credentials(monitor, namespace))
    if endpoint:
        credentials["AWS_ENDPOINT_URL"] = endpoint
    try:
        return read_object(uri, field="status.report.uri", credentials=credentials, max_bytes=MAX_REPORT_BYTES)
    except StorageError as e:
        raise Refused(f"cannot read the report at {uri}: {e}") from e


def _deployment_credentials(monitor: dict, namespace: str) -> storage.Credentials:
    deployment = monitor["spec"]["deploymentRef"]["name"]
    dep = kube.get(API_VERSION, DEPLOYMENT.kind, namespace, deployment)
    if dep is None:
        raise Refused(f"ModelDeployment {namespace}/{deployment}, which the monitor watches, is gone; "
                      "use --own-credentials to read the store with your AWS_* environment")
    try:
        spec = ModelDeploymentSpec.model_validate(dep["spec"])
        return storage.credentials_from_secret(namespace, storage.deployment_storage(namespace, spec))
    except (storage.StorageAccessError, ApiException) as e:
        raise Refused(f"cannot read the store's credentials ({e}); use --own-credentials to read the store with "
                      "your AWS_* environment") from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelloop", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="print a DriftMonitor's HTML report (dmon/NAME)")
    report.add_argument("resource", help="dmon/NAME")
    report.add_argument("-n", "--namespace", default="default")
    report.add_argument("-o", "--output", help="write to this file instead of standard output")
    report.add_argument("--kubeconfig", help="the kubeconfig to use (default: $KUBECONFIG, ~/.kube/config)")
    report.add_argument("--own-credentials", action="store_true",
                        help="read the store with your AWS_* environment instead of the deployment's Secret")
    report.add_argument("--s3-endpoint", help="the S3 endpoint to use instead of the Secret's AWS_ENDPOINT_URL")
    args = parser.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    try:
        page = fetch_report(monitor_name(args.resource), args.namespace, own_credentials=args.own_credentials,
                            endpoint=args.s3_endpoint)
    except Refused as e:
        print(f"modelloop report: {e}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "wb") as out:
            out.write(page)
    else:
        sys.stdout.buffer.write(page)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
