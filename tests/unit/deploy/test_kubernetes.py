"""deploy/kubernetes, checked offline (no cluster, no kubectl): every manifest of base/ against the
Kubernetes API's own schemas (kubernetes-validate, strict: an unknown or misspelt field fails),
then what a schema cannot say: probes on the ports the roles listen on, limits, non-root pods,
settings that exist, a grace period longer than the drain, one image tag. The operators' custom
resources (dependencies/) are not in those schemas: their fields are checked here by hand against
what Werkstroom's settings and the compose stack expect."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from werkstroom.contract import Topics
from werkstroom.settings import Settings, Target

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
DEPENDENCIES = K8S / "dependencies"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DATASOURCE = yaml.safe_load((ROOT / "grafana/provisioning/datasources/clickhouse.yaml").read_text())[
    "datasources"
][0]

#: The oldest Kubernetes minor the manifests are meant for and the newest kubernetes-validate
#: bundles (pyproject's pin): a field added after the first, or removed by the second, fails.
KUBERNETES_VERSIONS = ("1.31", "1.37")
IMAGE = "werkstroom"
GRAFANA_IMAGE = "werkstroom-grafana"
SECRET = "werkstroom-secrets"
#: The roles, each `werkstroom serve --target <role>`, and the setting naming its port.
ROLE_PORTS = {"ingest": "ingest_port", "aggregator": "aggregator_port", "api": "api_port"}
PREFIX = "WERKSTROOM_"

Doc = dict[str, Any]


def kustomization(directory: Path) -> Doc:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def manifests(directory: Path) -> list[tuple[str, Doc]]:
    """(file, document) for every resource the directory's kustomization lists, in its order."""
    return [
        (name, doc)
        for name in kustomization(directory)["resources"]
        for doc in yaml.safe_load_all((directory / name).read_text())
        if doc is not None
    ]


def read_env_file(path: Path) -> dict[str, str]:
    """A kustomize `envs` file: KEY=value lines, # comments and blank lines skipped."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=value: {line!r}"
            assert key not in out, f"{path.name}: {key} twice"
            out[key] = value
    return out


def generated_configmaps(directory: Path) -> list[Doc]:
    """The ConfigMaps kustomize generates (without the hash suffix it adds to their names)."""
    out = []
    for generator in kustomization(directory).get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env_file in generator.get("envs", []):
            data |= read_env_file(directory / env_file)
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        out.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    return out


BASE_DOCS: list[tuple[str, Doc]] = manifests(BASE) + [
    ("kustomization.yaml", cm) for cm in generated_configmaps(BASE)
]
DEPENDENCY_DOCS: list[tuple[str, Doc]] = manifests(DEPENDENCIES)


def of_kind(kind: str, docs: list[tuple[str, Doc]] = BASE_DOCS) -> list[Doc]:
    return [doc for _, doc in docs if doc["kind"] == kind]


def one(kind: str, name: str, docs: list[tuple[str, Doc]] = BASE_DOCS) -> Doc:
    found = [doc for doc in of_kind(kind, docs) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


CONFIG: dict[str, str] = one("ConfigMap", "werkstroom-config")["data"]
DEPLOYMENTS = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
JOB = one("Job", "werkstroom-migrate")


def runs_werkstroom(container: Doc) -> bool:
    return bool(container["image"].partition(":")[0] == IMAGE)


def role_of(deployment: Doc) -> str | None:
    """The role a Werkstroom Deployment serves (`serve --target <role>`), None for others."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if not runs_werkstroom(container):
        return None
    args = container.get("args", [])
    assert args[:2] == ["serve", "--target"] and len(args) == 3, f"{deployment['metadata']['name']}: {args}"
    return str(args[2])


ROLES = {role: d for d in DEPLOYMENTS.values() if (role := role_of(d)) is not None}
ALL_PODS = {f"Deployment/{n}": d["spec"]["template"] for n, d in DEPLOYMENTS.items()}
ALL_PODS[f"Job/{JOB['metadata']['name']}"] = JOB["spec"]["template"]
#: Every pod template running the Werkstroom image: the three roles and the migrate Job.
WERKSTROOM_PODS = {k: pod for k, pod in ALL_PODS.items() if runs_werkstroom(pod["spec"]["containers"][0])}
API_POD = f"Deployment/{ROLES['api']['metadata']['name']}"


def containers(pod: Doc) -> Iterator[Doc]:
    yield from pod["spec"].get("initContainers", [])
    yield from pod["spec"]["containers"]


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a Werkstroom pod builds from the ConfigMap (and defaults): nothing from this
    process's own WERKSTROOM_* environment."""
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    return Settings(**{key[len(PREFIX) :].lower(): value for key, value in CONFIG.items()})


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity (500m, 2, 1Gi, 512Mi, 1G) as a number."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(value))
    assert m, f"not a quantity: {value!r}"
    factor = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    factor |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(m.group(1)) * factor[m.group(2)]


# -- the layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", [BASE, DEPENDENCIES], ids=lambda p: p.name)
def test_kustomization_lists_every_manifest(directory: Path) -> None:
    listed = set(kustomization(directory)["resources"])
    on_disk = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "a manifest not applied, or a listed one missing"
    assert kustomization(directory)["namespace"] == one("Namespace", "werkstroom")["metadata"]["name"]


def test_base_holds_no_secret_values() -> None:
    """Secrets are created from files by the operator (README.md), never kept here."""
    assert not of_kind("Secret")
    secretish = re.compile(r"PASSWORD|TOKEN|SECRET|KEY", re.IGNORECASE)
    assert not [k for k in CONFIG if secretish.search(k) and k != "WERKSTROOM_SECRETS_DIR"]
    for name, pod in ALL_PODS.items():
        for container in containers(pod):
            for env in container.get("env", []):
                if secretish.search(env["name"]):
                    assert env["name"].endswith("__FILE") or "valueFrom" in env, f"{name}: {env['name']}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("directory", [BASE, DEPENDENCIES], ids=lambda p: p.name)
def test_kustomize_renders_what_these_tests_read(directory: Path) -> None:
    """`kubectl kustomize` (offline) makes of the directory what these tests read: the same
    objects, the generated ConfigMap's data, every object in the namespace, images with the tag."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    read = {
        (d["kind"], d["metadata"]["name"]): d
        for _, d in (BASE_DOCS if directory == BASE else DEPENDENCY_DOCS)
    }
    assert len(docs) == len(read)
    namespace = kustomization(directory)["namespace"]
    images = {f"{i['newName']}:{i['newTag']}" for i in kustomization(directory).get("images", [])}
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap":  # kustomize's hash suffix
            name = name.rsplit("-", 1)[0]
            assert doc["data"] == read[("ConfigMap", name)]["data"]
        assert ("Namespace", namespace) == (doc["kind"], name) or doc["metadata"]["namespace"] == namespace
        assert (doc["kind"], name) in read
        if doc["kind"] in ("Deployment", "Job"):
            assert {c["image"] for c in doc["spec"]["template"]["spec"]["containers"]} <= images
        if directory == BASE:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


# -- the Kubernetes schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in BASE_DOCS],
    ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in BASE_DOCS],
)
def test_manifest_validates_against_the_kubernetes_schema(doc: Doc, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"Kubernetes {e.version}: {'.'.join(map(str, e.path))}: {e.message}")


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The validator is not passing everything: a misspelt probe field fails."""
    bad = copy.deepcopy(DEPLOYMENTS["werkstroom-ingest"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


# -- the roles -----------------------------------------------------------------------------------


def test_a_deployment_per_role_and_the_migrate_job() -> None:
    assert set(ROLES) == set(ROLE_PORTS) == set(get_args(Target)) - {"all"}
    container = JOB["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["args"] == ["migrate"] and "command" not in container
    assert JOB["spec"]["backoffLimit"] >= 3  # Kafka and ClickHouse may still be starting
    assert JOB["spec"]["ttlSecondsAfterFinished"] > 0
    assert JOB["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_roles_wait_for_the_migrate_job(configured: Settings) -> None:
    """The roles never migrate; each waits, before it listens, up to MIGRATIONS_WAIT_SECONDS for
    the Job: the startup probe must outlast that wait, or liveness kills a pod that only waits."""
    assert configured.migrate_on_start is False
    for role, deployment in ROLES.items():
        startup = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        window = (
            startup.get("initialDelaySeconds", 0) + startup["periodSeconds"] * startup["failureThreshold"]
        )
        assert window > configured.migrations_wait_seconds, role


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_probes_on_the_port_the_container_serves(name: str, configured: Settings) -> None:
    deployment = DEPLOYMENTS[name]
    role = role_of(deployment)
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{name}: no {probe}"
            port = container[probe]["httpGet"]["port"]
            assert ports.get(port, port) in ports.values(), f"{name}: {probe} on {port}, not a container port"
        if role is not None:
            assert list(ports.values()) == [getattr(configured, ROLE_PORTS[role])], name
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
            assert container["livenessProbe"]["httpGet"]["path"] == "/health"
            assert container["startupProbe"]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("name", sorted(ALL_PODS))
def test_resources_and_a_restricted_security_context(name: str) -> None:
    pod = ALL_PODS[name]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False  # none of them calls the Kubernetes API
    for container in containers(ALL_PODS[name]):
        resources = container["resources"]
        for what in ("cpu", "memory"):
            request, limit = quantity(resources["requests"][what]), quantity(resources["limits"][what])
            assert 0 < request <= limit, f"{name}: {what}"
        # Memory is not overcommitted: a pod over its request is the first the kernel kills.
        assert quantity(resources["requests"]["memory"]) == quantity(resources["limits"]["memory"]), name
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("name", sorted(WERKSTROOM_PODS))
def test_werkstroom_pods_as_the_image_runs(name: str, configured: Settings) -> None:
    """uid 10001 (deploy/Dockerfile), a writable emptyDir at the data directory (the root is
    read-only), the secrets where WERKSTROOM_SECRETS_DIR says, the ConfigMap as environment."""
    pod = WERKSTROOM_PODS[name]["spec"]
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 10001
    volumes = {v["name"]: v for v in pod["volumes"]}
    container = pod["containers"][0]
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert "emptyDir" in mounts[str(configured.data_dir)]
    assert mounts[str(configured.secrets_dir)]["secret"]["secretName"] == SECRET
    assert container["envFrom"] == [{"configMapRef": {"name": "werkstroom-config"}}]


def test_service_links_cannot_set_a_setting() -> None:
    """Kubernetes gives each pod <SERVICE>_PORT=tcp://ip:port and more for every Service with a
    cluster IP: the Service werkstroom-ingest would set WERKSTROOM_INGEST_PORT, a setting's name,
    to a URL, and the pod would not start (or listen elsewhere). Werkstroom's pods turn them off."""
    fields = {PREFIX + f.upper() for f in Settings.model_fields}
    clashes = set()
    for service in of_kind("Service"):
        if service["spec"].get("clusterIP") == "None":
            continue
        stem = service["metadata"]["name"].upper().replace("-", "_")
        names = {f"{stem}_SERVICE_HOST", f"{stem}_SERVICE_PORT", f"{stem}_PORT"}
        for port in service["spec"]["ports"]:
            tcp = f"{stem}_PORT_{port['port']}_{port.get('protocol', 'TCP')}"
            names |= {
                f"{stem}_SERVICE_PORT_{port['name'].upper()}",
                tcp,
                f"{tcp}_PROTO",
                f"{tcp}_PORT",
                f"{tcp}_ADDR",
            }
        clashes |= names & fields
    assert clashes == {"WERKSTROOM_INGEST_PORT", "WERKSTROOM_API_PORT"}  # why the pods need this:
    for name, pod in WERKSTROOM_PODS.items():
        assert pod["spec"]["enableServiceLinks"] is False, name


def test_every_werkstroom_variable_is_a_setting(configured: Settings) -> None:
    """A misspelt WERKSTROOM_ variable is silently ignored (extra="ignore"): each must name a
    field, and each value must parse (`configured` builds Settings from them)."""
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    used = set(CONFIG)
    for pod in ALL_PODS.values():
        for container in containers(pod):
            used |= {env["name"] for env in container.get("env", [])}
    assert {n for n in used if n.startswith(PREFIX)} - fields == set()
    assert all(name.startswith(PREFIX) for name in CONFIG)
    assert str(configured.data_dir) == "/data" and str(configured.secrets_dir) == "/run/secrets"


def test_secrets_are_mounted_by_name_and_only_where_needed() -> None:
    """The files of docker-compose.yml's secrets, from one Secret; each pod gets the keys it reads
    (WERKSTROOM_SECRETS_DIR reads werkstroom_<setting>), and only the api the admin token."""
    known = set(COMPOSE["secrets"])
    fields = set(Settings.model_fields)
    keys_of = {}
    for name, pod in ALL_PODS.items():
        for volume in pod["spec"]["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] == SECRET, name
                items = volume["secret"]["items"]
                assert all(item["key"] == item["path"] for item in items), name
                keys_of[name] = {item["key"] for item in items}
                assert keys_of[name] <= known, name
    for name in WERKSTROOM_PODS:
        assert all(
            k.removeprefix("werkstroom_") in fields for k in keys_of[name] if k.startswith("werkstroom_")
        )
        assert "werkstroom_clickhouse_password" in keys_of[name]
        assert ("werkstroom_admin_token" in keys_of[name]) == (name == API_POD), name


def test_one_image_tag_set_in_one_place() -> None:
    """Manifests name the images without a tag; kustomization.yaml gives both the same one."""
    for name, pod in ALL_PODS.items():
        for container in containers(pod):
            assert container["image"] in (IMAGE, GRAFANA_IMAGE), f"{name}: {container['image']} has a tag"
    images = {i["name"]: i for i in kustomization(BASE)["images"]}
    assert set(images) == {IMAGE, GRAFANA_IMAGE}
    assert images[IMAGE]["newTag"] == images[GRAFANA_IMAGE]["newTag"]
    assert re.fullmatch(r"[\w][\w.-]{0,127}", images[IMAGE]["newTag"])


# -- scaling and stopping ------------------------------------------------------------------------


def test_aggregator_grace_period_outlasts_the_drain(configured: Settings) -> None:
    """At SIGTERM the aggregator writes and commits what it took, for up to DRAIN_TIMEOUT_SECONDS,
    then stops its consumers: killed sooner, it leaves its last batch to be read again."""
    default = Settings.model_fields["drain_timeout_seconds"].default
    grace = ROLES["aggregator"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > default and grace >= configured.drain_timeout_seconds + 15


@pytest.mark.parametrize("role", ["ingest", "api"])
def test_front_roles_grace_covers_pre_stop_and_drain(role: str, configured: Settings) -> None:
    spec = ROLES[role]["spec"]["template"]["spec"]
    pre_stop = int(spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + configured.drain_timeout_seconds


def test_aggregator_replicas_within_the_partitions(configured: Settings) -> None:
    replicas = ROLES["aggregator"]["spec"]["replicas"]
    assert 2 <= replicas <= configured.topic_partitions  # more would idle as standbys


def test_ingest_scales_on_cpu() -> None:
    hpa = one("HorizontalPodAutoscaler", "werkstroom-ingest")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", ROLES["ingest"]["metadata"]["name"])
    assert "replicas" not in ROLES["ingest"]["spec"]  # the autoscaler owns it
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # Utilization is of the request: there must be one.
    assert ROLES["ingest"]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions with In) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


@pytest.mark.parametrize("role", sorted(ROLE_PORTS))
def test_a_disruption_budget_and_a_service_per_role(role: str) -> None:
    deployment = ROLES[role]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], labels)
    budgets = [p for p in of_kind("PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
    assert len(budgets) == 1, role
    assert budgets[0]["spec"]["maxUnavailable"] == 1
    services = [
        s
        for s in of_kind("Service")
        if s["spec"].get("selector") and selects({"matchLabels": s["spec"]["selector"]}, labels)
    ]
    assert len(services) == 1, role
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in services[0]["spec"]["ports"]} <= port_names


def test_ingress_routes_three_hosts_over_tls_and_hides_metrics(configured: Settings) -> None:
    ingress = one("Ingress", "werkstroom")
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    hosts = {rule["host"]: rule for rule in ingress["spec"]["rules"]}
    assert [tls["hosts"] for tls in ingress["spec"]["tls"]] == [list(hosts)]
    routed = {}
    for host, rule in hosts.items():
        paths = {p["path"]: p for p in rule["http"]["paths"]}
        hidden = paths["/metrics"]
        assert hidden["pathType"] == "Exact"
        assert "selector" not in services[hidden["backend"]["service"]["name"]]["spec"]  # no pods
        backend = paths["/"]["backend"]["service"]
        ports = services[backend["name"]]["spec"]["ports"]
        assert any(
            p["name"] == backend["port"].get("name") or p["port"] == backend["port"].get("number")
            for p in ports
        )
        routed[host.split(".")[0]] = backend["name"]
    assert routed == {"ingest": "werkstroom-ingest", "api": "werkstroom-api", "grafana": "werkstroom-grafana"}
    # The URLs the apps give out are the Ingress's names.
    assert configured.public_ingest_url == f"https://{next(h for h in hosts if h.startswith('ingest.'))}"
    grafana_env = {
        e["name"]: e["value"]
        for e in DEPLOYMENTS["werkstroom-grafana"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert urlsplit(grafana_env["GF_SERVER_ROOT_URL"]).hostname in hosts
    assert configured.trust_forwarded_for  # only the ingress controller reaches ingest


def test_grafana_is_provisioned_as_in_compose() -> None:
    compose_env = {k: str(v) for k, v in COMPOSE["services"]["grafana"]["environment"].items()}
    spec = DEPLOYMENTS["werkstroom-grafana"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    for name in compose_env.keys() - {"GF_SERVER_ROOT_URL", "GF_AUTH_ANONYMOUS_ENABLED"}:  # per site
        assert env[name] == compose_env[name], name
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards"} <= mounts
    assert str(Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).parent) in mounts
    password_file = DATASOURCE["secureJsonData"]["password"].removeprefix("$__file{").removesuffix("}")
    assert str(Path(password_file).parent) in mounts


# -- the dependencies: Strimzi's and the clickhouse-operator's resources --------------------------


def test_dependencies_are_the_documented_operators_resources() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in DEPENDENCY_DOCS}
    assert kinds == {
        ("kafka.strimzi.io/v1", "Kafka"),
        ("kafka.strimzi.io/v1", "KafkaNodePool"),
        ("kafka.strimzi.io/v1", "KafkaTopic"),
        ("clickhouse.altinity.com/v1", "ClickHouseInstallation"),
    }
    for _, doc in DEPENDENCY_DOCS:
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name  # a DNS subdomain
        # Not in the core schemas, which is why they are checked here by hand.
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_kafka_is_what_the_settings_point_at(configured: Settings) -> None:
    kafka = of_kind("Kafka", DEPENDENCY_DOCS)[0]
    cluster = kafka["metadata"]["name"]
    host, _, port = str(configured.kafka_bootstrap).partition(":")
    assert host == f"{cluster}-kafka-bootstrap"  # the Service Strimzi names after the cluster
    listener = next(x for x in kafka["spec"]["kafka"]["listeners"] if x["port"] == int(port))
    assert listener["type"] == "internal" and listener["tls"] is False  # Werkstroom has no Kafka TLS setting
    # Its NetworkPolicy admits the roles that produce or consume (not the api, nor Grafana).
    peers = [p["podSelector"] for p in listener["networkPolicyPeers"]]
    for name, pod in WERKSTROOM_PODS.items():
        admitted = any(selects(s, pod["metadata"]["labels"]) for s in peers)
        assert admitted == (name != API_POD), name
    config = kafka["spec"]["kafka"]["config"]
    assert config["auto.create.topics.enable"] is False
    assert config["default.replication.factor"] == configured.topic_replication
    assert 1 < config["min.insync.replicas"] < configured.topic_replication  # acks=all survives one loss
    assert "topicOperator" in kafka["spec"]["entityOperator"]
    pools = of_kind("KafkaNodePool", DEPENDENCY_DOCS)
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == cluster for p in pools)
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    assert brokers >= configured.topic_replication and controllers % 2 == 1


def test_kafka_topics_match_the_settings(configured: Settings) -> None:
    """What the KafkaTopics declare is what `werkstroom migrate` would create: the same names,
    partitions and copies (the Topic Operator can add partitions, never remove them)."""
    topics = of_kind("KafkaTopic", DEPENDENCY_DOCS)
    cluster = of_kind("Kafka", DEPENDENCY_DOCS)[0]["metadata"]["name"]
    assert {t["spec"]["topicName"] for t in topics} == set(Topics.from_settings(configured).all())
    for topic in topics:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert topic["spec"]["partitions"] == configured.topic_partitions, topic["spec"]["topicName"]
        assert topic["spec"]["replicas"] == configured.topic_replication, topic["spec"]["topicName"]


def xml_tree(node: str | ET.Element | None) -> Any:
    """XML as nested tuples, comments and surrounding whitespace dropped, for comparing two."""
    assert node is not None
    element = ET.fromstring(node) if isinstance(node, str) else node
    return (
        element.tag,
        (element.text or "").strip(),
        sorted(element.attrib.items()),
        [xml_tree(child) for child in element],
    )


def test_clickhouse_is_what_the_settings_and_grafana_point_at(configured: Settings) -> None:
    chi = of_kind("ClickHouseInstallation", DEPENDENCY_DOCS)[0]
    spec = chi["spec"]
    url = urlsplit(str(configured.clickhouse_url))
    service = next(
        s
        for s in spec["templates"]["serviceTemplates"]
        if s["name"] == spec["defaults"]["templates"]["serviceTemplate"]
    )
    ports = {p["port"] for p in service["spec"]["ports"]}
    assert service["generateName"] == url.hostname == DATASOURCE["jsonData"]["host"]
    assert {url.port, DATASOURCE["jsonData"]["port"]} <= ports
    [cluster] = spec["configuration"]["clusters"]
    # One replica: the migrations' tables are not Replicated (README.md, Limits).
    assert cluster["layout"] == {"shardsCount": 1, "replicasCount": 1}
    users = spec["configuration"]["users"]
    grafana = DATASOURCE["jsonData"]["username"]
    for user, key in (
        (url.username, "werkstroom_clickhouse_password"),
        (grafana, "clickhouse_grafana_password"),
    ):
        secret_ref = {"secretKeyRef": {"name": SECRET, "key": key}}
        assert users[f"{user}/password"] == {"valueFrom": secret_ref}, user
    assert users[f"{grafana}/grants/query"] == [f"GRANT SELECT ON {configured.clickhouse_database}.*"]
    assert users[f"{grafana}/access_management"] == 0
    # The same server and the same settings as the compose stack's.
    [pod] = spec["templates"]["podTemplates"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == COMPOSE["services"]["clickhouse"]["image"]
    assert quantity(container["resources"]["limits"]["memory"]) >= 2**30
    files = spec["configuration"]["files"]
    profiles = ET.fromstring(files["users.d/grafana_readonly.xml"]).find("profiles")
    compose_users = ET.parse(ROOT / "deploy/clickhouse/users.d/grafana.xml").getroot()
    assert xml_tree(profiles) == xml_tree(compose_users.find("profiles"))
    assert users[f"{grafana}/profile"] in {p.tag for p in profiles or []}
    compose_config = (ROOT / "deploy/clickhouse/config.d/werkstroom.xml").read_text()
    assert xml_tree(files["config.d/werkstroom.xml"]) == xml_tree(compose_config)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_clickhouse_templates_validate_as_core_objects(version: str) -> None:
    """The ClickHouseInstallation's pod, volume and service templates are core Kubernetes specs
    inside the custom resource: validated as such, strictly."""
    spec = of_kind("ClickHouseInstallation", DEPENDENCY_DOCS)[0]["spec"]["templates"]
    wrapped = [("v1", "Pod", t["spec"]) for t in spec["podTemplates"]]
    wrapped += [("v1", "PersistentVolumeClaim", t["spec"]) for t in spec["volumeClaimTemplates"]]
    wrapped += [("v1", "Service", t["spec"]) for t in spec["serviceTemplates"]]
    for api_version, kind, body in wrapped:
        doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "template"}, "spec": body}
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind} template, Kubernetes {e.version}: {'.'.join(map(str, e.path))}: {e.message}")
