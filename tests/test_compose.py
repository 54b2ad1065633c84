"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine runs here): what
`docker compose up` would trip over, caught before anyone runs it."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from consumer.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_ENV = "STREAMSEG_KAFKA__BOOTSTRAP_SERVERS"
REDIS_ENV = "STREAMSEG_REDIS__URL"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict)
    return compose["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _services_setting(services: dict[str, dict[str, Any]], variable: str) -> dict[str, str]:
    """Service name -> value of ``variable`` in its environment, for services that set it."""
    found = {name: _environment(service).get(variable) for name, service in services.items()}
    return {name: value for name, value in found.items() if value is not None}


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    return {name: {} for name in deps} if isinstance(deps, list) else dict(deps)


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def _built(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if "build" in svc}


def test_depends_on_names_existing_services_with_health_checks(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dep, options in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            if options.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health check"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        if "@sha256:" in image:
            continue
        _, _, tag = image.rpartition(":")
        assert "/" not in tag and tag, f"{name}: image {image!r} has no tag"
        # A version, optionally with a leading "v" (prom/prometheus:v3.1.0).
        assert tag != "latest" and re.match(r"v?\d", tag), f"{name}: {image!r} is not a version"


def test_kafka_and_redis_have_health_checks(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("kafka", "redis"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_kafka_address_in_env_is_a_listener_of_the_broker(
    services: dict[str, dict[str, Any]],
) -> None:
    users = _services_setting(services, KAFKA_ENV)
    assert users, f"no service sets {KAFKA_ENV}"
    for name, bootstrap in users.items():
        for address in bootstrap.split(","):
            host, _, port = address.rpartition(":")
            assert host in services, f"{name}: {KAFKA_ENV} host {host!r} is not a service"
            broker_env = _environment(services[host])
            advertised = broker_env.get("KAFKA_ADVERTISED_LISTENERS", "")
            listeners = broker_env.get("KAFKA_LISTENERS", "")
            # Clients connect to the bootstrap address, then to what the broker advertises.
            assert f"//{host}:{port}" in advertised, f"{name}: {address} is not advertised"
            assert re.search(rf"//[^,]*:{port}(,|$)", listeners), f"{host} listens not on {port}"
            assert host in _depends_on(services[name]), f"{name} does not wait for {host}"


def test_published_kafka_ports_match_listeners(services: dict[str, dict[str, Any]]) -> None:
    broker_env = _environment(services["kafka"])
    for mapping in services["kafka"].get("ports", []):
        host_port, _, container_port = str(mapping).rpartition(":")
        assert re.search(rf"//[^,]*:{container_port}(,|$)", broker_env["KAFKA_LISTENERS"])
        # A host client is sent to the advertised address: it must be the published port.
        assert f"localhost:{host_port}" in broker_env["KAFKA_ADVERTISED_LISTENERS"]


def test_redis_url_in_env_points_at_the_redis_service(services: dict[str, dict[str, Any]]) -> None:
    users = _services_setting(services, REDIS_ENV)
    assert users, f"no service sets {REDIS_ENV}"
    for name, url in users.items():
        parts = urlsplit(url)
        assert parts.scheme in ("redis", "rediss")
        host = parts.hostname or ""
        assert host in services, f"{name}: {REDIS_ENV} host {host!r} is not a service"
        assert services[host]["image"].startswith("redis:")
        command = _command(services[host])
        served = int(command[command.index("--port") + 1]) if "--port" in command else 6379
        assert (parts.port or 6379) == served, f"{name}: {url} but redis serves on {served}"
        assert host in _depends_on(services[name]), f"{name} does not wait for {host}"


def test_built_services_run_real_streamseg_subcommands(
    services: dict[str, dict[str, Any]],
) -> None:
    parser = build_parser()
    subcommands = next(
        action.choices
        for action in parser._actions  # argparse offers no public way to list subcommands
        if isinstance(action.choices, dict)
    )
    built = _built(services)
    assert {"consumer", "trainer"} <= built.keys()
    assert _command(built["consumer"])[0] == "run"
    assert _command(built["trainer"])[0] == "train"
    for name, service in built.items():
        command = _command(service)
        assert command and command[0] in subcommands, f"{name}: {command} is no subcommand"
        try:
            parser.parse_args(command)
        except SystemExit as exc:
            pytest.fail(f"{name}: `streamseg {shlex.join(command)}` is rejected (exit {exc.code})")


def test_dockerfile_runs_the_installed_cli() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["streamseg"\]', dockerfile, re.MULTILINE)
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "streamseg" in scripts
    # Every file the image build COPYs must exist and be in the build context, or the build fails.
    ignored = {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), f"Dockerfile copies missing {source}"
                assert source not in ignored, f".dockerignore hides {source} from the build"


def test_consumer_and_trainer_health_checks_ask_their_readyz_port(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, port in (("consumer", "9108"), ("trainer", "9107")):
        command = _command(services[name])
        assert command[command.index("--metrics-port") + 1] == port
        check = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://localhost:{port}/readyz" in check, f"{name} health check misses /readyz"


def test_prometheus_scrapes_the_metrics_ports_and_grafana_gets_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    source = next(
        v.split(":")[0]
        for v in services["prometheus"]["volumes"]
        if v.split(":")[1] == "/etc/prometheus/prometheus.yml"
    )
    config = yaml.safe_load((REPO_ROOT / source).read_text())
    # Every service running streamseg, each scaled replica included (a static target named
    # one container of `--scale consumer=3`, picked by DNS): DNS discovery of its name.
    targets = {
        (name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
        for name in sd["names"]
        if sd["type"] == "A"
    }
    commands = {name: _command(service) for name, service in services.items()}
    served = {
        (name, int(command[command.index("--metrics-port") + 1]))
        for name, command in commands.items()
        if "--metrics-port" in command
    }
    assert len(served) == 4 and targets == served
    for volume in services["grafana"]["volumes"]:
        source = volume.split(":")[0]
        assert (REPO_ROOT / source).is_dir(), f"grafana mounts missing {source}"
