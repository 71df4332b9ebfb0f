"""Static checks of docker-compose.yaml, Dockerfile, .env.example and the postgres init script.

No Docker engine or compose plugin is needed: the files are parsed, and ``${VAR:-default}``
interpolation is resolved the way Compose does it, with an empty environment. The compose file is
checked twice: as it is (LocalExecutor), and as its commented CeleryExecutor variant, made the way its
header says (``sed -e '/#local$/d' -e 's/#celery //'``).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
INIT_SQL = ROOT / "include" / "docker" / "postgres-init.sql"
REQUIREMENTS = ROOT / "requirements.txt"

AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
ALL_AIRFLOW = ("airflow-init", *AIRFLOW_SERVICES)
CELERY_SERVICES = ("valkey", "airflow-worker", "airflow-flower")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}; "$${...}" is an escaped literal for the container.
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    env = env or {}

    def replace(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        if name in env and (env[name] or op != ":-"):
            return env[name]
        if op in (":-", "-"):
            return default
        if op in (":?", "?"):
            raise AssertionError(f"${{{name}}} is required but unset")
        return ""

    return _INTERPOLATION.sub(replace, value).replace("$$", "$")


def celery_variant(text: str) -> str:
    """The CeleryExecutor variant: ``#local`` lines dropped, ``#celery `` prefixes removed."""
    lines = [line for line in text.splitlines() if not line.endswith("#local")]
    return "\n".join(line.replace("#celery ", "", 1) if "#celery " in line else line for line in lines) + "\n"


@pytest.fixture(scope="module", params=["local", "celery"])
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def compose_text(variant: str) -> str:
    text = COMPOSE.read_text(encoding="utf-8")
    return celery_variant(text) if variant == "celery" else text


@pytest.fixture(scope="module")
def airflow_names(variant: str) -> tuple[str, ...]:
    """Every service running Airflow code with the common settings (init included)."""
    return (*ALL_AIRFLOW, "airflow-worker", "airflow-flower") if variant == "celery" else ALL_AIRFLOW


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    data = yaml.safe_load(compose_text)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _volume_targets(service: dict[str, Any]) -> dict[str, str]:
    targets = {}
    for volume in service.get("volumes", []):
        source, target = _interpolate(volume).split(":")[:2]
        targets[target] = source
    return targets


def _dependencies(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def test_expected_services(services: dict[str, dict[str, Any]], variant: str) -> None:
    assert set(services) >= {"postgres", *ALL_AIRFLOW, "sandbox"}
    if variant == "local":
        assert not {*CELERY_SERVICES, "redis", "flower"} & set(services)
    else:
        assert set(services) >= set(CELERY_SERVICES)


def test_celery_is_commented_out_of_the_local_variant() -> None:
    active = [
        line for line in COMPOSE.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")
    ]
    assert not [line for line in active if "celery" in line.lower() or "valkey" in line.lower()]


def test_celery_variant() -> None:
    services = yaml.safe_load(celery_variant(COMPOSE.read_text(encoding="utf-8")))["services"]
    valkey = services["valkey"]
    assert valkey["image"].startswith("valkey/valkey:")
    assert "valkey-cli" in valkey["healthcheck"]["test"]
    worker, flower = services["airflow-worker"], services["airflow-flower"]
    assert worker["command"] == "celery worker" and flower["command"] == "celery flower"
    assert flower["profiles"] == ["flower"]
    assert any(_interpolate(p).endswith(":5555:5555") for p in flower["ports"])
    assert "inspect ping" in " ".join(worker["healthcheck"]["test"])
    assert _dependencies(worker)["valkey"] == "service_healthy"
    assert _dependencies(worker)["airflow-apiserver"] == "service_healthy"
    staging_urls = set()
    for name in (*ALL_AIRFLOW, "airflow-worker", "airflow-flower"):
        env = _env(services[name])
        assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "valkey", name
        backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
        assert (backend.hostname, backend.path) == ("postgres", "/airflow"), name
        staging_urls.add(env["AUDIENCE_SYNC_STAGING_URL"])
        # every task process, wherever it runs, reads and writes the same staging volume
        assert _volume_targets(services[name]).get("/opt/airflow/staging") == "staging", name
        assert _dependencies(services[name]).get("valkey") == "service_healthy" or name == "airflow-init"
    assert staging_urls == {"file:///opt/airflow/staging"}
    init = " ".join(services["airflow-init"]["command"])
    assert "chown" in init and "/opt/airflow/staging" in init


def test_images_and_build(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"] == "postgres:16"
    images = set()
    for name in (*ALL_AIRFLOW, "sandbox"):
        service = services[name]
        build = service["build"]
        assert build["context"] == "."
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        images.add(_interpolate(service["image"]))
    assert len(images) == 1, images  # one image, built once, used by every Airflow service and the sandbox


def test_airflow_services_mount_project_folders(
    services: dict[str, dict[str, Any]], airflow_names: tuple[str, ...]
) -> None:
    for name in airflow_names:
        targets = _volume_targets(services[name])
        for folder in ("dags", "plugins", "include", "logs", "config"):
            assert targets.get(f"/opt/airflow/{folder}") == f"./{folder}", (name, folder)
    for folder in ("dags", "plugins", "include"):
        assert (ROOT / folder).is_dir(), folder


def test_airflow_environment(
    services: dict[str, dict[str, Any]], variant: str, airflow_names: tuple[str, ...]
) -> None:
    for name in airflow_names:
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == (
            "CeleryExecutor" if variant == "celery" else "LocalExecutor"
        )
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AUDIENCE_SYNC_CAMPAIGNS_DIR"] == "/opt/airflow/include/campaigns"
        assert env["AIRFLOW_CONFIG"].startswith("/opt/airflow/config/")


def test_database_urls_point_at_postgres(
    services: dict[str, dict[str, Any]], airflow_names: tuple[str, ...]
) -> None:
    postgres_env = _env(services["postgres"])
    user, password = postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"]
    assert postgres_env["POSTGRES_DB"] == "airflow"
    for name in airflow_names:
        env = _env(services[name])
        url = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert url.scheme == "postgresql+psycopg2"
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/airflow")
        assert (url.username, url.password) == (user, password)

        conn = json.loads(env["AIRFLOW_CONN_AUDIENCE_SYNC_DB"])
        assert conn["conn_type"] == "postgres"
        assert (conn["host"], conn["port"], conn["schema"]) == ("postgres", 5432, "audience_sync")
        assert (conn["login"], conn["password"]) == (user, password)


def test_depends_on_conditions(services: dict[str, dict[str, Any]], variant: str) -> None:
    broker = {"valkey": "service_healthy"} if variant == "celery" else {}
    assert _dependencies(services["airflow-init"]) == {"postgres": "service_healthy", **broker}
    for name in AIRFLOW_SERVICES:
        deps = _dependencies(services[name])
        assert deps["postgres"] == "service_healthy", name
        assert deps["airflow-init"] == "service_completed_successfully", name
    # LocalExecutor runs tasks in the scheduler; they need the execution API up.
    assert _dependencies(services["airflow-scheduler"])["airflow-apiserver"] == "service_healthy"


def test_healthchecks(services: dict[str, dict[str, Any]], variant: str) -> None:
    for name in ("postgres", *AIRFLOW_SERVICES, "sandbox", *(CELERY_SERVICES if variant == "celery" else ())):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    api = services["airflow-apiserver"]
    assert "http://localhost:8080/api/v2/monitor/health" in api["healthcheck"]["test"]
    assert any(str(p).endswith(":8080:8080") for p in api["ports"])
    assert "8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    assert "audience_sync" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_init_service(services: dict[str, dict[str, Any]]) -> None:
    init = services["airflow-init"]
    assert _env(init)["_AIRFLOW_DB_MIGRATE"] == "true"
    assert "_AIRFLOW_WWW_USER_PASSWORD" not in init["environment"]
    assert "restart" not in init


def test_sandbox_service(services: dict[str, dict[str, Any]]) -> None:
    sandbox = services["sandbox"]
    assert sandbox["profiles"] == ["demo"]
    command = " ".join(sandbox["command"])
    assert "audience-sync sandbox" in command
    assert "--port 8990" in command
    assert "--host 0.0.0.0" in command
    assert any(_interpolate(p).endswith(":8990:8990") for p in sandbox["ports"])


def test_postgres_init_sql_creates_state_database(services: dict[str, dict[str, Any]]) -> None:
    sql = INIT_SQL.read_text(encoding="utf-8")
    assert re.search(r"CREATE\s+DATABASE\s+\"?audience_sync\"?", sql, re.IGNORECASE)
    targets = _volume_targets(services["postgres"])
    init_targets = [t for t, s in targets.items() if s == "./include/docker/postgres-init.sql"]
    assert len(init_targets) == 1
    assert init_targets[0].startswith("/docker-entrypoint-initdb.d/")
    assert init_targets[0].endswith(".sql")


def _strings(node: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [pair for k, v in node.items() for pair in _strings(v, str(k))]
    if isinstance(node, list):
        return [pair for v in node for pair in _strings(v, key)]
    return [(key, str(node))] if node is not None else []


_SECRET_KEY = re.compile(r"password|secret|token|fernet|api_?key", re.IGNORECASE)
_MASK = "__INTERPOLATED__"


def test_no_literal_secrets_in_compose(compose: dict[str, Any], compose_text: str) -> None:
    for key, value in _strings(compose):
        masked = _INTERPOLATION.sub(_MASK, value)
        if _SECRET_KEY.search(key) and not key.endswith("_FILE"):
            assert masked == _MASK, f"{key}: use ${{...}} interpolation, not a literal"
        for url in re.findall(r"[a-z0-9+]+://\S+", masked):
            password = re.match(r"[a-z0-9+]+://[^/:@]*:([^@]*)@", url)
            if password:
                assert password.group(1) == _MASK, f"{key}: literal password in {url}"
        for match in re.finditer(r'"(password|token|secret)"\s*:\s*"([^"]*)"', masked):
            assert match.group(2) == _MASK, f"{key}: literal {match.group(1)}"
    # Platform connections come from .env or a secrets backend, never from this file.
    env_names = {name for service in compose["services"].values() for name in service.get("environment", {})}
    assert not {
        n for n in env_names if n.startswith("AIRFLOW_CONN_") and n != "AIRFLOW_CONN_AUDIENCE_SYNC_DB"
    }
    assert not env_names & {
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
    }
    assert not re.search(r"AIRFLOW_CONN_META\w*\s*[:=]", compose_text)
    for service in compose["services"].values():
        env_files = service.get("env_file", [])
        assert all(isinstance(f, dict) and f["path"] == ".env" and f["required"] is False for f in env_files)


def test_env_example_has_placeholders_only(compose_text: str) -> None:  # both variants' variables
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    meta = re.search(r"^AIRFLOW_CONN_META_DEFAULT='(.*)'$", text, re.MULTILINE)
    assert meta, "document AIRFLOW_CONN_META_DEFAULT"
    assert json.loads(meta.group(1))["password"].startswith("<")
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            if _SECRET_KEY.search(name) or _SECRET_KEY.search(value):
                assert "<" in value, f".env.example: {name} must hold a <placeholder>"
    # every variable the compose file interpolates is documented
    for name in set(_INTERPOLATION.findall(compose_text)):
        assert re.search(rf"^#?\s*{name[0]}=", text, re.MULTILINE), f"{name[0]} missing from .env.example"


def test_dockerignore_keeps_secrets_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert ".env" in ignored
    assert ".venv" in ignored
    assert "COPY . " not in DOCKERFILE.read_text(encoding="utf-8")


def _airflow_pin() -> str:
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*apache-airflow(?:\[[^\]]*\])?\s*==\s*([0-9][^\s;#]*)", line)
        if match:
            return match.group(1)
    raise AssertionError("requirements.txt has no apache-airflow== pin")


def test_dockerfile_base_image_matches_requirements_pin() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert len(bases) == 1
    match = re.fullmatch(r"apache/airflow:(?P<version>[0-9.]+)-python(?P<python>3\.\d+)", bases[0])
    assert match, bases[0]
    assert match["python"] == "3.11"
    assert match["version"] == _airflow_pin()


def test_dockerfile_installs_requirements_and_package() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^COPY\s+requirements\.txt\s", dockerfile, re.MULTILINE)
    assert re.search(r"pip install --no-cache-dir -r \S*requirements\.txt", dockerfile)
    assert re.search(r"^COPY\s.*pyproject\.toml\s", dockerfile, re.MULTILINE)
    assert re.search(r"^COPY\s.*plugins/\s", dockerfile, re.MULTILINE)
    assert re.search(r"pip install --no-cache-dir --no-deps \S+", dockerfile)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["audience-sync"] == "audience_sync.cli:main"
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["where"] == ["plugins"]
