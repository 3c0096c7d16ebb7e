"""The production deployment: ``docker-compose.yml``, the ``Dockerfile`` and ``dagster.yaml``.

There is no Docker engine on the test machines, so the compose file is checked statically against
the repository (build contexts, volumes, variables, ports, dependencies, and that every command is a
real entry point of the installed code), and then the three Dagster processes compose starts — the
code-location gRPC server, the webserver and the daemon — are started for real, with the same
commands, the image's workspace file and the repository's ``dagster.yaml`` on a fresh PostgreSQL
database, and a partition is materialized through the webserver's GraphQL API.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import psycopg2
import pytest
import requests
import yaml
from dagster import Definitions
from dagster._core.definitions.reconstruct import load_def_in_module
from dagster._utils.test.definitions import LazyDefinitions
from packaging.requirements import Requirement

from tests.e2e.support import (
    REPO,
    TEST_REQUESTS_PER_DAY,
    VENV_BIN,
    DagsterWebserver,
    ManagedProcess,
    PostgresDatabases,
    asset_names,
    definitions_of,
    free_port,
    port_open,
    process_env,
    stop_all,
    wait_until,
    workspace_location_name,
)

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
#: How long the materialization launched through the webserver may take, queueing included.
RUN_TIMEOUT_S = 120
#: How long each process may take to start (the code server imports the whole project; MLflow's
#: server took over 90 s beside the rest of the suite on 2 loaded cores).
START_TIMEOUT_S = 180

# ``$$`` is a literal dollar; ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``,
# ``${VAR?err}``, ``${VAR:+alt}`` and ``$VAR`` are interpolated by docker compose.
_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# --- reading the deployment files --------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    """The parsed ``docker-compose.yml``."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@cache
def env_example() -> dict[str, str]:
    """``KEY=value`` lines of ``.env.example`` (what ``cp .env.example .env`` gives compose)."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: not KEY=value: {line!r}"
        values[key.strip()] = value.strip().strip("'\"")
    return values


def strings_in(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML tree (what compose interpolates)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)


def required_variables(text: str) -> set[str]:
    """Variables ``text`` interpolates without a default (they must come from ``.env``)."""
    names = set()
    for match in _VARIABLE.finditer(text.replace("$$", "")):
        name = match["braced"] or match["bare"]
        if match["op"] in (None, ":?", "?"):
            names.add(name)
    return names


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of ``text`` with ``env`` (defaults where a value is unset)."""

    def substitute(match: re.Match[str]) -> str:
        name = match["braced"] or match["bare"]
        op, arg, value = match["op"], match["arg"] or "", env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":+", "+"):
            return arg if value else ""
        assert value is not None, f"{name} is not defined"
        return value

    parts = text.split("$$")
    return "$".join(_VARIABLE.sub(substitute, part) for part in parts)


@dataclass(frozen=True)
class Dockerfile:
    """The instructions of a Dockerfile, with continuation lines joined."""

    path: Path
    instructions: tuple[tuple[str, str], ...]

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        logical: list[str] = []
        pending = ""
        for raw in path.read_text().splitlines():
            stripped = raw.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            logical.append(pending + stripped)
            pending = ""
        instructions = []
        for line in logical:
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
        return cls(path=path, instructions=tuple(instructions))

    def args(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    @property
    def env(self) -> dict[str, str]:
        """``ENV`` settings (``KEY=value`` form)."""
        values: dict[str, str] = {}
        for args in self.args("ENV"):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                if sep:
                    values[key] = value
        return values

    def expand(self, text: str) -> str:
        """``${VAR}`` / ``$VAR`` of the image's ``ENV`` in ``text``."""
        env = self.env
        return _VARIABLE.sub(lambda m: env.get(m["braced"] or m["bare"], m[0]), text)

    @property
    def workdir(self) -> str:
        workdirs = self.args("WORKDIR")
        return self.expand(workdirs[-1]) if workdirs else "/"

    def copies(self) -> list[tuple[list[str], str]]:
        """``(sources, destination)`` of each ``COPY``/``ADD`` from the build context."""
        result = []
        for keyword in ("COPY", "ADD"):
            for args in self.args(keyword):
                words = shlex.split(args)
                if any(w.startswith("--from") for w in words):
                    continue
                words = [w for w in words if not w.startswith("--")]
                *sources, destination = words
                destination = self.expand(destination)
                if not destination.startswith("/"):
                    destination = f"{self.workdir.rstrip('/')}/{destination}"
                result.append((sources, destination))
        return result

    def image_file(self, image_path: str) -> str | None:
        """The content of a file the image gets from this Dockerfile: copied from the context, or
        written by a ``RUN printf '…' > path``; None when the Dockerfile does not make it."""
        for sources, destination in self.copies():
            for source in sources:
                local = self.path.parent / source
                if not local.is_file():
                    continue
                target = destination if not destination.endswith("/") else destination + local.name
                if target == image_path or (
                    len(sources) == 1 and f"{destination.rstrip('/')}/{local.name}" == image_path
                ):
                    return local.read_text()
        for args in self.args("RUN"):
            words = shlex.split(args)
            if words[:1] == ["printf"] and ">" in words and words[words.index(">") + 1] == image_path:
                template = words[1]
                return template.replace("\\n", "\n").replace("\\t", "\t").replace("%%", "%")
        return None

    def cmd(self) -> list[str]:
        """The image's default command (exec form or shell form)."""
        commands = self.args("CMD")
        assert commands, f"{self.path} has no CMD"
        text = commands[-1]
        return list(yaml.safe_load(text)) if text.startswith("[") else shlex.split(text)


@dataclass(frozen=True)
class Service:
    """One compose service, as a test reads it (variables from ``.env.example``)."""

    name: str
    spec: dict[str, Any]

    @property
    def dockerfile(self) -> Dockerfile | None:
        build = self.spec.get("build")
        if build is None:
            return None
        context = build if isinstance(build, str) else build.get("context", ".")
        name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        return Dockerfile.read((COMPOSE_FILE.parent / context / name).resolve())

    @property
    def argv(self) -> list[str] | None:
        """The command the service runs (its ``command``, else the image's ``CMD``)."""
        command = self.spec.get("command")
        if command is None:
            dockerfile = self.dockerfile
            return dockerfile.cmd() if dockerfile else None
        env = env_example()
        if isinstance(command, str):
            return shlex.split(interpolate(command, env))
        return [interpolate(str(word), env) for word in command]

    @property
    def environment(self) -> dict[str, str]:
        environment = self.spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        return {k: interpolate(str(v), env_example()) for k, v in environment.items()}


def services() -> list[Service]:
    return [Service(name, spec or {}) for name, spec in compose()["services"].items()]


def service_running(*prefix: str) -> Service:
    """The one service whose command starts with ``prefix`` (e.g. ``dagster api grpc``)."""
    matches = [s for s in services() if (s.argv or [])[: len(prefix)] == list(prefix)]
    assert len(matches) == 1, f"expected one compose service running {' '.join(prefix)}, got {matches}"
    return matches[0]


def option(argv: Sequence[str], *names: str) -> str | None:
    """The value of the first of ``names`` in ``argv`` (``-p 4000`` or ``--port=4000``)."""
    for i, word in enumerate(argv):
        for name in names:
            if word == name and i + 1 < len(argv):
                return argv[i + 1]
            if word.startswith(f"{name}="):
                return word.split("=", 1)[1]
    return None


def with_option(argv: Sequence[str], names: Sequence[str], value: str) -> list[str]:
    """``argv`` with the value of option ``names`` replaced (it must be there)."""
    out = list(argv)
    for i, word in enumerate(out):
        if word in names and i + 1 < len(out):
            out[i + 1] = value
            return out
    raise AssertionError(f"{' '.join(argv)} has no {'/'.join(names)} option")


def click_command(argv: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``argv`` with the installed console script's own click command, as the process
    would: the resolved command path and its parameters (a wrong option fails here)."""
    points = {ep.value: ep for ep in metadata.entry_points(group="console_scripts", name=argv[0])}
    assert points, f"{argv[0]} is not a console script of any installed distribution"
    entry = next(iter(points.values()))
    command = entry.load()
    if not isinstance(command, click.Command):  # a ``main()`` wrapping the module's click ``cli``
        command = importlib.import_module(entry.module).cli
    path, args = [argv[0]], list(argv[1:])
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command, info_name=path[-1]), args[0])
        assert sub is not None, f"{' '.join(path)} has no subcommand {args[0]!r}"
        command, path, args = sub, [*path, args[0]], args[1:]
    try:
        context = command.make_context(" ".join(path), args)
    except click.ClickException as exc:
        raise AssertionError(f"{' '.join(argv)}: {exc.format_message()}") from exc
    return " ".join(path), dict(context.params)


def image_workspace(dockerfile: Dockerfile, image_path: str) -> dict[str, Any]:
    """The workspace file the image holds at ``image_path``, parsed."""
    content = dockerfile.image_file(image_path)
    assert content is not None, f"{dockerfile.path} does not create {image_path}"
    return yaml.safe_load(content)


def grpc_target(workspace: Mapping[str, Any]) -> dict[str, Any]:
    """The one ``grpc_server`` entry of a workspace."""
    entries = [entry["grpc_server"] for entry in workspace["load_from"] if "grpc_server" in entry]
    assert len(entries) == 1, f"expected one grpc_server in the workspace, got {workspace}"
    return entries[0]


# --- compose, statically -----------------------------------------------------------------------


def test_every_service_builds_from_the_repository() -> None:
    """Each service has an image or a build whose context, Dockerfile and COPY sources exist."""
    problems = []
    for service in services():
        build = service.spec.get("build")
        if build is None:
            if not service.spec.get("image"):
                problems.append(f"{service.name}: neither build nor image")
            continue
        context = build if isinstance(build, str) else build.get("context", ".")
        name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        context_dir = (COMPOSE_FILE.parent / context).resolve()
        if not context_dir.is_dir():
            problems.append(f"{service.name}: build context {context_dir} does not exist")
            continue
        if not (context_dir / name).is_file():
            problems.append(f"{service.name}: {context_dir / name} does not exist")
            continue
        for sources, destination in Dockerfile.read(context_dir / name).copies():
            for source in sources:
                if not list(context_dir.glob(source)):
                    problems.append(f"{service.name}: COPY {source} {destination}: not in the context")
    assert not problems, "\n".join(problems)


def test_named_volumes_are_declared() -> None:
    declared = set((compose().get("volumes") or {}).keys())
    problems = []
    for service in services():
        for volume in service.spec.get("volumes") or []:
            if isinstance(volume, Mapping):
                source = volume.get("source") if volume.get("type", "volume") == "volume" else None
            else:
                parts = str(volume).split(":")
                source = parts[0] if len(parts) > 1 else None
            if source and not source.startswith(("/", ".", "~", "$")) and source not in declared:
                problems.append(f"{service.name}: volume {source!r} is not declared under volumes:")
    assert not problems, "\n".join(problems)


def test_every_variable_is_defined_in_env_example() -> None:
    """``cp .env.example .env && docker compose up`` leaves no variable unset."""
    defined = set(env_example())
    used = set().union(*(required_variables(text) for text in strings_in(compose())))
    assert used, "docker-compose.yml uses no variables: is it still read from .env?"
    assert used <= defined, f"not defined in .env.example: {sorted(used - defined)}"


def test_ports_are_published_on_loopback_only() -> None:
    problems, published = [], 0
    for service in services():
        for port in service.spec.get("ports") or []:
            published += 1
            if isinstance(port, Mapping):
                host_ip = str(port.get("host_ip", ""))
            else:
                text = interpolate(str(port), env_example())
                host_ip = text.rsplit(":", 2)[0] if text.count(":") == 2 else ""
            if host_ip != "127.0.0.1":
                problems.append(f"{service.name}: {port!r} is not bound to 127.0.0.1")
    assert published, "no service publishes a port: how does a person reach the UI?"
    assert not problems, "\n".join(problems)


def test_depends_on_targets_exist() -> None:
    names = {service.name for service in services()}
    problems = []
    for service in services():
        depends = service.spec.get("depends_on") or []
        conditions = depends if isinstance(depends, Mapping) else {d: {} for d in depends}
        for target, condition in conditions.items():
            if target not in names:
                problems.append(f"{service.name} depends on unknown service {target!r}")
            elif (condition or {}).get("condition") == "service_healthy":
                if "healthcheck" not in compose()["services"][target]:
                    problems.append(f"{service.name} waits for {target} to be healthy: it has no healthcheck")
    assert not problems, "\n".join(problems)


def test_commands_are_the_projects_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command is an installed console script whose own CLI accepts its arguments; the
    code server serves the project's ``Definitions`` (loaded as Dagster loads it, in the code
    service's environment); the webserver and the daemon load the image's workspace, which points
    at the code server's service name and port."""
    problems = []
    for service in services():
        argv = service.argv
        if argv is None or service.dockerfile is None:
            continue  # a stock image (postgres): its entry point is not ours
        executable = VENV_BIN / argv[0]
        if not executable.is_file():
            problems.append(f"{service.name}: {argv[0]} is not installed in {VENV_BIN}")
            continue
        # paths inside the image that the Dockerfile creates are checked against a local copy
        local_argv = list(argv)
        for i, word in enumerate(argv):
            content = service.dockerfile.image_file(word) if word.startswith("/") else None
            if content is not None:
                local = tmp_path / service.name / Path(word).name
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(content)
                local_argv[i] = str(local)
        try:
            click_command(local_argv)
        except AssertionError as exc:
            problems.append(f"{service.name}: {exc}")
    assert not problems, "\n".join(problems)

    # the code server: -m/-a name the project's one Definitions. ``defs`` is lazy (a
    # ``@dagster.definitions`` function reading the environment when Dagster loads it): load it
    # the way the code server does, in the code service's environment
    code = service_running("dagster", "api", "grpc")
    path, params = click_command(code.argv or [])
    assert path == "dagster api grpc"
    importlib.import_module(params["module_name"])
    target = load_def_in_module(
        params["module_name"], params["attribute"] or "defs", params.get("working_directory")
    )
    for name in [n for n in os.environ if n.startswith(("CLICKLOOP_", "DAGSTER_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    for name, value in code.environment.items():
        monkeypatch.setenv(name, value)
    loaded = target() if isinstance(target, LazyDefinitions) else target
    assert isinstance(loaded, Definitions), (
        f"{params['module_name']}.{params['attribute']} is {type(target)}, loading {type(loaded)}"
    )
    repository = loaded.get_repository_def()
    # ... the project's: the definitions of the code service's settings
    expected = definitions_of(code.environment)
    assert {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()} == (
        asset_names(expected)
    )
    assert {job.name for job in repository.get_all_jobs()} == {
        job.name for job in expected.get_repository_def().get_all_jobs()
    }

    # the webserver and the daemon: the image's workspace reaches that code server
    location = workspace_location_name()
    for prefix in (("dagster-webserver",), ("dagster-daemon", "run")):
        service = service_running(*prefix)
        workspace_path = option(service.argv or [], "-w", "--workspace")
        assert workspace_path, f"{service.name} runs without -w"
        dockerfile = service.dockerfile
        assert dockerfile is not None
        grpc = grpc_target(image_workspace(dockerfile, workspace_path))
        assert grpc["host"] == code.name, (
            f"{service.name}'s workspace points at {grpc['host']}, not {code.name}"
        )
        assert str(grpc["port"]) == option(code.argv or [], "-p", "--port")
        assert grpc.get("location_name") == location, (
            "the UI would name the location differently from make ui"
        )


def test_the_dagster_services_share_the_production_instance() -> None:
    """Code server, webserver and daemon read the repository's ``dagster.yaml`` (PostgreSQL,
    queued runs) from ``DAGSTER_HOME`` and get ``DAGSTER_POSTGRES_URL`` from the environment."""
    instance = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    for prefix in (("dagster", "api", "grpc"), ("dagster-webserver",), ("dagster-daemon", "run")):
        service = service_running(*prefix)
        dockerfile = service.dockerfile
        assert dockerfile is not None
        home = service.environment.get("DAGSTER_HOME") or dockerfile.env.get("DAGSTER_HOME")
        assert home, f"{service.name} has no DAGSTER_HOME"
        content = dockerfile.image_file(f"{home.rstrip('/')}/dagster.yaml")
        assert content == (REPO / "dagster.yaml").read_text(), (
            f"{service.name}: the image has no copy of the repository's dagster.yaml in {home}"
        )
        assert service.environment.get("DAGSTER_POSTGRES_URL", "").startswith("postgresql://")


def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports of a Python file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _installed_closure(requirements: Sequence[str]) -> set[str]:
    """Normalized names of the distributions ``pip install`` of ``requirements`` brings in."""
    normalize = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    seen: set[str] = set()
    queue = [Requirement(r) for r in requirements]
    while queue:
        requirement = queue.pop()
        name = normalize(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                queue.append(sub)
    return seen


def test_the_image_holds_every_package_the_code_imports() -> None:
    """The Dockerfile copies every local package the code imports (and ``pip install .`` installs
    every third-party one), so the code server in the image imports what it does here."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({p.rstrip("*").rstrip(".") for p in patterns})
    copied = {
        Path(source).parts[0]
        for sources, _ in Dockerfile.read(REPO / "Dockerfile").copies()
        for source in sources
    }

    imported: dict[str, set[str]] = {}
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            for name in _imports(path):
                imported.setdefault(name, set()).add(str(path.relative_to(REPO)))

    local = {n for n in imported if (REPO / n).is_dir() or (REPO / f"{n}.py").is_file()}
    missing_local = {n: sorted(imported[n])[:3] for n in sorted(local | set(packages)) if n not in copied}
    assert not missing_local, f"imported or packaged but not copied into the image: {missing_local}"

    installed = _installed_closure(project["project"]["dependencies"])
    distributions = metadata.packages_distributions()
    missing = {}
    for name in sorted(set(imported) - local - set(sys.stdlib_module_names)):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(name, [])}
        if not dists & installed:
            missing[name] = sorted(imported[name])[:3]
    assert not missing, f"imported but not installed by pyproject's dependencies: {missing}"


# --- compose's processes, for real, on PostgreSQL -------------------------------------------------


def _database(url: str) -> tuple[str, int, str]:
    """``(host, port, database)`` of a PostgreSQL URL: which settings share one database."""
    parsed = urlsplit(url)
    return parsed.hostname or "", parsed.port or 5432, parsed.path.lstrip("/")


def test_dagster_and_mlflow_keep_their_tables_apart() -> None:
    """Dagster's instance and MLflow's tracking store both create ``runs``, ``jobs`` and
    ``alembic_version`` tables: they cannot share a database (schema)."""
    instance_url = service_running("dagster", "api", "grpc").environment["DAGSTER_POSTGRES_URL"]
    mlflow = service_running("mlflow", "server")
    backend = option(mlflow.argv or [], "--backend-store-uri")
    assert backend, "the mlflow service runs without --backend-store-uri"
    assert _database(instance_url) != _database(backend), (
        f"DAGSTER_POSTGRES_URL and MLflow's --backend-store-uri are the same database "
        f"{_database(backend)}: their tables (runs, jobs, alembic_version) collide"
    )


@dataclass
class LocalDeployment:
    """Maps what compose gives a container onto this machine: each database named in the
    settings becomes a fresh local database (settings that share one keep sharing it), each
    named volume a temporary folder, each started service a local port."""

    databases: PostgresDatabases
    root: Path
    ports: dict[str, int]
    _urls: dict[tuple[str, int, str], str] | None = None

    def database_url(self, url: str) -> str:
        self._urls = self._urls or {}
        key = _database(url)
        if key not in self._urls:
            self._urls[key] = self.databases.create()
        return self._urls[key]

    def volume_dir(self, service: Service, container_path: str) -> str | None:
        """The local folder of a container path on one of the service's named volumes."""
        for volume in service.spec.get("volumes") or []:
            source, _, target = str(volume).partition(":")
            target = target.split(":")[0]
            if target and (container_path == target or container_path.startswith(target.rstrip("/") + "/")):
                return str(self.root / source) + container_path[len(target.rstrip("/")) :]
        return None

    def value(self, service: Service, value: str) -> str:
        """One setting or argument, as it must read on this machine."""
        if value.startswith(("postgresql://", "postgresql+")):
            return self.database_url(value)
        parsed = urlsplit(value)
        if parsed.scheme in ("http", "https") and parsed.hostname in self.ports:
            return urlunsplit(parsed._replace(netloc=f"127.0.0.1:{self.ports[parsed.hostname]}"))
        if value.startswith("/"):
            return self.volume_dir(service, value) or value
        return value

    def environment(self, service: Service, **overrides: str) -> dict[str, str]:
        env = {k: self.value(service, v) for k, v in service.environment.items()}
        env.update(overrides)
        return process_env(**env)

    def argv(self, service: Service, **options: str) -> list[str]:
        """The service's command with local values: ``options`` maps an option (``--port``) to
        its value here; every other argument is mapped like a setting."""
        argv = [self.value(service, word) for word in service.argv or []]
        for names, value in options.items():
            argv = with_option(argv, names.split("|"), value)
        return [str(VENV_BIN / argv[0]), *argv[1:]]


_LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

_MATERIALIZATIONS = """
query($keys: [AssetKeyInput!], $partition: String!) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    assetMaterializations(partitions: [$partition]) { runId partition }
  }
}
"""


def test_compose_processes_materialize_a_partition_on_postgres(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """MLflow, the gRPC code server, the webserver and the daemon, started with compose's
    commands and settings (databases, volumes and service names mapped to this machine), the
    image's workspace and the repository's dagster.yaml: a partition launched through the
    webserver's GraphQL API is queued, dequeued by the daemon, succeeds, and lands in PostgreSQL."""
    job_name = "ingest_job"
    mlflow = service_running("mlflow", "server")
    code = service_running("dagster", "api", "grpc")
    webserver = service_running("dagster-webserver")
    daemon = service_running("dagster-daemon", "run")
    assert webserver.dockerfile is not None
    ports = {mlflow.name: free_port(), code.name: free_port(), webserver.name: free_port()}
    here = LocalDeployment(postgres_databases, tmp_path / "volumes", ports)

    # the image's DAGSTER_HOME (the repository's dagster.yaml) and workspace, made local
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    workspace_option = option(webserver.argv or [], "-w", "--workspace") or ""
    workspace = image_workspace(webserver.dockerfile, workspace_option)
    grpc = grpc_target(workspace)
    grpc.update(host="127.0.0.1", port=ports[grpc["host"]])
    local_workspace = tmp_path / "workspace.yaml"
    local_workspace.write_text(yaml.safe_dump(workspace))
    location = grpc["location_name"]

    def env(service: Service) -> dict[str, str]:
        return here.environment(
            service, DAGSTER_HOME=str(home), CLICKLOOP_REQUESTS_PER_DAY=TEST_REQUESTS_PER_DAY
        )

    # what the code server will serve: the definitions of its settings
    job = definitions_of(env(code)).resolve_job_def(job_name)
    partition = job.partitions_def.get_first_partition_key()
    expected_assets = {key.to_user_string() for key in job.asset_layer.selected_asset_keys}

    logs = tmp_path / "logs"
    processes: list[ManagedProcess] = []
    try:
        processes.append(
            ManagedProcess.start(
                mlflow.name,
                here.argv(mlflow, **{"-h|--host": "127.0.0.1", "-p|--port": str(ports[mlflow.name])}),
                env(mlflow),
                logs,
            )
        )
        processes.append(
            ManagedProcess.start(
                code.name,
                here.argv(code, **{"-h|--host": "127.0.0.1", "-p|--port": str(ports[code.name])}),
                env(code),
                logs,
            )
        )
        wait_until(lambda: port_open(ports[code.name]), START_TIMEOUT_S, "the code server", alive=processes)
        processes.append(
            ManagedProcess.start(
                webserver.name,
                here.argv(
                    webserver,
                    **{
                        "-h|--host": "127.0.0.1",
                        "-p|--port": str(ports[webserver.name]),
                        "-w|--workspace": str(local_workspace),
                    },
                ),
                env(webserver),
                logs,
            )
        )
        processes.append(
            ManagedProcess.start(
                daemon.name,
                here.argv(daemon, **{"-w|--workspace": str(local_workspace)}),
                env(daemon),
                logs,
            )
        )

        api = DagsterWebserver(f"http://127.0.0.1:{ports[webserver.name]}")
        wait_until(api.server_info, START_TIMEOUT_S, "the webserver", alive=processes)
        wait_until(
            lambda: api.loaded_location(location),
            START_TIMEOUT_S,
            f"code location {location}",
            alive=processes,
        )
        assert api.query("{ instance { runQueuingSupported } }")["instance"]["runQueuingSupported"]
        mlflow_health = f"http://127.0.0.1:{ports[mlflow.name]}/health"
        wait_until(
            lambda: requests.get(mlflow_health, timeout=5).ok,
            START_TIMEOUT_S,
            "MLflow",
            alive=processes,
        )

        launched = api.query(
            _LAUNCH_RUN,
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": location,
                        "repositoryName": api.repository_name(location),
                        "jobName": job_name,
                    },
                    # one process for the run's steps: the run worker has imported the project
                    # already, and each step subprocess would import it again (~10 s each on
                    # 2 cores); the deployment, not the executor, is under test here
                    "runConfigData": {"execution": {"config": {"in_process": {}}}},
                    "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        # the QueuedRunCoordinator only queues: the daemon must dequeue it for it to run at all
        assert launched["run"]["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")

        status = api.wait_for_run(run_id, RUN_TIMEOUT_S, alive=processes)
        assert status == "SUCCESS", f"run {run_id}: {status}\n{api.run_errors(run_id)}"

        nodes = api.query(
            _MATERIALIZATIONS,
            {
                "keys": [{"path": name.split("/")} for name in expected_assets],
                "partition": partition,
            },
        )["assetNodes"]
        materialized = {
            "/".join(n["assetKey"]["path"])
            for n in nodes
            if any(m["runId"] == run_id for m in n["assetMaterializations"])
        }
        assert materialized == expected_assets
    finally:
        stop_all(processes)

    # the run and its events are in the (fresh) instance database, readable by any client
    instance_url = env(code)["DAGSTER_POSTGRES_URL"]
    with psycopg2.connect(instance_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute(
            "SELECT count(*) FROM event_logs"
            " WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (run_id,),
        )
        assert cur.fetchone()[0] == len(expected_assets)
