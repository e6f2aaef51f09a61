"""cluster/: every manifest parses, validates OFFLINE against the Kubernetes and KubeRay schemas, and agrees with the
others (image tags, versions, resource names, URIs, CLI flags).

Schemas:
* core Kubernetes kinds: the strict JSON schemas shipped by the ``kubernetes-validate`` package (no network);
* KubeRay kinds: ``cluster/schemas/kuberay-v1-subset.schema.yaml`` (hand-written, closed objects, pod templates checked
  against the Kubernetes PodTemplateSpec) and, when the official CRD files are present
  (``$VSSFLOW_KUBERAY_CRDS`` or ``../shared/schemas/kuberay/``), those too, strictly.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
K8S_VERSION = "1.32.0"  # the Kubernetes API version the manifests are checked against (KubeRay 1.x supports it)
OVERLAYS = [None, "kind"]
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}

try:  # the Kubernetes JSON schemas, offline (pyproject dev extra)
    import kubernetes_validate
except ModuleNotFoundError as e:  # a plain failure of the schema tests, not a silent skip
    raise ModuleNotFoundError("tests/test_cluster_config.py needs: pip install kubernetes-validate==1.37.0") from e
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_render():
    spec = importlib.util.spec_from_file_location("vssflow_cluster_render", CLUSTER / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


render = _load_render()


# ---- helpers -----------------------------------------------------------------------------------------------------
def _docs(overlay: str | None) -> list[dict]:
    return [d for docs in render.render(overlay).values() for d in docs]


def _k8s_definitions() -> dict:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return json.loads((root / f"v{K8S_VERSION}-local-strict" / "_definitions.json").read_text())


def _subset_validator(kind: str) -> jsonschema.Draft202012Validator:
    from referencing import Registry, Resource

    subset = yaml.safe_load((CLUSTER / "schemas" / "kuberay-v1-subset.schema.yaml").read_text())
    registry = Registry().with_resources(
        [
            (subset["$id"], Resource.from_contents(subset)),
            ("https://kubernetes.io/api/_definitions.json", Resource.from_contents(_k8s_definitions())),
        ]
    )
    return jsonschema.Draft202012Validator({"$ref": f"{subset['$id']}#/$defs/{kind}"}, registry=registry)


def _crd_dir() -> Path | None:
    candidates = [
        os.environ.get("VSSFLOW_KUBERAY_CRDS"),
        REPO.parent / "shared" / "schemas" / "kuberay",
        CLUSTER / "schemas" / "kuberay",
    ]
    for c in candidates:
        if c and all((Path(c) / f).is_file() for f in CRD_FILES.values()):
            return Path(c)
    return None


def _strict(node):
    """An OpenAPI v3 CRD schema as a closed JSON schema: unknown fields are errors (kubectl --validate=strict)."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    open_ = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_:
        out["additionalProperties"] = False
    return out


def _crd_schema(kind: str) -> dict:
    crd = yaml.load((_crd_dir() / CRD_FILES[kind]).read_text(), Loader=_YamlLoader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def _walk(node, path=()):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, i))


def _pod_templates(doc: dict) -> list[dict]:
    """Every pod template in a manifest (Deployments, StatefulSets, Jobs, RayCluster groups)."""
    return [n["template"] for _, n in _walk(doc) if isinstance(n.get("template"), dict) and "spec" in n["template"]]


def _containers(doc: dict) -> list[dict]:
    return [c for t in _pod_templates(doc) for c in t["spec"].get("containers", [])]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pin(name: str) -> str:
    project = _pyproject()["project"]
    deps = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([^;\s]+)", dep.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml has no == pin for {name}")


def _dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", path.read_text(), flags=re.M))


# ---- rendering -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_committed_rendered_manifests_are_up_to_date(overlay):
    rendered = render.render(overlay)
    out_dir = CLUSTER / "k8s" / "rendered" / (overlay or "default")
    on_disk = sorted(p.name for p in out_dir.glob("*.yaml"))
    assert on_disk == sorted(rendered), f"run: python cluster/render.py {'--overlay ' + overlay if overlay else ''}"
    for name, docs in rendered.items():
        committed = [d for d in yaml.safe_load_all((out_dir / name).read_text()) if d]
        assert committed == docs, f"{out_dir / name} is stale: python cluster/render.py {overlay or ''}"


def test_renderer_types_overrides_and_errors(tmp_path):
    values = render.load_values(sets=["cluster.gpu_workers.max_replicas=16", "serve.generator.min_replicas=3"])
    assert values["cluster"]["gpu_workers"]["max_replicas"] == 16
    docs = [d for docs in render.render(sets=["cluster.gpu_workers.max_replicas=16"]).values() for d in docs]
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    gpu = [g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == values["cluster"]["gpu_workers"]["group"]]
    assert gpu[0]["maxReplicas"] == 16 and isinstance(gpu[0]["maxReplicas"], int)
    assert values["image"]["tag"] == f"{values['versions']['vssflow']}-ray{values['versions']['ray']}-py311"
    with pytest.raises(render.RenderError, match="no value at 'nope.x'"):
        render._substitute({"a": "${nope.x}"}, values)
    with pytest.raises(render.RenderError, match="no overlay"):
        render.load_values("does-not-exist")
    with pytest.raises(render.RenderError, match="cycle"):
        bad = tmp_path / "values.yaml"
        bad.write_text("a: ${b}\nb: ${a}\n")
        render.load_values(values_file=bad)
    written = render.write(render.render("kind"), tmp_path / "out")
    assert {p.name for p in written} == {p.name for p in render.template_files()}
    assert render.main(["--overlay", "kind", "--out", str(tmp_path / "cli")]) == 0


# ---- schemas -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_validate_against_the_kubernetes_schema(overlay):
    core = [d for d in _docs(overlay) if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in core} >= {
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "NetworkPolicy",
    }
    for doc in core:
        # raises SchemaNotFoundError for an unknown kind/apiVersion, ValidationError for a bad field
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_kinds_validate_against_the_kuberay_subset_schema(overlay):
    docs = [d for d in _docs(overlay) if d["apiVersion"].startswith("ray.io/")]
    assert sorted(d["kind"] for d in docs) == ["RayCluster", "RayJob", "RayJob", "RayJob", "RayService"]
    for doc in docs:
        _subset_validator(doc["kind"]).validate(doc)


def test_validators_reject_broken_manifests():
    docs = _docs(None)
    rc = copy.deepcopy(next(d for d in docs if d["kind"] == "RayCluster"))
    broken = []
    b = copy.deepcopy(rc)
    b["spec"]["workerGroupSpec"] = b["spec"].pop("workerGroupSpecs")  # misspelt field
    broken.append(b)
    b = copy.deepcopy(rc)
    b["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"  # wrong type
    broken.append(b)
    b = copy.deepcopy(rc)
    b["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3  # inside the pod template
    broken.append(b)
    b = copy.deepcopy(rc)
    b["spec"]["autoscalerOptions"]["upscalingMode"] = "Fast"  # not in the enum
    broken.append(b)
    for doc in broken:
        assert list(_subset_validator("RayCluster").iter_errors(doc)), doc["spec"].keys()
    job = copy.deepcopy(next(d for d in docs if d["kind"] == "RayJob"))
    job["spec"]["rayClusterSpec"] = rc["spec"]  # both clusterSelector and its own cluster
    assert list(_subset_validator("RayJob").iter_errors(job))
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    svc = copy.deepcopy(next(d for d in docs if d["kind"] == "Service"))
    svc["spec"]["selektor"] = {}
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(svc, K8S_VERSION, strict=True)


def _check_subset_within(sub: dict, full: dict, defs: dict, path: str) -> None:
    if "$ref" in sub:
        if not sub["$ref"].startswith("#/$defs/"):
            return  # a Kubernetes definition, checked by kubernetes-validate
        sub = defs[sub["$ref"].split("/")[-1]]
    if "type" in sub and "type" in full:
        assert sub["type"] == full["type"], f"{path}: {sub['type']} here, {full['type']} in the CRD"
    for key, child in sub.get("properties", {}).items():
        assert key in full.get("properties", {}), f"{path}.{key} is not a field of the official CRD"
        _check_subset_within(child, full["properties"][key], defs, f"{path}.{key}")
    if "items" in sub:
        _check_subset_within(sub["items"], full["items"], defs, f"{path}[]")
    if isinstance(sub.get("additionalProperties"), dict):
        assert full.get("additionalProperties", {}).get("type") == sub["additionalProperties"]["type"], path


@pytest.mark.skipif(
    _crd_dir() is None,
    reason="official KubeRay CRD files not present (no PyPI/npm/Debian package ships them: docs/cluster.md, "
    "'Validation, offline'): set VSSFLOW_KUBERAY_CRDS to a directory with ray.io_rayclusters.yaml, "
    "ray.io_rayjobs.yaml, ray.io_rayservices.yaml (kuberay helm-chart/kuberay-operator/crds)",
)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_kinds_validate_against_the_official_crds(overlay):
    subset = yaml.safe_load((CLUSTER / "schemas" / "kuberay-v1-subset.schema.yaml").read_text())
    for kind in CRD_FILES:
        full = _crd_schema(kind)
        _check_subset_within(
            subset["$defs"][kind]["properties"]["spec"], full["properties"]["spec"], subset["$defs"], f"{kind}.spec"
        )
        validator = jsonschema.Draft7Validator(_strict(full))
        for doc in (d for d in _docs(overlay) if d["kind"] == kind):
            errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
            assert not errors, f"{kind}/{doc['metadata']['name']}: {errors[:5]}"
        bad = copy.deepcopy(next(d for d in _docs(overlay) if d["kind"] == kind))
        bad["spec"]["notAField"] = True
        assert list(validator.iter_errors(bad)), "the strict CRD schema must reject unknown fields"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_is_a_valid_ray_serve_config(overlay):
    from ray.serve.schema import ServeDeploySchema

    values = render.load_values(overlay)
    (svc,) = [d for d in _docs(overlay) if d["kind"] == "RayService"]
    config = ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.import_path == values["serve"]["import_path"]
    deployments = {d.name: d for d in app.deployments}
    gen, feat = deployments["GeneratorServer"], deployments["FeatureExtractor"]
    assert gen.autoscaling_config["max_replicas"] == values["serve"]["generator"]["max_replicas"]
    assert gen.ray_actor_options.num_gpus == values["serve"]["generator"]["gpus_per_replica"]
    assert feat.autoscaling_config["min_replicas"] == values["serve"]["features"]["min_replicas"]
    assert config.http_options.port == values["serve"]["http_port"]
    head = svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert values["serve"]["http_port"] in [p["containerPort"] for p in head["ports"]]


def test_serve_config_names_what_pipelines_serve_defines():
    import inspect

    values = render.load_values()
    module_name, attr = values["serve"]["import_path"].split(":")
    module = importlib.import_module(module_name)  # a module the RayService names but the checkout lacks fails here
    assert callable(getattr(module, attr, None)), (
        f"the RayService imports {values['serve']['import_path']}: {module_name} needs an application builder "
        f"`{attr}(args: dict)` (args: model, tracking_uri, device)"
    )
    (svc,) = [d for d in _docs(None) if d["kind"] == "RayService"]
    app = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]
    source = inspect.getsource(inspect.getmodule(getattr(module, attr)))  # the builder's module (a package re-exports)
    for dep in app["deployments"]:
        assert f'name="{dep["name"]}"' in source, f"{module_name} has no deployment named {dep['name']!r}"
    assert set(app["args"]) == {
        "model",
        "tracking_uri",
        "device",
        "generator_gpus",
        "extractor_device",
        "extractor_gpus",
        "api_token_file",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_deployment_asks_for_a_gpu_exactly_when_it_runs_on_cuda(overlay):
    """The RayService's args give each deployment its own device and GPU share, and they agree with the deployments'
    ray_actor_options. `device: cuda` once reached the CPU-only extractor too and the service never became ready;
    a device without its GPU share is refused by the application at start (check_devices), and here."""
    from pipelines.serve.app import config_from_service_args
    from pipelines.serve.config import check_devices
    from vssflow.errors import VssflowError

    (svc,) = [d for d in _docs(overlay) if d["kind"] == "RayService"]
    app = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]
    args = app["args"]
    config = config_from_service_args(args)
    check_devices(config)
    options = {d["name"]: d["ray_actor_options"] for d in app["deployments"]}
    assert options["GeneratorServer"]["num_gpus"] == config.generator.num_gpus
    assert options["FeatureExtractor"]["num_gpus"] == config.extractor.num_gpus
    assert config.extractor_device == "cpu" and config.extractor.num_gpus == 0
    if overlay is None:
        assert config.device == "cuda" and config.generator.num_gpus == 1
    refused = [
        ({"extractor_device": "cuda", "extractor_gpus": 0}, "extractor: device cuda without a GPU"),
        ({"device": "cuda", "generator_gpus": 0}, "generator: device cuda without a GPU"),
        ({"device": "cpu", "generator_gpus": 1}, "generator: 1 GPUs for a cpu deployment"),
    ]
    for bad, needle in refused:
        with pytest.raises(VssflowError, match=needle):
            check_devices(config_from_service_args({**args, **bad}))


# ---- agreement across files ----------------------------------------------------------------------------------------
def test_versions_agree_with_pyproject_and_dockerfiles():
    values = render.load_values()
    versions = values["versions"]
    assert versions["vssflow"] == _pyproject()["project"]["version"]
    assert versions["ray"] == _pin("ray")
    assert versions["mlflow"] == _pin("mlflow")
    assert _pyproject()["project"]["requires-python"].startswith(">=3.11") and versions["python"] == "py311"

    args = _dockerfile_args(CLUSTER / "docker" / "Dockerfile")
    assert args["RAY_VERSION"] == versions["ray"] and args["PYTHON_TAG"] == versions["python"]
    assert args["VARIANT"] in ("cpu", "gpu")
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{VARIANT\}$", text, flags=re.M)
    assert 'pip install ".[pipelines,assets]"' in text and "requirements/nodeps.txt" in text
    assert "scripts/install_system.sh" in text and "requirements/apt.txt" in text
    # Build args used inside the stage must be declared after FROM (Docker forgets the ones declared before it).
    stage = text.split("\nFROM ", 1)[1]
    declared = set(re.findall(r"^ARG (\w+)", stage, flags=re.M)) | set(re.findall(r"^ENV (\w+)", stage, flags=re.M))
    for name in set(re.findall(r"\$\{?(\w+)", "\n".join(stage.splitlines()[1:]))):
        if name.isupper() and not name.startswith(("PIP_", "HF_")):
            assert name in declared, f"the Dockerfile uses ${{{name}}} in the stage without an ARG after FROM"
    for copied in re.findall(r"^COPY (?:--chown=\S+ )?(\S+)", text, flags=re.M):
        assert (REPO / copied).exists(), f"the Dockerfile copies {copied}, which does not exist"

    mlflow_args = _dockerfile_args(CLUSTER / "docker" / "mlflow.Dockerfile")
    assert mlflow_args["MLFLOW_VERSION"] == versions["mlflow"]
    assert values["mlflow"]["image"].endswith(f":{versions['mlflow']}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_and_ray_versions_agree_across_manifests(overlay):
    values = render.load_values(overlay)
    repo, tag = values["image"]["repository"], values["image"]["tag"]
    ray_images = {f"{repo}:{tag}-cpu", f"{repo}:{tag}-gpu"}
    mlflow = values["mlflow"]
    others = {mlflow["image"], mlflow["postgres"]["image"], mlflow["minio"]["image"], mlflow["minio"]["mc_image"]}
    for doc in _docs(overlay):
        for c in _containers(doc):
            allowed = ray_images if doc["apiVersion"].startswith("ray.io/") else others
            assert c["image"] in allowed, f"{doc['kind']}/{doc['metadata']['name']}: {c['image']}"
        if doc["kind"] in ("RayCluster",):
            assert doc["spec"]["rayVersion"] == values["versions"]["ray"]
        if doc["kind"] == "RayService":
            assert doc["spec"]["rayClusterConfig"]["rayVersion"] == values["versions"]["ray"]
    (rc,) = [d for d in _docs(overlay) if d["kind"] == "RayCluster"]
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    gpu = groups[values["cluster"]["gpu_workers"]["group"]]["template"]["spec"]["containers"][0]
    assert gpu["image"].endswith("-gpu") and rc["spec"]["enableInTreeAutoscaling"] is True
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]


def test_compose_and_launcher_agree_with_values():
    values = render.load_values()
    mlflow = values["mlflow"]
    compose = yaml.safe_load((CLUSTER / "mlflow" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert services["postgres"]["image"] == mlflow["postgres"]["image"]
    assert services["minio"]["image"] == mlflow["minio"]["image"]
    assert services["minio-buckets"]["image"] == mlflow["minio"]["mc_image"]
    assert services["minio-buckets"]["environment"]["BUCKETS"] == mlflow["minio"]["buckets"]
    assert services["mlflow"]["image"].endswith(f":{values['versions']['mlflow']}")
    build = services["mlflow"]["build"]
    assert (CLUSTER / "mlflow" / build["context"] / build["dockerfile"]).is_file()
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    command = " ".join(services["mlflow"]["command"])
    assert f"--artifacts-destination={mlflow['artifacts_destination']}" in command
    assert f"/{mlflow['postgres']['database']}" in command and "--serve-artifacts" in command

    from ray.autoscaler._private.util import fillout_defaults, validate_config

    launcher = yaml.safe_load((CLUSTER / "launcher" / "aws.yaml").read_text())
    validate_config(fillout_defaults(copy.deepcopy(launcher)))  # Ray's own cluster-config JSON schema
    repo, tag = values["image"]["repository"], values["image"]["tag"]
    assert launcher["docker"]["image"] == f"{repo}:{tag}-cpu"
    assert launcher["available_node_types"]["gpu_workers"]["docker"]["worker_image"] == f"{repo}:{tag}-gpu"
    assert launcher["available_node_types"][launcher["head_node_type"]]["resources"] == {"CPU": 0}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_references_and_uris_resolve(overlay):
    values = render.load_values(overlay)
    docs = _docs(overlay)
    ns = values["namespace"]
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), d["metadata"]["name"]
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == ns, d["metadata"]["name"]
    assert set(by_kind["Namespace"]) == {ns}

    secrets = {s["name"]: set(s["keys"]) for s in values["secrets"]}  # created by the operator, not rendered
    for _, node in _walk(docs):
        if "secretKeyRef" in node:
            ref = node["secretKeyRef"]
            assert ref["key"] in secrets.get(ref["name"], ()), f"secret key {ref} is not defined"
        if "secretRef" in node:
            assert node["secretRef"]["name"] in secrets
        if "configMapRef" in node:
            assert node["configMapRef"]["name"] in by_kind["ConfigMap"]

    pod_labels = [t["metadata"].get("labels", {}) for d in docs for t in _pod_templates(d)]
    services = by_kind["Service"]
    for name, svc in services.items():
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= labels.items() for labels in pod_labels), f"Service {name} selects no pods"
    for sts in by_kind["StatefulSet"].values():
        assert sts["spec"]["serviceName"] in services
        assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()

    def service_port(url: str) -> None:
        u = urlparse(url)
        host = u.hostname.split(".")
        assert host[1:] == [ns, "svc", "cluster", "local"], url
        ports = [p["port"] for p in services[host[0]]["spec"]["ports"]]
        assert u.port in ports, f"{url}: Service {host[0]} exposes {ports}"

    service_port(values["mlflow"]["tracking_uri"])
    service_port(values["storage"]["s3_endpoint"])
    mlflow_args = " ".join(by_kind["Deployment"]["mlflow"]["spec"]["template"]["spec"]["containers"][0]["args"])
    service_port(re.search(r"--backend-store-uri=(\S+)", mlflow_args).group(1).replace("$(POSTGRES_PASSWORD)", "pw"))

    config = by_kind["ConfigMap"]["vssflow-config"]["data"]
    assert config["MLFLOW_TRACKING_URI"] == values["mlflow"]["tracking_uri"]
    assert config["VSSFLOW_STORAGE_PATH"] == values["storage"]["checkpoints_uri"]
    buckets = set(values["mlflow"]["minio"]["buckets"].split())
    uris = [v for k, v in values["storage"].items() if k.endswith("_uri")] + [values["mlflow"]["artifacts_destination"]]
    for uri in uris:
        if uri.startswith("s3://"):
            assert urlparse(uri).netloc in buckets, f"{uri}: bucket not created by the minio-buckets Job"

    for job in by_kind["RayJob"].values():
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] in by_kind["RayCluster"]
        assert values["storage"]["shards_uri"] in job["spec"]["entrypoint"]

    # Volumes: every mount names a volume of its pod; every claim is a PVC here (or a StatefulSet's template).
    pvcs = set(by_kind["PersistentVolumeClaim"])
    for d in docs:
        templates = {t["metadata"]["name"] for t in d.get("spec", {}).get("volumeClaimTemplates", [])}
        for t in _pod_templates(d):
            volumes = {v["name"]: v for v in t["spec"].get("volumes", [])}
            for c in t["spec"]["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes or m["name"] in templates, f"{d['metadata']['name']}: {m}"
            for v in volumes.values():
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in pvcs
    # Paths on the shared volume are under its mount path in every Ray pod.
    mount = values["storage"]["volume"]["mount_path"]
    for key in ("manifest_uri", "shards_uri", "checkpoints_uri", "models_uri", "reports_uri"):
        uri = values["storage"][key]
        if "://" not in uri:
            assert uri.startswith(mount + "/"), f"storage.{key}={uri} is not on the shared volume ({mount})"
    for d in docs:
        if d["apiVersion"].startswith("ray.io/"):
            for c in _containers(d):
                assert {"name": "data", "mountPath": mount} in c["volumeMounts"], d["metadata"]["name"]


def _entrypoints() -> list[tuple[str, str]]:
    return [(d["metadata"]["name"], d["spec"]["entrypoint"]) for d in _docs(None) if d["kind"] == "RayJob"]


@pytest.mark.parametrize(("job", "entrypoint"), _entrypoints(), ids=[n for n, _ in _entrypoints()])
def test_job_entrypoints_parse_with_the_vssflow_cli(job, entrypoint):
    from pipelines import cli

    argv = shlex.split(entrypoint)
    assert argv[0] == "vssflow" and argv[1] in cli.COMMANDS, entrypoint
    importlib.import_module(cli.COMMANDS[argv[1]][0])  # the command's module exists (no skip when it does not)
    try:
        args = cli.build_parser(argv[1]).parse_args(argv[1:])
    except SystemExit as e:
        raise AssertionError(f"RayJob {job}: `{entrypoint}` is rejected by the vssflow CLI") from e
    assert args.command == argv[1]


# ---- security: secrets, pods, control planes -------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_committed_and_reapplying_never_resets_one(overlay):
    """No rendered manifest is a Secret or carries a password: each Secret is the operator's (values: secrets),
    so `kubectl apply -f rendered/` cannot overwrite one with a committed default. Compose takes every secret
    from the environment or the git-ignored .env, and refuses to start without it."""
    docs = _docs(overlay)
    assert not [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
    text = "\n".join(yaml.safe_dump(d) for d in docs)
    for leaked in ("change-me", "password1234", "minioadmin", "AKIA"):
        assert leaked not in text, leaked
    for _, node in _walk(docs):  # no literal value for a variable that holds a secret
        if isinstance(node, dict) and "name" in node and "value" in node:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", str(node["name"])), node

    compose = (CLUSTER / "mlflow" / "docker-compose.yaml").read_text()
    variables = set(re.findall(r"\$\{(\w+)", compose))
    assert {"POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD"} <= variables
    assert not re.search(r"\$\{\w+:-", compose), "a default value for a compose variable: use ${VAR:?message}"
    for var in variables:
        assert re.search(rf"\$\{{{var}:\?[^}}]+\}}", compose), f"{var}: use ${{{var}:?message}} (no default)"
    example = (CLUSTER / "mlflow" / ".env.example").read_text()
    names = {line.split("=")[0] for line in example.splitlines() if "=" in line and not line.startswith("#")}
    assert names == variables and not re.search(r"^\w+=\S", example, flags=re.M)  # no value in the example
    ignored = subprocess.run(["git", "check-ignore", "-q", "cluster/mlflow/.env"], cwd=REPO)
    assert ignored.returncode == 0, "cluster/mlflow/.env must be git-ignored"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_as_non_root_without_privilege_or_capabilities(overlay):
    for doc in _docs(overlay):
        for template in _pod_templates(doc):
            spec = template["spec"]
            pod = spec.get("securityContext", {})
            where = f"{doc['kind']} {doc['metadata']['name']}"
            assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                ctx = {**pod, **c.get("securityContext", {})}
                assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) > 0, (where, c["name"])
                assert ctx.get("allowPrivilegeEscalation") is False, (where, c["name"])
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], (where, c["name"])
                assert not ctx.get("privileged"), (where, c["name"])
    dockerfile = (CLUSTER / "docker" / "Dockerfile").read_text()
    assert re.search(r"rm -f /etc/sudoers\.d/\*", dockerfile) and re.search(r"sed -i '/NOPASSWD/d' /etc/sudoers",
                                                                           dockerfile), (
        "the Ray image must remove the base image's passwordless sudo"
    )  # fmt: skip
    users = re.findall(r"^USER (\S+)$", dockerfile, flags=re.M)
    assert users and users[-1] == "ray", users


def _ray_containers(docs: list[dict]) -> list[dict]:
    return [c for d in docs if d["apiVersion"].startswith("ray.io/") for c in _containers(d)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_mlflow_and_serve_need_credentials(overlay):
    """Ray's token authentication (GCS, dashboard, Jobs API), MLflow's basic-auth app, the Serve API token, and
    object-store keys scoped to the project's buckets: MinIO's root keys reach no Ray pod."""
    values = render.load_values(overlay)
    docs = _docs(overlay)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = by_name[("ConfigMap", "vssflow-config")]["data"]
    assert config["RAY_AUTH_MODE"] == "token"
    containers = _ray_containers(docs)
    assert len(containers) >= 4  # RayCluster head + 2 groups, RayService head + 2 groups
    for c in containers:
        env = {e["name"]: e for e in c.get("env", [])}
        refs = {n: e["valueFrom"]["secretKeyRef"]["name"] for n, e in env.items() if "valueFrom" in e}
        assert refs["RAY_AUTH_TOKEN"] == values["cluster"]["ray_token_secret"], c["name"]
        auth = values["mlflow"]["auth"]["secret"]
        assert refs["MLFLOW_TRACKING_USERNAME"] == refs["MLFLOW_TRACKING_PASSWORD"] == auth, c["name"]
        from_secrets = {r["secretRef"]["name"] for r in c.get("envFrom", []) if "secretRef" in r}
        assert from_secrets == {values["storage"]["credentials_secret"]}, c["name"]
        assert {"name": "api-token", "mountPath": "/etc/vssflow/api-token", "readOnly": True} in c["volumeMounts"]
    (svc,) = [d for d in docs if d["kind"] == "RayService"]
    app = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["api_token_file"] == "/etc/vssflow/api-token/token" == values["serve"]["api_token_file"]

    mlflow = by_name[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" in mlflow["args"]
    script = " ".join(mlflow["command"])
    assert "admin_password" in script and "$MLFLOW_TRACKING_PASSWORD" in script and "exec mlflow server" in script

    root = values["mlflow"]["minio"]["root_secret"]
    holders = set()
    for d in docs:
        for _, node in _walk(d):
            ref = (node.get("secretKeyRef") or node.get("secretRef")) if isinstance(node, dict) else None
            if isinstance(ref, dict) and ref.get("name") == root:
                holders.add(d["metadata"]["name"])
    assert holders == {"minio", "minio-buckets"}, holders
    job = by_name[("Job", "minio-buckets")]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "mc admin user add" in job and "mc admin policy attach store vssflow-buckets" in job


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        present = e["key"] in labels
        if (e["operator"] == "Exists" and not present) or (e["operator"] == "DoesNotExist" and present):
            return False
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
    return True


def _admitted(policies: list[dict], ns: str, target: dict, port: int, source: tuple[str, dict]) -> bool:
    """Whether NetworkPolicies let a pod (``source``: its namespace and labels) reach ``target``:``port``."""
    src_ns, src_labels = source
    applying = [p for p in policies if _selects(p["spec"]["podSelector"], target)]
    if not applying:
        return True
    for p in applying:
        for rule in p["spec"].get("ingress", []):
            ports = [x["port"] for x in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            for peer in rule.get("from", []):
                ns_ok = (_selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": src_ns})
                         if "namespaceSelector" in peer else src_ns == ns)  # fmt: skip
                pod_ok = _selects(peer["podSelector"], src_labels) if "podSelector" in peer else True
                if ns_ok and pod_ok:
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_the_ingress_the_operator_and_the_ray_pods(overlay):
    values = render.load_values(overlay)
    docs = _docs(overlay)
    ns = values["namespace"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    labels = {}
    for d in docs:
        for t in _pod_templates(d):
            tl = t["metadata"]["labels"]
            labels[tl.get("app.kubernetes.io/component") or tl["app.kubernetes.io/name"]] = tl
    head, ray, mlflow, pg, minio = (labels[k] for k in ("ray-head", "ray-worker-cpu", "mlflow", "postgres", "minio"))
    stranger = (ns, {"app": "someone-else"})
    outside = ("default", {"app": "anything"})
    ingress = (values["network"]["ingress_namespace"], {"app.kubernetes.io/name": "ingress-nginx"})
    operator = (values["network"]["operator_namespace"], {"app.kubernetes.io/name": "kuberay-operator"})
    serve, m = values["serve"]["http_port"], values["mlflow"]
    ports = {"head": (head, [6379, 8265, 10001, serve, 52365]), "worker": (ray, [8265, serve, 52365, 10002]),
             "mlflow": (mlflow, [m["port"]]), "postgres": (pg, [m["postgres"]["port"]]),
             "minio": (minio, [m["minio"]["port"], m["minio"]["console_port"]])}  # fmt: skip
    for name, (target, target_ports) in ports.items():  # nothing in the open
        for port in target_ports:
            for source in (stranger, outside):
                assert not _admitted(policies, ns, target, port, source), (name, port, source)
    assert _admitted(policies, ns, head, serve, ingress) and not _admitted(policies, ns, head, 8265, ingress)
    assert not _admitted(policies, ns, head, 6379, ingress)
    assert _admitted(policies, ns, head, 8265, operator) and not _admitted(policies, ns, head, 6379, operator)
    assert _admitted(policies, ns, head, 6379, (ns, ray)) and _admitted(policies, ns, ray, 10002, (ns, head))
    submitter = (ns, {"ray.io/originated-from-crd": "RayJob"})
    assert _admitted(policies, ns, head, 8265, submitter) and not _admitted(policies, ns, head, 6379, submitter)
    assert _admitted(policies, ns, mlflow, m["port"], (ns, ray))
    assert not _admitted(policies, ns, pg, m["postgres"]["port"], (ns, ray))
    assert _admitted(policies, ns, pg, m["postgres"]["port"], (ns, mlflow))
    assert _admitted(policies, ns, minio, m["minio"]["port"], (ns, ray))
    assert not _admitted(policies, ns, minio, m["minio"]["console_port"], (ns, ray))
