"""docker-compose.yml and the balancer's config hold together: no Docker engine runs here, so the
structure is checked with PyYAML (and with `docker compose config` where the plugin exists)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sampler_service.config import ServiceConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _in_profile(compose: dict, profile: str) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if profile in svc.get("profiles", [])}


def _flags(command: list[str]) -> dict[str, str]:
    return {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}


def test_every_serve_flag_in_the_compose_file_is_a_service_config_field(compose):
    fields = {"--" + name.replace("_", "-") for name in ServiceConfig.__dataclass_fields__}
    for name, service in compose["services"].items():
        command = service.get("command", [])
        if command[:2] == ["ssd", "serve"]:
            assert set(_flags(command)) <= fields, name


def test_replicas_profile_scales_samplers_over_postgres_behind_the_balancer(compose):
    services = _in_profile(compose, "replicas")
    assert set(services) == {"postgres", "sampler", "balancer", "trainer"}
    sampler = services["sampler"]
    assert "ports" not in sampler and "container_name" not in sampler  # what `--scale sampler=N` needs
    store = _flags(sampler["command"])["--store"]
    assert store == "postgresql://ssd@postgres:5432/ssd"  # the password comes from PGPASSWORD, not argv
    assert sampler["environment"]["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert sampler["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "ssd"
    assert services["balancer"]["ports"] == ["${SSD_PORT:-8000}:8000"]
    # The trainer goes through the balancer, never to one replica.
    assert _flags(services["trainer"]["command"])["--sampler-url"] == "http://balancer:8000"
    assert "ssd-pg" in compose["volumes"]


def test_the_balancer_config_is_mounted_and_targets_the_sampler_service(compose):
    balancer = compose["services"]["balancer"]
    source, target = balancer["volumes"][0].split(":")[:2]
    conf = (ROOT / source).read_text()
    assert target == "/etc/nginx/nginx.conf"
    assert re.search(r"server\s+sampler:8000\s+resolve", conf)  # re-resolved: scaled replicas join
    assert re.search(r"resolver\s+127\.0\.0\.11", conf)           # Compose's DNS
    assert re.search(r"listen\s+8000;", conf)
    assert conf.count("{") == conf.count("}")
    # Uploads: as large as the service accepts, and no read timeout shorter than an adapter sync.
    assert "client_max_body_size 4g;" in conf
    read_timeout = int(re.search(r"proxy_read_timeout\s+(\d+)s;", conf).group(1))
    assert read_timeout >= ServiceConfig().adapter_sync_timeout_s


def test_single_replica_profiles_are_unchanged(compose):
    assert set(_in_profile(compose, "vllm-cpu")) == {"sampler-cpu", "trainer-cpu"}
    assert set(_in_profile(compose, "vllm")) == {"sampler-gpu", "trainer-gpu"}


def _compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (Debian's package), whichever is here."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(_compose_command() is None, reason="no docker compose client is installed")
@pytest.mark.parametrize("profile", ["vllm-cpu", "vllm", "replicas"])
def test_docker_compose_config_accepts_each_profile(profile, tmp_path):
    # The key files an operator writes (docs/deployment.md); compose refuses to run without them.
    (tmp_path / "api-keys.txt").write_text("k" * 32 + " sample,admin\n")
    (tmp_path / "trainer.env").write_text("SSD_API_KEY=" + "k" * 32 + "\n")
    env = os.environ | {"SSD_API_KEYS_FILE": str(tmp_path / "api-keys.txt"),
                        "SSD_TRAINER_ENV": str(tmp_path / "trainer.env")}
    result = subprocess.run([*_compose_command(), "-f", str(COMPOSE), "--profile", profile, "config", "--quiet"],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
