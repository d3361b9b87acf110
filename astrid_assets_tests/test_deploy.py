"""The deployment files in ``deploy/`` agree with the code.

Nothing is built or started: the Dockerfile, the compose file and the Helm
values are parsed, and every environment variable the code reads (found by
scanning the package and Dagster's instance files, not from a list kept by
hand) is looked for in every place that runs AstrID's code.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "astrid_assets"
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yaml"
WORKSPACE = DEPLOY / "workspace.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
# Dagster's instance files: the local one, and the production one the image
# copies into DAGSTER_HOME (read when present, so this test runs before it lands).
INSTANCE_FILES = (REPO / "dagster.yaml", DEPLOY / "dagster" / "dagster.yaml")

# The namespaces of the variables AstrID's processes share, and a quoted name in one.
PREFIXES = ("ASTRID_", "AWS_", "MLFLOW_", "DAGSTER_")
_NAME = r"""["']((?:ASTRID|AWS|MLFLOW|DAGSTER)_[A-Z0-9_]+)["']"""
READ_PATTERNS = tuple(
    re.compile(pattern, re.MULTILINE)
    for pattern in (
        rf"\bEnvVar\(\s*{_NAME}",
        rf"\bos\.environ\.get\(\s*{_NAME}",
        rf"\bos\.environ\[\s*{_NAME}\s*\]",
        rf"\bos\.environ\.setdefault\(\s*{_NAME}",
        rf"\bos\.getenv\(\s*{_NAME}",
        rf"{_NAME}\s+(?:not\s+)?in\s+os\.environ",
        # settings.py's helpers: an integer setting, and a value prod requires.
        rf"(?<![\w.])_int\(\s*{_NAME}",
        rf"(?<![\w.])require\(\s*{_NAME}",
        # Keys of a dict literal, as in settings.PROD_DEFAULTS: defaults the
        # `astrid` command fills in, which a process started by Dagster's own
        # commands (webserver, daemon, code server) must find in its environment.
        rf"^\s*{_NAME}\s*:",
    )
)

# Variables the code reads that a deployment may leave out, with the reason.
# None today: the deployments set even the simulated survey's knobs, so a
# production run does not depend on a default that may change.
NOT_DEPLOYED: dict[str, str] = {}

SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN")
# The only forms a secret may take in compose: a reference, required or bare.
SECRET_REFERENCE = re.compile(r"\$\{[A-Z][A-Z0-9_]*(?::?\?[^}]*)?\}")
REFERENCE = re.compile(r"\$\{[^}]*\}")
# Shapes of real credentials that must never be committed.
CREDENTIAL_SHAPES = (
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)

COMPOSE_SERVICES = ("postgres", "s3", "mlflow", "code", "webserver", "daemon")
CODE_SERVICES = ("code", "webserver", "daemon")


# --- what the code reads ---------------------------------------------------------


def _instance_env_names(node: Any) -> set[str]:
    """Names in ``{env: NAME}`` entries of a Dagster instance file."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return {node["env"]}
        return set().union(*(_instance_env_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_instance_env_names(v) for v in node))
    return set()


def _scan() -> dict[str, str]:
    """Every variable the package or an instance file reads: name -> where."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern in READ_PATTERNS:
            for name in pattern.findall(text):
                found.setdefault(name, str(path.relative_to(REPO)))
    for path in INSTANCE_FILES:
        if path.exists():
            instance = yaml.safe_load(path.read_text(encoding="utf-8"))
            for name in _instance_env_names(instance):
                if name.startswith(PREFIXES):
                    found.setdefault(name, str(path.relative_to(REPO)))
    return found


def variables_the_code_reads() -> dict[str, str]:
    """The variables a deployment must provide: name -> the file that reads it."""
    return {name: where for name, where in _scan().items() if name not in NOT_DEPLOYED}


@pytest.fixture(scope="module")
def code_reads() -> dict[str, str]:
    return variables_the_code_reads()


def test_the_scan_finds_the_variables_every_mode_reads(code_reads):
    for name in (
        "ASTRID_ENV",
        "ASTRID_HOME",
        "ASTRID_EXECUTOR",
        "ASTRID_S3_BUCKET",
        "AWS_SECRET_ACCESS_KEY",
        "ASTRID_PG_PASSWORD",
        "MLFLOW_TRACKING_URI",
        "DAGSTER_HOME",
    ):
        assert name in code_reads, f"the scan of {PACKAGE.name}/ no longer finds {name}"


def test_only_variables_the_code_reads_are_allowed_out():
    stale = sorted(set(NOT_DEPLOYED) - set(_scan()))
    assert not stale, f"NOT_DEPLOYED names variables nothing reads any more: {stale}"


# --- the Dockerfile ------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


@pytest.fixture(scope="module")
def image_env() -> dict[str, str]:
    """The ENV the image sets, for every container that runs it."""
    env: dict[str, str] = {}
    for keyword, arguments in _dockerfile_instructions():
        if keyword == "ENV":
            for token in shlex.split(arguments):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def test_the_image_is_python_3_11_slim_with_the_package_and_its_prod_extras():
    instructions = _dockerfile_instructions()
    bases = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert bases and bases[0].startswith("python:3.11")
    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert re.search(r"pip install [^&]*['\"]?\.\[prod\]", runs)


def test_the_image_sets_dagster_home_and_copies_the_prod_instance_into_it(image_env):
    assert image_env.get("DAGSTER_HOME", "").startswith("/")
    assert image_env.get("ASTRID_ENV") == "prod"
    copies = [
        shlex.split(arguments)
        for keyword, arguments in _dockerfile_instructions()
        if keyword == "COPY"
    ]
    assert ["deploy/dagster/dagster.yaml", "${DAGSTER_HOME}/dagster.yaml"] in copies
    for *sources, _destination in copies:
        for source in sources:
            assert (REPO / source).exists(), f"the Dockerfile copies {source}, which is missing"


def test_the_image_runs_as_a_numeric_non_root_user_and_serves_the_code_location():
    instructions = _dockerfile_instructions()
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    commands = [json.loads(arguments) for keyword, arguments in instructions if keyword == "CMD"]
    assert commands[-1] == [
        "dagster",
        "code-server",
        "start",
        "-h",
        "0.0.0.0",
        "-p",
        "4000",
        "-m",
        "astrid_assets.definitions",
    ]


# --- docker compose ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML document."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _runs_our_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if not isinstance(build, dict):
        return False
    dockerfile = DEPLOY / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    return dockerfile.resolve() == DOCKERFILE.resolve()


def _compose_image_name(compose: dict[str, Any]) -> str:
    images = {
        service["image"].split(":", 1)[0]
        for service in compose["services"].values()
        if _runs_our_image(service)
    }
    assert len(images) == 1, f"the services built from deploy/Dockerfile name {images}"
    return images.pop()


def test_compose_has_every_service_each_with_an_image_or_a_build(compose):
    services = compose["services"]
    for name in COMPOSE_SERVICES:
        assert name in services, f"compose has no {name} service"
        assert services[name].get("image") or services[name].get("build")
    for name in ("mlflow", *CODE_SERVICES):
        assert _runs_our_image(services[name]), f"{name} does not run the AstrID image"


def test_compose_services_wait_for_what_they_need(compose):
    services = compose["services"]
    needs = {
        "mlflow": {"postgres", "s3"},
        "code": {"postgres", "s3", "mlflow"},
        "webserver": {"postgres", "s3", "code"},
        "daemon": {"postgres", "s3", "code"},
    }
    for name, wanted in needs.items():
        depends_on = services[name].get("depends_on") or {}
        assert wanted <= set(depends_on), f"{name} starts before {wanted - set(depends_on)}"
        for dependency in wanted:
            assert depends_on[dependency]["condition"] == "service_healthy"
            assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_compose_webserver_and_daemon_load_the_code_server(compose):
    services = compose["services"]
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    for name in ("webserver", "daemon"):
        command = services[name]["command"]
        assert command[command.index("-w") + 1] == "workspace.yaml"
    assert any(port.endswith(":3000:3000") for port in services["webserver"]["ports"])
    workspace = yaml.safe_load(WORKSPACE.read_text(encoding="utf-8"))
    (location,) = workspace["load_from"]
    assert location["grpc_server"]["host"] == "code"
    assert location["grpc_server"]["port"] == 4000


def test_compose_gives_code_webserver_and_daemon_every_variable_the_code_reads(
    compose, code_reads, image_env
):
    for name in CODE_SERVICES:
        service = compose["services"][name]
        provided = set(_environment(service)) | set(image_env)
        missing = {v: code_reads[v] for v in sorted(set(code_reads) - provided)}
        assert not missing, f"compose service {name} lacks (variable: read in) {missing}"


def test_compose_secrets_come_only_from_the_environment(compose):
    for service_name, service in compose["services"].items():
        for name, value in _environment(service).items():
            if SECRET_NAME.search(name):
                assert SECRET_REFERENCE.fullmatch(value), (
                    f"{service_name}: {name} must be a ${{...}} reference without a default"
                )
            # A URI's password, if any, is a reference too.
            for userinfo in re.findall(r"://([^/@\s]*)@", REFERENCE.sub("REF", value)):
                _user, _, password = userinfo.partition(":")
                assert password in ("", "REF"), f"{service_name}: literal password in {name}"
    required = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ASTRID_PG_PASSWORD"}
    code_env = _environment(compose["services"]["code"])
    for name in required:
        assert code_env[name].startswith(f"${{{name}:?"), f"{name} must be required (:?)"


def test_env_example_names_each_secret_and_leaves_it_blank(compose):
    example = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            example[name.strip()] = value.strip()
    required = re.compile(r"\$\{([A-Z][A-Z0-9_]*):\?")
    referenced = {name for text in _strings(compose) for name in required.findall(text)}
    assert referenced <= set(example), f".env.example lacks {referenced - set(example)}"
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example must leave {name} blank"


def test_no_credential_is_written_in_the_deploy_files():
    paths = [p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env"]
    paths.append(REPO / ".dockerignore")
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for shape in CREDENTIAL_SHAPES:
            assert not shape.search(text), f"{path.relative_to(REPO)} holds a credential"


# --- the Helm values -------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def deployment(helm) -> dict[str, Any]:
    user_deployments = helm["dagster-user-deployments"]
    assert user_deployments["enabled"] is True
    (astrid,) = user_deployments["deployments"]
    return astrid


def _env_list(env: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in env}


def _value(deployment: dict[str, Any], name: str) -> str:
    return _env_list(deployment["env"])[name]["value"]


def test_helm_runs_each_run_and_each_step_as_a_kubernetes_job(helm, deployment):
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    assert _value(deployment, "ASTRID_EXECUTOR") == "k8s"
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True


def test_helm_user_deployment_serves_our_image(helm, deployment, compose):
    repository = deployment["image"]["repository"]
    assert repository.rsplit("/", 1)[-1] == _compose_image_name(compose)
    assert str(deployment["image"]["tag"])
    assert deployment["codeServerArgs"] == ["-m", "astrid_assets.definitions"]
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True


def test_helm_uses_the_external_postgres_and_an_existing_password_secret(helm, deployment):
    postgresql = helm["postgresql"]
    assert postgresql["enabled"] is False
    assert helm["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in postgresql
    assert _value(deployment, "ASTRID_PG_HOST") == postgresql["postgresqlHost"]
    assert _value(deployment, "ASTRID_PG_PORT") == str(postgresql["service"]["port"])
    assert _value(deployment, "ASTRID_PG_USER") == postgresql["postgresqlUsername"]
    assert _value(deployment, "ASTRID_PG_DB") == postgresql["postgresqlDatabase"]
    password = _env_list(deployment["env"])["ASTRID_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {
        "name": helm["global"]["postgresqlSecretName"],
        "key": "postgresql-password",
    }


def test_helm_keeps_step_logs_in_the_bucket_the_code_writes_to(helm, deployment):
    manager = helm["computeLogManager"]
    assert manager["type"] == "S3ComputeLogManager"
    s3 = manager["config"]["s3ComputeLogManager"]
    assert s3["bucket"] == _value(deployment, "ASTRID_S3_BUCKET")
    assert s3["endpointUrl"] == _value(deployment, "ASTRID_S3_ENDPOINT_URL")
    assert s3["region"] == _value(deployment, "ASTRID_S3_REGION")
    assert s3["prefix"] == _value(deployment, "ASTRID_DAGSTER_LOG_PREFIX")


def test_helm_queues_runs_and_limits_the_gpu_pool(helm, deployment):
    coordinator = helm["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True
    assert coordinator["type"] == "QueuedRunCoordinator"
    max_runs = coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"]
    assert max_runs == int(_value(deployment, "ASTRID_MAX_RUNS"))
    concurrency = helm["concurrency"]
    assert concurrency["enabled"] is True
    # The chart refuses a run limit in both places.
    assert "maxConcurrentRuns" not in concurrency.get("runs", {})
    # "gpu" is the one pool AstrID declares: the default limit is its limit.
    assert concurrency["pools"]["defaultLimit"] == 1
    assert concurrency["pools"]["granularity"] == "op"


def test_helm_sends_gpu_steps_alone_to_gpu_nodes(deployment):
    config = json.loads(_value(deployment, "ASTRID_GPU_STEP_K8S_CONFIG"))
    pod = config["pod_spec_config"]
    assert pod["node_selector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert int(config["container_config"]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # The deployment's own resources reach every run and step pod: no GPU there.
    assert "nvidia.com/gpu" not in json.dumps(deployment.get("resources", {}))
    assert not deployment.get("nodeSelector")


def test_helm_user_deployment_gets_every_variable_the_code_reads(
    helm, deployment, code_reads, image_env
):
    # The chart sets DAGSTER_HOME from global.dagsterHome; the image sets its ENV.
    provided = set(_env_list(deployment["env"])) | set(image_env)
    if helm["global"].get("dagsterHome"):
        provided.add("DAGSTER_HOME")
        assert helm["global"]["dagsterHome"] == image_env["DAGSTER_HOME"]
    missing = {v: code_reads[v] for v in sorted(set(code_reads) - provided)}
    assert not missing, f"the Helm user deployment lacks (variable: read in) {missing}"


def test_helm_webserver_and_daemon_can_read_step_logs_from_the_bucket(helm, code_reads):
    boto3_settings = {name for name in code_reads if name.startswith("AWS_")}
    for component in ("dagsterWebserver", "dagsterDaemon"):
        names = set(_env_list(helm[component]["env"]))
        assert boto3_settings <= names, f"{component} lacks {boto3_settings - names}"


def _env_entries(node: Any) -> list[dict[str, Any]]:
    """Every Kubernetes env entry (a dict with name and value or valueFrom)."""
    if isinstance(node, dict):
        here = [node] if "name" in node and ({"value", "valueFrom"} & set(node)) else []
        return here + [e for v in node.values() for e in _env_entries(v)]
    if isinstance(node, list):
        return [e for v in node for e in _env_entries(v)]
    return []


def test_helm_secrets_come_only_from_kubernetes_secrets(helm):
    entries = _env_entries(helm)
    assert entries
    for entry in entries:
        if SECRET_NAME.search(entry["name"]):
            assert "value" not in entry, f"{entry['name']} is written in the values"
            assert entry["valueFrom"]["secretKeyRef"]["name"]
