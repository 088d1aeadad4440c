"""launch/k8s/rayjob.yaml against the fields of the KubeRay RayJob CRD (apiVersion ray.io/v1) it uses.

No cluster here, so the CRD's schema is written down below from KubeRay's Go types
(ray-operator/apis/ray/v1/rayjob_types.go and raycluster_types.go, KubeRay v1.1+): for every field the
manifest may use, its type and whether it is required. The check rejects unknown fields (a typo is
silently dropped by the API server with `kubectl apply` in non-strict mode, and the job runs without
it) and wrong types — notably rayStartParams, a map of *strings*: `num-gpus: 8` is refused by the CRD.
"""
import shlex
from pathlib import Path

import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "launch" / "k8s" / "rayjob.yaml"

STR, INT, BOOL, FLOAT = str, int, bool, (int, float)
STR_MAP = "map[string]string"
POD_TEMPLATE = "PodTemplateSpec"

# field → (type, required). Nested dicts are objects; [dict] is a list of such objects.
RAY_START_PARAMS = (STR_MAP, False)
HEAD_GROUP = {"rayStartParams": RAY_START_PARAMS, "template": (POD_TEMPLATE, True), "serviceType": (STR, False),
              "enableIngress": (BOOL, False), "headService": (dict, False)}
WORKER_GROUP = {"groupName": (STR, True), "replicas": (INT, False), "minReplicas": (INT, False),
                "maxReplicas": (INT, False), "rayStartParams": RAY_START_PARAMS, "template": (POD_TEMPLATE, True),
                "numOfHosts": (INT, False), "suspend": (BOOL, False), "idleTimeoutSeconds": (INT, False),
                "scaleStrategy": (dict, False)}
RAY_CLUSTER_SPEC = {"rayVersion": (STR, False), "enableInTreeAutoscaling": (BOOL, False),
                    "autoscalerOptions": (dict, False), "headServiceAnnotations": (STR_MAP, False),
                    "headGroupSpec": (HEAD_GROUP, True), "workerGroupSpecs": ([WORKER_GROUP], False),
                    "suspend": (BOOL, False), "gcsFaultToleranceOptions": (dict, False),
                    "authOptions": ({"mode": ({"disabled", "token"}, False), "secretName": (STR, False),
                                     "enableK8sTokenAuth": (BOOL, False)}, False)}  # KubeRay v1.5.1+
RAY_JOB_SPEC = {
    "entrypoint": (STR, False), "runtimeEnvYAML": (STR, False), "jobId": (STR, False),
    "metadata": (STR_MAP, False), "clusterSelector": (STR_MAP, False),
    "submissionMode": ({"K8sJobMode", "HTTPMode", "InteractiveMode"}, False),
    "shutdownAfterJobFinishes": (BOOL, False), "ttlSecondsAfterFinished": (INT, False),
    "activeDeadlineSeconds": (INT, False), "backoffLimit": (INT, False), "suspend": (BOOL, False),
    "entrypointNumCpus": (FLOAT, False), "entrypointNumGpus": (FLOAT, False), "entrypointResources": (STR, False),
    "submitterPodTemplate": (POD_TEMPLATE, False), "submitterConfig": (dict, False),
    "rayClusterSpec": (RAY_CLUSTER_SPEC, False), "deletionStrategy": (dict, False), "managedBy": (STR, False),
}
RAY_JOB = {"apiVersion": ({"ray.io/v1"}, True), "kind": ({"RayJob"}, True), "metadata": (dict, True),
           "spec": (RAY_JOB_SPEC, True)}
CONTAINER_KEYS = {"name", "image", "command", "args", "env", "envFrom", "ports", "resources", "volumeMounts",
                  "securityContext", "lifecycle", "readinessProbe", "livenessProbe", "imagePullPolicy"}
QUANTITY = (str, int, float)


def schema_errors(value, schema, path: str) -> list[str]:
    """Every mismatch between `value` and `schema` (see the table above), as 'path: problem'."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        errors = [f"{path}.{key}: unknown field" for key in value if key not in schema]
        for key, (sub, required) in schema.items():
            if key not in value:
                errors += [f"{path}.{key}: required"] if required else []
            else:
                errors += schema_errors(value[key], sub, f"{path}.{key}")
        return errors
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [e for i, item in enumerate(value) for e in schema_errors(item, schema[0], f"{path}[{i}]")]
    if isinstance(schema, set):
        return [] if value in schema else [f"{path}: {value!r} not one of {sorted(schema)}"]
    if schema == STR_MAP:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return [f"{path}: expected a map of strings (quote numbers: \"8\"), got {value!r}"]
        return []
    if schema == POD_TEMPLATE:
        return pod_template_errors(value, path)
    if schema is INT and isinstance(value, bool) or not isinstance(value, schema):
        return [f"{path}: expected {getattr(schema, '__name__', schema)}, got {value!r}"]
    return []


def pod_template_errors(template, path: str) -> list[str]:
    spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(spec, dict) or not spec.get("containers"):
        return [f"{path}.spec.containers: required (a PodTemplateSpec with at least one container)"]
    errors = []
    for i, container in enumerate(spec["containers"]):
        where = f"{path}.spec.containers[{i}]"
        errors += [f"{where}.{k}: unknown field" for k in container if k not in CONTAINER_KEYS]
        errors += [f"{where}.{k}: required" for k in ("name", "image") if not container.get(k)]
        for kind in ("requests", "limits"):
            for name, quantity in container.get("resources", {}).get(kind, {}).items():
                if not isinstance(quantity, QUANTITY) or isinstance(quantity, bool):
                    errors.append(f"{where}.resources.{kind}.{name}: not a quantity: {quantity!r}")
    return errors


def load():
    return yaml.safe_load(MANIFEST.read_text())


def containers(group):
    return group["template"]["spec"]["containers"]


def test_manifest_matches_the_rayjob_crd_fields():
    assert schema_errors(load(), RAY_JOB, "RayJob") == []


def test_schema_check_catches_typical_mistakes():
    """The validator must fail on what it is meant to catch, or the test above proves nothing."""
    job = load()
    job["spec"]["shutdownAfterJobFinish"] = True  # typo
    job["spec"]["ttlSecondsAfterFinished"] = "600"  # wrong type
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 8  # not a string
    del job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    errors = schema_errors(job, RAY_JOB, "RayJob")
    assert len(errors) == 4, errors


def test_gpu_workers_request_what_they_limit_and_declare_it_to_ray():
    spec = load()["spec"]["rayClusterSpec"]
    workers = spec["workerGroupSpecs"]
    assert workers, "a GPU worker group is required"
    for group in workers:
        for container in containers(group):
            resources = container["resources"]
            gpus = resources["limits"]["nvidia.com/gpu"]
            # Kubernetes refuses GPU requests that differ from limits (extended resources cannot overcommit).
            assert resources["requests"]["nvidia.com/gpu"] == gpus and int(gpus) >= 1
            assert group["rayStartParams"]["num-gpus"] == str(gpus)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    head = containers(spec["headGroupSpec"])[0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    assert all(containers(g)[0]["image"] == head["image"] for g in workers)  # one image: same rlhf and Ray


def test_entrypoint_runs_a_recipe_and_the_cluster_is_cleaned_up():
    spec = load()["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "rlhf" and argv[1].startswith("recipe=")
    assert all("=" in arg for arg in argv[1:])  # recipe=NAME and key=value overrides only
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(env) <= {"env_vars", "pip", "working_dir", "py_modules", "excludes", "conda", "container"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"


def test_the_cluster_requires_ray_token_authentication():
    """Issue 16 §16: the dashboard listens on the pod network, so every request must carry the token."""
    spec = yaml.safe_load(MANIFEST.read_text())["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)  # token auth needs Ray 2.52+
