"""The deployment files agree with the code and with the local stack.

docker-compose.yml, deploy/k8s/, the Dockerfile, deploy/mosquitto/mosquitto.conf and the
Prometheus and Grafana provisioning are parsed (nothing is run) and compared with the settings
classes: every environment variable they set is a field of the settings class of the process it
reaches, ports and probes are the settings' defaults and those of docs/architecture.md, topic names
and consumer groups are the defaults, Prometheus scrapes every stage where compose runs it,
Grafana reads the database compose runs, nothing is published beyond 127.0.0.1, and the images
compose pulls are exact releases, those of the local stack for Kafka, Mosquitto and TimescaleDB.
The one thing run is deploy/local/stack.sh's rendering of the local Mosquitto config from
compose's (into a temporary folder): it may change only the address and the paths.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from libs.common.db_accounts import ROLES
from libs.common.settings import DEFAULT_DATABASE_URL, PipelineSettings, is_secret
from services.admin.settings import AdminSettings
from services.enrich.settings import EnrichSettings
from services.ingest.settings import IngestSettings
from services.store.settings import StoreSettings
from services.validate.settings import ValidateSettings
from tools.setup import SetupSettings
from tools.simulate import SimulatorSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
# The TLS listener's block: the local stack appends it; compose does not mount it yet.
MOSQUITTO_TLS_CONF = ROOT / "deploy" / "mosquitto" / "secure-listener.conf"
LOCAL_STACK = ROOT / "deploy" / "local"
STACK_SH = LOCAL_STACK / "stack.sh"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

# docs/architecture.md, "Start-up": where the local stack and each stage listen.
ARCHITECTURE_PORTS = {
    "kafka": 9092,
    "mosquitto": 1883,
    "timescaledb": 5432,
    "ingest": 8080,
    "validate": 8081,
    "enrich": 8082,
    "store": 8083,
}
# docs/security.md, Admin API: its probes' port (its HTTPS API, 8444, is off in compose).
ADMIN_PORTS = {"admin": 8084}
# docs/observability.md: where Prometheus and Grafana listen.
OBSERVABILITY_PORTS = {"prometheus": 9090, "grafana": 3000}
LOCALHOST = "127.0.0.1"

STAGES: dict[str, type[PipelineSettings]] = {
    "ingest": IngestSettings,
    "validate": ValidateSettings,
    "enrich": EnrichSettings,
    "store": StoreSettings,
}
CONSUMER_STAGES = ("validate", "enrich", "store")
TOPIC_VARS = ("TOPIC_RAW", "TOPIC_VALIDATED", "TOPIC_ENRICHED", "TOPIC_DLQ")


# The settings class of the process each compose service / k8s workload starts.
SETTINGS_OF: dict[str, type[BaseSettings]] = {
    **STAGES,
    "admin": AdminSettings,
    "setup": SetupSettings,
    "simulator": SimulatorSettings,
}
MODULE_OF = {
    **{name: f"services.{name}" for name in STAGES},
    "admin": "services.admin",
    "setup": "tools.setup",
    "simulator": "tools.simulate",
}


# --- helpers -------------------------------------------------------------------------------------


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Every variable the class reads: its fields, and NAME_FILE for a secret one."""
    prefix = str(settings.model_config.get("env_prefix") or "")
    names = {(prefix + name).upper() for name in settings.model_fields}
    secrets = {
        f"{prefix}{name}_FILE".upper()
        for name, field in settings.model_fields.items()
        if is_secret(field)
    }
    return names | secrets


def unknown_env_vars(names: set[str] | list[str], settings: type[BaseSettings]) -> list[str]:
    """The names no field of `settings` reads (a typo, or a variable meant for another stage)."""
    known = env_names(settings)
    return sorted(name for name in names if name.upper() not in known)


def default(settings: type[BaseSettings], field: str) -> Any:
    value = settings.model_fields[field].default
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def build_settings(settings: type[BaseSettings], env: dict[str, str]) -> BaseSettings:
    prefix = str(settings.model_config.get("env_prefix") or "")
    # model_validate: the values given and the defaults, not the environment of the test run.
    # A secret's NAME_FILE names a file of the container: not read here.
    return settings.model_validate(
        {
            name[len(prefix) :].lower(): value
            for name, value in env.items()
            if not name.endswith("_FILE")
        }
    )


def as_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host, int(port)


def duration_s(text: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def command_of(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


# --- docker-compose.yml --------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def compose_service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    service = services[name]
    assert isinstance(service, dict)
    return service


def compose_env(name: str) -> dict[str, str]:
    raw = compose_service(name).get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(key): as_text(value) for key, value in raw.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port; host ip "" = all."""
    ports = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ip = str(entry.get("host_ip", ""))
            ports.append((ip, int(entry["published"]), int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        if len(parts) == 3:
            ports.append((parts[0].strip("[]"), int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            ports.append(("", int(parts[0]), int(parts[1])))
        else:
            ports.append(("", int(parts[0]), int(parts[0])))
    return ports


APP_SERVICES = ("ingest", "validate", "enrich", "store", "admin", "setup", "simulator")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_sets_only_env_vars_the_services_read(name: str) -> None:
    env = compose_env(name)
    assert env, f"{name} sets no environment"
    assert unknown_env_vars(list(env), SETTINGS_OF[name]) == [], name


def test_env_var_check_catches_a_misspelled_name() -> None:
    names = ["KAFKA_BOOTSTRAP_SERVER", "HTTP_PORT", "CONSUMER_GROUP"]
    assert unknown_env_vars(names, IngestSettings) == ["CONSUMER_GROUP", "KAFKA_BOOTSTRAP_SERVER"]
    assert unknown_env_vars(["CONSUMER_GROUP"], StoreSettings) == []


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_env_values_are_accepted_by_the_settings_classes(name: str) -> None:
    env = compose_env(name)
    settings = build_settings(SETTINGS_OF[name], env)
    for key, value in env.items():
        if not key.endswith("_FILE"):
            assert as_text(getattr(settings, key.lower())) == value, (name, key)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_runs_each_service_as_its_python_module(name: str) -> None:
    service = compose_service(name)
    assert command_of(service["command"]) == ["python", "-m", MODULE_OF[name]]
    assert "build" in service, f"{name} is not built from the Dockerfile"
    assert service["build"]["context"] == "."


@pytest.mark.parametrize("name", list(STAGES))
def test_compose_publishes_each_stage_on_its_default_http_port(name: str) -> None:
    port = default(STAGES[name], "http_port")
    assert port == ARCHITECTURE_PORTS[name]
    assert published_ports(compose_service(name)) == [(LOCALHOST, port, port)]
    env = compose_env(name)
    assert env["HTTP_PORT"] == str(port)
    assert env["HTTP_HOST"] == "0.0.0.0"


def test_compose_publishes_the_infrastructure_where_the_default_settings_look() -> None:
    kafka_host, kafka_port = host_port(default(PipelineSettings, "kafka_bootstrap_servers"))
    # Where devices publish (the simulator's default): compose's broker has no TLS listener.
    mqtt = urlsplit(default(SimulatorSettings, "mqtt_url"))
    database = urlsplit(DEFAULT_DATABASE_URL)
    defaults = {
        "kafka": (kafka_host, kafka_port),
        "mosquitto": (mqtt.hostname, mqtt.port),
        "timescaledb": (database.hostname, database.port),
    }
    for name, (host, port) in defaults.items():
        assert (host, port) == (LOCALHOST, ARCHITECTURE_PORTS[name]), name
        assert published_ports(compose_service(name)) == [(LOCALHOST, port, port)], name


def test_compose_binds_every_published_port_to_localhost() -> None:
    ports = [
        (name, port)
        for name, service in compose()["services"].items()
        for port in published_ports(service)
    ]
    expected = {**ARCHITECTURE_PORTS, **ADMIN_PORTS, **OBSERVABILITY_PORTS}
    assert len(ports) == len(expected)
    assert [(name, ip) for name, (ip, _, _) in ports if ip != LOCALHOST] == []
    assert sorted(host for _, (_, host, _) in ports) == sorted(expected.values())


def test_compose_topic_names_and_consumer_groups_match_the_settings_defaults() -> None:
    checked = 0
    for name in APP_SERVICES:
        env, settings = compose_env(name), SETTINGS_OF[name]
        for key in (*TOPIC_VARS, "CONSUMER_GROUP"):
            if key in env:
                assert env[key] == default(settings, key.lower()), (name, key)
                checked += 1
    for name in CONSUMER_STAGES:
        assert compose_env(name)["CONSUMER_GROUP"] == name
    assert checked >= len(TOPIC_VARS) * len(STAGES)


PG_COMPOSE = ROOT / "deploy" / "postgres"
CREDENTIALS_AT = "/run/pipeline"


def hba_rules(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.startswith("#")]


def test_compose_database_is_tls_only_with_the_owner_of_the_default_database_url() -> None:
    url = urlsplit(DEFAULT_DATABASE_URL)
    db = compose_env("timescaledb")
    assert db["POSTGRES_USER"] == url.username
    assert db["POSTGRES_PASSWORD"] == url.password
    assert db["POSTGRES_DB"] == url.path.lstrip("/")
    command = command_of(compose_service("timescaledb")["command"])
    options = {command[i + 1] for i, part in enumerate(command) if part == "-c"}
    assert {"ssl=on", "ssl_min_protocol_version=TLSv1.2", "password_encryption=scram-sha-256"} <= (
        options
    )
    hba_file = next(o.split("=", 1)[1] for o in options if o.startswith("hba_file="))
    assert mounts("timescaledb")[hba_file] == "./deploy/postgres/pg_hba.conf"
    rules = hba_rules(PG_COMPOSE / "pg_hba.conf")
    # No `host` nor `hostnossl`: plain TCP matches no line, refused.
    assert {rule[0] for rule in rules} == {"local", "hostssl"}
    assert {rule[-1] for rule in rules if rule[0] == "hostssl"} == {"scram-sha-256"}
    for option in ("ssl_cert_file", "ssl_key_file"):
        path = next(o.split("=", 1)[1] for o in options if o.startswith(option + "="))
        assert path.startswith("/var/lib/postgresql/pipeline/")
    entrypoint = (PG_COMPOSE / "compose-entrypoint.sh").read_text()
    assert "/var/lib/postgresql/pipeline" in entrypoint and "docker-entrypoint.sh" in entrypoint


def test_compose_stages_connect_as_their_own_roles_with_verify_full_dsn_files() -> None:
    users = {name for name in APP_SERVICES if "DATABASE_URL_FILE" in compose_env(name)}
    assert users == {"setup", "enrich", "store"}
    roles = set()
    for name in sorted(users):
        env = compose_env(name)
        assert "DATABASE_URL" not in env, name  # no DSN, no password in the compose file
        role = default(SETTINGS_OF[name], "database_role")
        roles.add(role)
        assert env["DATABASE_URL_FILE"] == f"{CREDENTIALS_AT}/database/{role}.url", name
        assert mounts(name)[CREDENTIALS_AT] == "pipeline-credentials", name
        condition = compose_service(name)["depends_on"].get("db-credentials", {})
        if name == "setup":
            assert condition == {"condition": "service_completed_successfully"}
    assert roles == {"migrator", "enrich", "store"}
    # db-credentials writes those files: tools.credentials, host and port of compose's server.
    maker = compose_service("db-credentials")
    location = urlsplit(maker["environment"]["DATABASE_URL"])
    assert (location.username, location.password) == (None, None)
    assert (location.hostname, location.port, location.path) == ("timescaledb", 5432, url_path())
    assert maker["environment"]["TLS_CA_FILE"] == f"{CREDENTIALS_AT}/ca.crt"
    script = (PG_COMPOSE / "compose-credentials.sh").read_text()
    assert "tools.credentials database" in script
    for role in roles:
        assert re.search(rf"for role in [^;]*\b{role}\b", script), role
    # ... and the server has each role's login user (its first start).
    init = (PG_COMPOSE / "init-roles.sh").read_text()
    for role in roles:
        assert re.search(rf"for name in [^;]*\b{role}\b", init), role


def url_path() -> str:
    return urlsplit(DEFAULT_DATABASE_URL).path


def test_compose_simulator_posts_to_the_ingest_container_and_publishes_to_mosquitto() -> None:
    settings = build_settings(SimulatorSettings, compose_env("simulator"))
    assert isinstance(settings, SimulatorSettings)
    http = urlsplit(settings.ingest_base_url())
    assert (http.scheme, http.hostname, http.port) == ("http", "ingest", 8080)
    assert http.port == int(compose_env("ingest")["HTTP_PORT"])
    mqtt = urlsplit(settings.mqtt_url)
    assert (mqtt.hostname, mqtt.port) == ("mosquitto", ARCHITECTURE_PORTS["mosquitto"])
    assert set(compose_service("simulator")["depends_on"]) == {"ingest"}


# --- the images of docker-compose.yml and the local stack ----------------------------------------


def local_stack_scripts() -> str:
    """deploy/local's shell scripts (stack.sh and the files it sources), as one text."""
    return "\n".join(path.read_text() for path in sorted(LOCAL_STACK.glob("*.sh")))


def local_stack_versions() -> dict[str, str]:
    """The releases `make up` installs: Kafka's from its Maven pom, PostgreSQL's major from the
    scripts' default, Mosquitto's and TimescaleDB's (Debian packages) from its README."""
    pom = (LOCAL_STACK / "kafka" / "pom.xml").read_text()
    stack = local_stack_scripts()
    readme = (LOCAL_STACK / "README.md").read_text()
    versions = {
        "kafka": re.findall(r"<kafka\.version>([^<]+)</kafka\.version>", pom),
        "pg_major": re.findall(r"^PG_MAJOR=\$\{PG_MAJOR:-(\d+)\}$", stack, re.MULTILINE),
        "mosquitto": re.findall(r"^\| Mosquitto [^|]*\| (\d+\.\d+\.\d+) ", readme, re.MULTILINE),
        "timescaledb": re.findall(
            r"^\| PostgreSQL \+ TimescaleDB \| (\d+) \(Debian\) \+ (\d+\.\d+\.\d+) ",
            readme,
            re.MULTILINE,
        ),
    }
    for name, found in versions.items():
        assert len(found) == 1, (name, found)
    [(readme_pg_major, timescaledb)] = versions["timescaledb"]
    assert readme_pg_major == versions["pg_major"][0]
    return {
        "kafka": versions["kafka"][0],
        "pg_major": versions["pg_major"][0],
        "mosquitto": versions["mosquitto"][0],
        "timescaledb": timescaledb,
    }


def test_compose_runs_the_infrastructure_releases_of_the_local_stack() -> None:
    local = local_stack_versions()
    assert local["kafka"] == "4.4.0" and local["pg_major"] == "15"
    assert compose_service("kafka")["image"] == f"apache/kafka:{local['kafka']}"
    assert compose_service("mosquitto")["image"] == f"eclipse-mosquitto:{local['mosquitto']}"
    assert compose_service("timescaledb")["image"] == (
        f"timescale/timescaledb:{local['timescaledb']}-pg{local['pg_major']}"
    )


def test_compose_pins_every_image_it_pulls_to_an_exact_release() -> None:
    pulled = {
        name: service["image"]
        for name, service in compose()["services"].items()
        if "build" not in service
    }
    assert set(pulled) == {"kafka", "mosquitto", "timescaledb", "prometheus", "grafana"}
    for name, image in pulled.items():
        _, _, tag = image.partition(":")
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-pg\d+)?", tag), (name, image)


def stack_timescaledb_settings() -> dict[str, str]:
    """The timescaledb.* lines of the postgresql.conf that the local stack renders."""
    stack = local_stack_scripts()
    found = re.findall(r"^(timescaledb\.\w+) = '?([^'\n]*)'?$", stack, re.MULTILINE)
    return dict(found)


def test_compose_timescaledb_runs_with_the_local_stacks_licence_and_telemetry_settings() -> None:
    local = stack_timescaledb_settings()
    assert local["timescaledb.license"] == "apache"
    assert local["timescaledb.telemetry_level"] == "off"
    command = command_of(compose_service("timescaledb")["command"])
    assert command[0] == "postgres"
    options = dict(
        command[index + 1].split("=", 1) for index, part in enumerate(command) if part == "-c"
    )
    for key in ("timescaledb.license", "timescaledb.telemetry_level"):
        assert options[key] == local[key], key


# --- Prometheus and Grafana in docker-compose.yml ------------------------------------------------


def prometheus_config() -> dict[str, Any]:
    data = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert isinstance(data, dict)
    return data


def mounts(name: str) -> dict[str, str]:
    """Container path -> host path (or volume name) of a compose service's volumes."""
    found = {}
    for volume in compose_service(name).get("volumes", []):
        source, target = str(volume).split(":")[:2]
        found[target] = source
    return found


@pytest.mark.parametrize("name", list(OBSERVABILITY_PORTS))
def test_compose_runs_prometheus_and_grafana_from_their_official_pinned_images(name: str) -> None:
    image = compose_service(name)["image"]
    repository, _, tag = image.partition(":")
    assert repository == {"prometheus": "prom/prometheus", "grafana": "grafana/grafana"}[name]
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), image
    port = OBSERVABILITY_PORTS[name]
    assert published_ports(compose_service(name)) == [(LOCALHOST, port, port)]
    assert compose_service(name)["healthcheck"]["test"][0] == "CMD"


def test_compose_prometheus_scrapes_every_stage_where_compose_runs_it() -> None:
    [job] = [j for j in prometheus_config()["scrape_configs"] if j["job_name"] == "sensor-pipeline"]
    # The stages label their own series with `stage`: honoured, not renamed exported_stage.
    assert job["honor_labels"] is True
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {
        target: group["labels"]["stage"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert targets == {f"{name}:{compose_env(name)['HTTP_PORT']}": name for name in STAGES}


def test_compose_prometheus_loads_the_config_and_rules_of_deploy_prometheus() -> None:
    assert mounts("prometheus")["/etc/prometheus"] == "./deploy/prometheus"
    command = command_of(compose_service("prometheus")["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    rule_globs = prometheus_config()["rule_files"]
    assert rule_globs == ["rules/*.yml"]
    assert sorted(PROMETHEUS_DIR.glob(rule_globs[0]))


def test_compose_grafana_provisions_datasources_that_reach_compose_services() -> None:
    assert mounts("grafana")["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    dashboards_at = mounts("grafana")["/etc/grafana/dashboards"]
    assert dashboards_at == "./deploy/grafana/dashboards"
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )["providers"]
    assert [p["options"]["path"] for p in providers] == ["/etc/grafana/dashboards"]
    home = compose_env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / dashboards_at / Path(home).name).is_file()
    sources = {
        s["uid"]: s
        for s in yaml.safe_load(
            (GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yml").read_text()
        )["datasources"]
    }
    prometheus = urlsplit(sources["prometheus"]["url"])
    assert (prometheus.hostname, prometheus.port) == (
        "prometheus",
        OBSERVABILITY_PORTS["prometheus"],
    )
    database = urlsplit(DEFAULT_DATABASE_URL)
    timescale = sources["timescaledb"]
    assert timescale["url"] == f"timescaledb:{ARCHITECTURE_PORTS['timescaledb']}"
    assert timescale["user"] == compose_env("timescaledb")["POSTGRES_USER"] == database.username
    assert timescale["secureJsonData"]["password"] == database.password
    assert timescale["jsonData"]["database"] == compose_env("timescaledb")["POSTGRES_DB"]
    assert set(compose_service("grafana")["depends_on"]) == {
        "prometheus",
        "timescaledb",
        "db-credentials",
    }
    # compose's TimescaleDB is TLS only: verified against the CA db-credentials copies.
    assert timescale["jsonData"]["sslmode"] == "verify-full"
    assert timescale["jsonData"]["sslRootCertFile"] == f"{CREDENTIALS_AT}/ca.crt"
    assert mounts("grafana")[CREDENTIALS_AT] == "pipeline-credentials"


def _advertised_listeners() -> dict[str, str]:
    listeners = compose_env("kafka")["KAFKA_ADVERTISED_LISTENERS"].split(",")
    return dict(item.split("://", 1) for item in listeners)


def test_compose_kafka_advertises_one_listener_to_containers_and_one_to_the_host() -> None:
    advertised = _advertised_listeners()
    default_servers = default(PipelineSettings, "kafka_bootstrap_servers")
    assert default_servers in advertised.values(), "the host listener is not the default address"
    internal = {address for address in advertised.values() if address != default_servers}
    assert internal and all(host_port(a)[0] == "kafka" for a in internal)
    for name in APP_SERVICES:
        servers = compose_env(name).get("KAFKA_BOOTSTRAP_SERVERS")
        if servers is not None:
            assert set(servers.split(",")) <= internal, name
    for name in (*STAGES, "setup"):
        assert "KAFKA_BOOTSTRAP_SERVERS" in compose_env(name), name
    listeners = compose_env("kafka")["KAFKA_LISTENERS"]
    assert f":{ARCHITECTURE_PORTS['kafka']}" in listeners


def test_compose_ingest_reaches_mosquitto_by_service_name_on_the_configured_listener() -> None:
    mqtt = urlsplit(compose_env("ingest")["MQTT_URL"])
    assert mqtt.hostname == "mosquitto"
    assert mqtt.port == mosquitto_listener_port() == ARCHITECTURE_PORTS["mosquitto"]
    mounts = [str(volume) for volume in compose_service("mosquitto")["volumes"]]
    assert any(
        m.startswith("./deploy/mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf")
        for m in mounts
    )


def test_compose_starts_stages_only_after_setup_succeeded_on_healthy_infrastructure() -> None:
    for name in STAGES:
        depends = compose_service(name)["depends_on"]
        assert depends["setup"]["condition"] == "service_completed_successfully", name
    assert compose_service("ingest")["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    setup = compose_service("setup")
    assert setup["restart"] == "no"
    for name in ("kafka", "timescaledb"):
        assert setup["depends_on"][name]["condition"] == "service_healthy"
    for name in ("kafka", "mosquitto", "timescaledb"):
        test = compose_service(name)["healthcheck"]["test"]
        assert test and test[0] in {"CMD", "CMD-SHELL"}, name
    assert compose_service("simulator")["profiles"] == ["demo"]


def test_compose_healthchecks_probe_the_stages_readiness_on_their_port() -> None:
    for name in STAGES:
        check = " ".join(compose_service(name)["healthcheck"]["test"])
        assert "/readyz" in check and "HTTP_PORT" in check, name
    pg_isready = compose_service("timescaledb")["healthcheck"]["test"]
    url = urlsplit(DEFAULT_DATABASE_URL)
    assert pg_isready[pg_isready.index("-U") + 1] == url.username
    assert pg_isready[pg_isready.index("-d") + 1] == url.path.lstrip("/")


def test_compose_gives_stages_longer_to_stop_than_their_shutdown_timeout() -> None:
    for name in STAGES:
        grace = duration_s(str(compose_service(name)["stop_grace_period"]))
        assert grace > default(STAGES[name], "shutdown_timeout_s"), name


# --- deploy/mosquitto/mosquitto.conf -------------------------------------------------------------


def mosquitto_options() -> dict[str, str]:
    options: dict[str, str] = {}
    for line in MOSQUITTO_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            options.setdefault(key, value.strip())
    return options


def mosquitto_listener_port() -> int:
    return int(mosquitto_options()["listener"].split()[0])


def test_mosquitto_conf_listens_where_ingest_connects_and_keeps_sessions() -> None:
    options = mosquitto_options()
    default_mqtt = urlsplit(default(SimulatorSettings, "mqtt_url"))
    assert mosquitto_listener_port() == default_mqtt.port == ARCHITECTURE_PORTS["mosquitto"]
    assert options["allow_anonymous"] == "true"
    assert options["persistence"] == "true"
    assert options["persistence_location"].startswith("/mosquitto/data")


def test_mosquitto_tls_listener_refuses_anonymous_clients_and_takes_accounts_from_the_plugin() -> (
    None
):
    lines = config_lines(MOSQUITTO_TLS_CONF.read_text())
    assert lines[0] == "listener 8883"
    # ingest's default: this listener, over TLS (its host is the local stack's, rendered in).
    default_mqtt = urlsplit(default(IngestSettings, "mqtt_url"))
    assert (default_mqtt.scheme, default_mqtt.port) == ("mqtts", 8883)
    assert {"tls_version tlsv1.2", "allow_anonymous false"} <= set(lines)
    assert [line for line in lines if line.startswith("plugin ")] == [
        "plugin /usr/lib/mosquitto_dynamic_security.so"
    ]
    # Each listener's own allow_anonymous and plugin: 1883 stays as it was.
    assert mosquitto_options()["per_listener_settings"] == "true"


def test_mosquitto_autosaves_every_30_s_the_interval_the_fault_figures_were_measured_with() -> None:
    assert mosquitto_options()["autosave_interval"] == "30"


def config_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()[:1] not in ("", "#")]


def render_local_mosquitto_conf(
    state: Path, shared: Path, tls: Path = MOSQUITTO_TLS_CONF
) -> subprocess.CompletedProcess[str]:
    """stack.sh's mosquitto_render_config (stack.sh sourced: it only defines), STACK_DIR=state."""
    (state / "mosquitto").mkdir(parents=True, exist_ok=True)
    script = '. "$1"; MQTT_SHARED_CONF=$2 MQTT_SHARED_TLS_CONF=$3; '
    script += 'mosquitto_render_config "user mosquitto"'
    return subprocess.run(
        ["bash", "-c", script, "render", str(STACK_SH), str(shared), str(tls)],
        env=os.environ | {"STACK_DIR": str(state), "MQTT_PORT": "31883", "MQTT_TLS_PORT": "38883"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_local_stack_renders_the_compose_mosquitto_conf_changing_only_address_and_paths(
    tmp_path: Path,
) -> None:
    done = render_local_mosquitto_conf(tmp_path, MOSQUITTO_CONF)
    assert done.returncode == 0, done.stderr
    # compose's file, then the TLS listener's block (which compose does not mount yet)
    shared = config_lines(MOSQUITTO_CONF.read_text()) + config_lines(MOSQUITTO_TLS_CONF.read_text())
    local = config_lines((tmp_path / "mosquitto" / "mosquitto.conf").read_text())
    plugin = next(line for line in local if line.startswith("plugin "))
    only_local = {
        "user mosquitto",
        "listener 31883 127.0.0.1",
        f"persistence_location {tmp_path}/mosquitto/data/",
        f"log_dest file {tmp_path}/logs/mosquitto.log",
        "listener 38883 127.0.0.1",
        f"certfile {tmp_path}/mosquitto/tls/mosquitto.crt",
        f"keyfile {tmp_path}/mosquitto/tls/mosquitto.key",
        plugin,
        f"plugin_opt_config_file {tmp_path}/mosquitto/dynamic-security.json",
    }
    assert plugin.endswith("/mosquitto_dynamic_security.so"), plugin
    only_shared = {
        "listener 1883",
        "persistence_location /mosquitto/data/",
        "log_dest stdout",
        "listener 8883",
        "certfile /mosquitto/certs/mosquitto.crt",
        "keyfile /mosquitto/certs/mosquitto.key",
        "plugin /usr/lib/mosquitto_dynamic_security.so",
        "plugin_opt_config_file /mosquitto/data/dynamic-security.json",
    }
    assert set(local) - set(shared) == only_local
    assert set(shared) - set(local) == only_shared
    assert [line for line in local if line not in only_local] == [
        line for line in shared if line not in only_shared
    ]


def test_rendering_the_local_mosquitto_conf_fails_when_a_replaced_line_is_doubled(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "mosquitto.conf"
    shared.write_text(MOSQUITTO_CONF.read_text() + "listener 8883\n")
    done = render_local_mosquitto_conf(tmp_path / "state", shared)
    assert done.returncode == 1
    assert "cannot render" in done.stderr
    assert not (tmp_path / "state" / "mosquitto" / "mosquitto.conf").exists()


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_installs_the_project_on_a_pinned_python_slim_and_runs_as_non_root() -> None:
    instructions = dockerfile_instructions()
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )

    def expand(match: re.Match[str]) -> str:
        return args[match.group(1)]

    bases = [
        re.sub(r"\$\{(\w+)\}", expand, rest.split()[0])
        for keyword, rest in instructions
        if keyword == "FROM"
    ]
    # One base for both stages: the official slim image at an exact patch release on an exact
    # Debian release, of the Python that pyproject requires.
    assert len(bases) >= 2 and len(set(bases)) == 1, bases
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(bookworm|trixie)", bases[0])
    assert match, f"not an exact python:X.Y.Z-slim-<debian> tag: {bases[0]}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    patch = Version(".".join(match.groups()[:3]))
    assert patch in SpecifierSet(requires), (bases[0], requires)
    assert requires.startswith(f">={patch.major}.{patch.minor}"), (bases[0], requires)
    # The dependencies from the runtime lock (test_lock.py), then the project without them.
    assert any(
        k == "RUN" and re.search(r"pip install --no-deps \.(\s|$)", r) for k, r in instructions
    )
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert [rest for keyword, rest in final if keyword == "WORKDIR"][-1] == "/app"
    cmd = [rest for keyword, rest in final if keyword == "CMD"]
    assert len(cmd) == 1 and yaml.safe_load(cmd[0])[:2] == ["python", "-m"]
    assert yaml.safe_load(cmd[0])[2] in MODULE_OF.values()


def test_dockerfile_labels_the_image_with_pyprojects_oci_annotations() -> None:
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    labels = dict(
        item.split("=", 1)
        for keyword, rest in final
        if keyword == "LABEL"
        for item in shlex.split(rest)
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    oci = "org.opencontainers.image."
    assert labels[oci + "title"] == project["name"]
    assert labels[oci + "description"] == project["description"]
    assert labels[oci + "licenses"] == project["license"] == "Apache-2.0"
    assert labels[oci + "version"] == project["version"]
    # Given at build time (--build-arg): the repository and the commit.
    assert labels[oci + "source"] == "${SOURCE_URL}"
    assert labels[oci + "revision"] == "${REVISION}"
    assert {"ARG SOURCE_URL", "ARG REVISION"} <= {f"{k} {r.split('=')[0]}" for k, r in final}


def test_the_installed_package_carries_the_migrations_the_image_runs() -> None:
    from libs.common.db import MIGRATIONS_DIR, migration_files

    # The image installs the project with pip and copies no source: the migrations must be
    # package data inside libs.common, which pyproject's package-data globs ship.
    assert MIGRATIONS_DIR == ROOT / "libs" / "common" / "migrations"
    assert migration_files()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    assert "*.sql" in package_data["*"]
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    copied = {"libs", "services", "tools", "pyproject.toml", "requirements", "LICENSE", "NOTICE"}
    assert not ignored & copied


# --- deploy/k8s ----------------------------------------------------------------------------------


@functools.cache
def k8s_documents() -> tuple[dict[str, Any], ...]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict), path.name
                docs.append({**doc, "_file": path.name})
    return tuple(docs)


def k8s(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def pod_spec(name: str, kind: str = "Deployment") -> dict[str, Any]:
    objects = k8s(kind)
    assert name in objects, f"deploy/k8s has no {kind} {name!r}"
    spec = objects[name]["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container(name: str, kind: str = "Deployment") -> dict[str, Any]:
    containers = pod_spec(name, kind)["containers"]
    assert len(containers) == 1, name
    only = containers[0]
    assert isinstance(only, dict)
    return only


def k8s_env(name: str, kind: str = "Deployment") -> dict[str, str | None]:
    """Every variable the container gets, with its value (None: from the downward API)."""
    configmaps = {n: doc.get("data", {}) for n, doc in k8s("ConfigMap").items()}
    secrets = {n: doc.get("stringData", {}) for n, doc in k8s("Secret").items()}
    env: dict[str, str | None] = {}
    for source in container(name, kind).get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]])
    for var in container(name, kind).get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "configMapKeyRef" in ref:
            env[var["name"]] = configmaps[ref["configMapKeyRef"]["name"]][
                ref["configMapKeyRef"]["key"]
            ]
        elif "secretKeyRef" in ref:
            env[var["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        else:
            env[var["name"]] = None
    return env


K8S_WORKLOADS = [(name, "Deployment") for name in (*STAGES, "admin")] + [("setup", "Job")]


def test_k8s_kustomization_lists_every_manifest_and_each_parses() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    manifests = sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests
    for doc in k8s_documents():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc["_file"]
    assert {doc["_file"] for doc in k8s_documents()} == set(manifests)
    assert set(k8s("Deployment")) == {*STAGES, "admin"}
    assert set(k8s("Job")) == {"setup"}


@pytest.mark.parametrize(("name", "kind"), K8S_WORKLOADS)
def test_k8s_runs_each_workload_as_its_python_module(name: str, kind: str) -> None:
    assert container(name, kind)["command"] == ["python", "-m", MODULE_OF[name]]
    assert container(name, kind)["image"] == "sensor-pipeline"


@pytest.mark.parametrize(("name", "kind"), K8S_WORKLOADS)
def test_k8s_sets_only_env_vars_the_services_read(name: str, kind: str) -> None:
    env = k8s_env(name, kind)
    assert env, name
    assert unknown_env_vars(list(env), SETTINGS_OF[name]) == [], name


@pytest.mark.parametrize(("name", "kind"), K8S_WORKLOADS)
def test_k8s_env_values_are_accepted_by_the_settings_classes(name: str, kind: str) -> None:
    env = {key: value for key, value in k8s_env(name, kind).items() if value is not None}
    settings = build_settings(SETTINGS_OF[name], env)
    for key, value in env.items():
        if not key.endswith("_FILE"):
            assert as_text(getattr(settings, key.lower())) == value, (name, key)


@pytest.mark.parametrize("name", list(STAGES))
def test_k8s_container_ports_and_probes_match_the_settings(name: str) -> None:
    port = default(STAGES[name], "http_port")
    assert port == ARCHITECTURE_PORTS[name]
    spec = container(name)
    [declared] = spec["ports"]
    assert declared["containerPort"] == port
    env = k8s_env(name)
    assert env["HTTP_PORT"] == str(port)
    assert env["HTTP_HOST"] == "0.0.0.0"
    expected_paths = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected_paths.items():
        get = spec[probe]["httpGet"]
        assert get["path"] == path, (name, probe)
        assert get["port"] in (declared["name"], port), (name, probe)
    annotations = k8s("Deployment")[name]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("name", list(STAGES))
def test_k8s_a_service_routes_to_each_stage_http_port(name: str) -> None:
    deployment = k8s("Deployment")[name]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [declared] = container(name)["ports"]
    matching = [
        service
        for service in k8s("Service").values()
        if service["spec"]["selector"].items() <= labels.items()
    ]
    assert len(matching) == 1, name
    [port] = matching[0]["spec"]["ports"]
    assert port["port"] == default(STAGES[name], "http_port")
    assert port["targetPort"] in (declared["name"], declared["containerPort"])
    if name == "ingest":
        assert matching[0]["metadata"]["name"] == "ingest"


def test_k8s_topic_names_and_consumer_groups_match_the_settings_defaults() -> None:
    for name, kind in K8S_WORKLOADS:
        env, settings = k8s_env(name, kind), SETTINGS_OF[name]
        for key in TOPIC_VARS:
            assert env[key] == default(settings, key.lower()), (name, key)
        if "CONSUMER_GROUP" in env:
            assert env["CONSUMER_GROUP"] == default(settings, "consumer_group"), name
    for name in CONSUMER_STAGES:
        assert k8s_env(name)["CONSUMER_GROUP"] == name
    mqtt_topic = k8s_env("ingest").get("MQTT_TOPIC")
    assert mqtt_topic in (None, default(IngestSettings, "mqtt_topic"))


def test_k8s_ingest_replicas_take_their_mqtt_client_id_from_the_pod_name() -> None:
    [var] = [v for v in container("ingest")["env"] if v["name"] == "MQTT_CLIENT_ID"]
    assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "MQTT_CLIENT_ID" not in {
        key for doc in k8s("ConfigMap").values() for key in doc.get("data", {})
    }


def test_k8s_hpas_scale_the_consumer_stages_on_cpu_within_the_partition_count() -> None:
    hpas = k8s("HorizontalPodAutoscaler")
    assert set(hpas) == set(CONSUMER_STAGES)
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert [m["resource"]["name"] for m in spec["metrics"]] == ["cpu"]
        partitions = int(k8s_env(name)["TOPIC_PARTITIONS"] or 0)
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"] <= partitions, name
        assert container(name)["resources"]["requests"]["cpu"], name


@pytest.mark.parametrize(("name", "kind"), K8S_WORKLOADS)
def test_k8s_pods_have_memory_limits_and_time_to_drain_on_sigterm(name: str, kind: str) -> None:
    resources = container(name, kind)["resources"]
    assert resources["limits"]["memory"] == "256Mi"
    assert resources["requests"]["memory"] and resources["requests"]["cpu"]
    spec = pod_spec(name, kind)
    assert spec["terminationGracePeriodSeconds"] == 30
    pre_stop = container(name, kind).get("lifecycle", {}).get("preStop", {})
    pause = float(pre_stop["exec"]["command"][-1]) if pre_stop else 0.0
    assert pause + default(SETTINGS_OF[name], "shutdown_timeout_s") < 30, name
    assert spec["securityContext"]["runAsNonRoot"] is True


K8S_CA_AT = "/etc/pipeline/ca"
PLACEHOLDER = "REPLACE-ME"


def test_k8s_workloads_connect_as_their_own_roles_with_verify_full_dsn_files() -> None:
    url = urlsplit(DEFAULT_DATABASE_URL)
    [secret] = k8s("Secret").values()
    users = {name for name, kind in K8S_WORKLOADS if "DATABASE_URL_FILE" in k8s_env(name, kind)}
    assert users == {"enrich", "store", "admin", "setup"}
    for name, kind in K8S_WORKLOADS:
        if name not in users:
            continue
        env = k8s_env(name, kind)
        assert "DATABASE_URL" not in env, name
        role = default(SETTINGS_OF[name], "database_role")
        mount, _, file_name = str(env["DATABASE_URL_FILE"]).rpartition("/")
        by_path = {m["mountPath"]: m["name"] for m in container(name, kind)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(name, kind)["volumes"]}
        source = volumes[by_path[mount]]["secret"]
        assert source["secretName"] == secret["metadata"]["name"], name
        assert source["items"] == [{"key": f"{role}.url", "path": file_name}], name
        assert volumes[by_path[K8S_CA_AT]]["configMap"]["name"] == "pipeline-database-ca"
        used = urlsplit(secret["stringData"][f"{role}.url"])
        assert (used.scheme, used.username, used.password) == (url.scheme, role, PLACEHOLDER)
        assert (used.port, used.path) == (ARCHITECTURE_PORTS["timescaledb"], url.path), name
        assert parse_qs(used.query) == {
            "sslmode": ["verify-full"],
            "sslrootcert": [f"{K8S_CA_AT}/ca.crt"],
        }, name
    [ca] = [doc for doc in k8s("ConfigMap").values() if doc["metadata"]["name"].endswith("-ca")]
    assert set(ca["data"]) == {"ca.crt"}


# --- all deployment files ------------------------------------------------------------------------


def deploy_files() -> list[Path]:
    files = [COMPOSE_FILE, DOCKERFILE, DOCKERIGNORE, MOSQUITTO_CONF, *sorted(K8S_DIR.iterdir())]
    files += sorted(PROMETHEUS_DIR.rglob("*")) + sorted(GRAFANA_DIR.rglob("*"))
    files += sorted(PG_COMPOSE.iterdir())
    return [path for path in files if path.is_file()]


def _credentials(text: str) -> list[SplitResult]:
    return [urlsplit(m.group(0)) for m in re.finditer(r"\b[a-z][a-z0-9+.-]*://[^\s\"']+@\S+", text)]


def test_deploy_files_hold_no_machine_paths_and_only_the_throwaway_credentials() -> None:
    url = urlsplit(DEFAULT_DATABASE_URL)
    machine_path = re.compile(r"(/home/|/Users/|/work/|/root/|/tmp/|[A-Za-z]:\\\\)")
    found = 0
    for path in deploy_files():
        text = path.read_text()
        assert not machine_path.search(text), path.name
        for used in _credentials(text):
            # The owner's throwaway password, or a role's DSN whose password is a placeholder.
            if used.username in ROLES:
                assert used.password == PLACEHOLDER, path.name
            else:
                assert (used.username, used.password) == (url.username, url.password), path.name
            found += 1
        for match in re.finditer(r"PASSWORD\w*\s*[:=]\s*\"?([^\s\"]+)", text):
            assert match.group(1) == url.password, path.name
            found += 1
    assert found >= 5


def test_rendering_the_local_mosquitto_conf_fails_when_a_tls_line_is_doubled(
    tmp_path: Path,
) -> None:
    tls = tmp_path / "secure-listener.conf"
    tls.write_text(MOSQUITTO_TLS_CONF.read_text() + "plugin /usr/lib/another.so\n")
    done = render_local_mosquitto_conf(tmp_path / "state", MOSQUITTO_CONF, tls)
    assert done.returncode == 1
    assert "expected one plugin line" in done.stderr
    assert not (tmp_path / "state" / "mosquitto" / "mosquitto.conf").exists()
