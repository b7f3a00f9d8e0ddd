"""infra/k8s/ manifests against the Flink Kubernetes Operator's CRD schema, and against the image.

No Kubernetes cluster runs here, so the manifests are checked the way the API server would check
them: the ``openAPIV3Schema`` of the operator's CRDs (a trimmed copy in infra/k8s/crd/, source
and version noted there) with strict field validation, i.e. an unknown field is an error, as
``kubectl apply --validate=strict`` makes it. Then their values are checked against the pins and
paths of setup.py, the poms and the Dockerfile.
"""

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from infra import package
from infra.paths import INFRA_DIR
from infra.servers.flink import JIT_OPTS, prometheus_settings
from jobs.config import ENV_PREFIX, NudgeflowConfig

K8S = INFRA_DIR / "k8s"
CRD = K8S / "crd" / "flink-kubernetes-operator-1.15.0.json"
MANIFESTS = sorted(K8S.glob("*.yaml"))
DOCKERFILE = (INFRA_DIR / "docker" / "Dockerfile").read_text()


def strict(node):
    """The schema with ``additionalProperties: false`` wherever the API server prunes fields."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validators() -> dict[str, tuple[str, jsonschema.Draft202012Validator]]:
    kinds = json.loads(CRD.read_text())["kinds"]
    result = {}
    for kind, entry in kinds.items():
        schema = strict(entry["schema"])
        # apiVersion, kind and metadata are the API server's own; the CRD leaves them out
        schema["properties"].update({"apiVersion": {"type": "string"},
                                     "kind": {"type": "string"},
                                     "metadata": {"type": "object"}})
        schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
        jsonschema.Draft202012Validator.check_schema(schema)
        result[kind] = (entry["apiVersion"], jsonschema.Draft202012Validator(schema))
    return result


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_documents() -> list[dict]:
    return [d for path in MANIFESTS for d in documents(path)]


def of_kind(kind: str) -> list[dict]:
    return [d for d in all_documents() if d["kind"] == kind]


def errors(validators, doc: dict) -> list[str]:
    api_version, validator = validators[doc["kind"]]
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
             for e in validator.iter_errors(doc)]
    if doc["apiVersion"] != api_version:
        found.append(f"apiVersion {doc['apiVersion']} is not {api_version}")
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_operator_resource_matches_the_crd_schema(validators, path):
    for doc in documents(path):
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        if doc["kind"] in validators:
            assert errors(validators, doc) == [], path.name
        else:
            assert (doc["apiVersion"], doc["kind"]) == ("v1", "ConfigMap"), path.name
            assert all(isinstance(v, str) for v in doc["data"].values())


def test_both_modes_are_there():
    deployments = {d["metadata"]["name"]: d for d in of_kind("FlinkDeployment")}
    assert "job" in deployments["nudgeflow"]["spec"]  # application mode
    [session_job] = of_kind("FlinkSessionJob")
    session = deployments[session_job["spec"]["deploymentName"]]
    assert "job" not in session["spec"]  # a session cluster: jobs come as FlinkSessionJobs


def _application() -> dict:
    return copy.deepcopy(next(d for d in of_kind("FlinkDeployment") if "job" in d["spec"]))


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"]["job"].update(entrypoint="x"), "'entrypoint' was unexpected"),
    (lambda d: d["spec"].update(jobManger={}), "'jobManger' was unexpected"),
    (lambda d: d["spec"]["podTemplate"]["spec"]["containers"][0].update(portz=[]),
     "'portz' was unexpected"),
    (lambda d: d["spec"]["jobManager"].update(replicas="one"), "'one' is not of type 'integer'"),
    (lambda d: d["spec"]["taskManager"]["resource"].update(cpu="two"),
     "'two' is not of type 'number'"),
    (lambda d: d["spec"]["job"].update(upgradeMode="savepoints"), "is not one of"),
    (lambda d: d["spec"].update(flinkVersion="v2_9"), "is not one of"),
    (lambda d: d["spec"]["job"].update(args="-pym jobs.job"), "is not of type 'array'"),
], ids=["unknown-job-field", "misspelt-spec-field", "unknown-container-field", "replicas-type",
        "cpu-type", "upgrade-mode", "flink-version", "args-type"])
def test_a_wrong_manifest_is_refused(validators, mutate, expected):
    doc = _application()
    mutate(doc)
    found = errors(validators, doc)
    assert any(expected in e for e in found), found


def test_the_deployments_run_the_image_and_archive_of_this_checkout():
    version = package.setup_metadata().version
    flink = package.setup_metadata().install_requires
    flink_version = next(r.split("==")[1] for r in flink if r.startswith("apache-flink=="))
    major_minor = "_".join(flink_version.split(".")[:2])
    for doc in of_kind("FlinkDeployment"):
        spec = doc["spec"]
        assert spec["image"] == f"nudgeflow:{version}"
        assert spec["flinkVersion"] == f"v{major_minor}"
        conf = spec["flinkConfiguration"]
        # the interpreter the image installs (infra/docker/Dockerfile)
        assert conf["python.executable"] == conf["python.client.executable"]
        assert conf["python.executable"].startswith("/opt/nudgeflow/venv/")
        assert "/opt/nudgeflow/venv" in DOCKERFILE
        # the savepoint upgrade mode and restarts need these directories
        for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir",
                    "high-availability.storageDir"):
            assert conf[key].startswith("s3://")
        for key, value in prometheus_settings().items():
            if key != "metrics.reporter.prom.port":  # a port range locally, one port per pod
                assert conf[key] == value
        assert conf["env.java.opts.taskmanager"] == JIT_OPTS  # the local stack's JIT
        [container] = spec["podTemplate"]["spec"]["containers"]
        assert container["name"] == "flink-main-container"
        plugins = {e["name"]: e["value"] for e in container["env"]}["ENABLE_BUILT_IN_PLUGINS"]
        assert plugins == f"flink-s3-fs-hadoop-{flink_version}.jar"
        assert container["ports"][0]["containerPort"] == int(conf["metrics.reporter.prom.port"])

    jobs = [d["spec"]["job"] for d in of_kind("FlinkDeployment") + of_kind("FlinkSessionJob")
            if "job" in d["spec"]]
    assert len(jobs) == 2
    for job in jobs:
        assert job["jarURI"].endswith(f"/flink-python-{flink_version}.jar")
        assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
        args = job["args"]
        assert args[args.index("-pym") + 1] == "jobs.job"
        # the archive where the Dockerfile puts it
        assert f" {args[args.index('-pyfs') + 1]}\n" in DOCKERFILE
        assert job["upgradeMode"] == "savepoint"


def test_the_configmap_sets_real_settings_and_the_deployments_parallelism():
    [config] = of_kind("ConfigMap")
    fields = {ENV_PREFIX + name.upper() for name in NudgeflowConfig.__dataclass_fields__}
    assert set(config["data"]) <= fields
    for doc in of_kind("FlinkDeployment") + of_kind("FlinkSessionJob"):
        if "job" in doc["spec"]:
            # the job sets its own parallelism from the configuration: keep the two equal
            assert doc["spec"]["job"]["parallelism"] == int(config["data"]["NUDGEFLOW_PARALLELISM"])
        if doc["kind"] == "FlinkDeployment":
            env_from = doc["spec"]["podTemplate"]["spec"]["containers"][0]["envFrom"]
            assert {"configMapRef": {"name": config["metadata"]["name"]}} in env_from
