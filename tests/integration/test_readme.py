"""The README runs as written: every ```python block and every command of every ```bash block.

How a block is marked: an HTML comment on the line right above its opening fence (GitHub shows
none of it), one of

    <!-- readme-test: skip REASON -->
        Not run; pytest lists the block as skipped with REASON (``-rs``, on by default here). For
        what this machine cannot give: Docker, the Hub, a Ray or Kubernetes cluster, other hosts,
        placeholders such as BROKER. Say where else it is tested, when it is.
    <!-- readme-test: background -->
        A ```bash block of commands that run until Ctrl-C (``start``, ``worker``, ``gateway``,
        ``status --watch``): each is started in the background, in a process group of its own
        as from a terminal (its output taken for a terminal's), and runs until a later
        ``ctrl-c`` block or the end of the README. The next block runs once each broker
        started has its workers (its own, and the ``worker`` commands that join it), each
        gateway answers and any other command has printed something.
    <!-- readme-test: ctrl-c background -->
        The same, after Ctrl-C (SIGINT to each group) to everything running in the background:
        for a block whose broker takes the ports of the one before, as a reader would stop it.

Unmarked ```python and ```bash (``sh``, ``shell``, ``console``) blocks run in README order,
against whatever runs in the background then: a python block as a file of its own in a fresh
interpreter, each command of a bash block through bash, with this interpreter's ``python`` and
``openenv-broker`` first on PATH; each must exit 0. ``pip install`` commands are not run (the test
runs where they were): the extras of this project they name must be in pyproject.toml. Other
blocks (toml, output) are text. A background command must still be running when it is
stopped, exit 0 on Ctrl-C and log nothing on the way (no warning, no traceback): what a user
sees.

Ports: each port the README names (``tcp://127.0.0.1:5555``, ``--gateway-port 8000``...) is
replaced by a free one, the same everywhere, after an ``openenv-broker`` command that relies on a
default address or port has had it spelled out; nothing binds the README's own ports, so the
test runs beside a real broker and beside other tests. Commands run in a scratch folder, which is
their TMPDIR too.

Adding a section: a trainer example needs a broker hosting its env. Start one in a background
block (``ctrl-c background`` when it takes the ports of the running one), or join a ``worker``
hosting the env to the running broker (``background``: no restart, the cheaper); the python
block then connects to tcp://127.0.0.1:5555 as the others do. Keep it quick: the whole README
runs in under 50 s on a busy 2-core machine (the Quick start's bench alone takes 8), and each
broker restarted costs some 3 s more.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import click
import pytest

from broker.cli import main as cli_main
from broker.exposure import local_address
from openenv_zmq import BatchClient
from openenv_zmq.errors import BrokerUnreachable
from tests.processes import REPO_ROOT, free_port, wait_until

README = REPO_ROOT / "README.md"
SHELLS = frozenset({"bash", "sh", "shell", "console"})
RUN_TIMEOUT = 50.0
READY_TIMEOUT = 40.0
STOP_TIMEOUT = 20.0

FENCE = re.compile(r"^ *```(?P<language>[\w-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<words>.*?)\s*-->\s*$")
# A port: after a loopback host, or as the value of --port, --gateway-port, --metrics-port...
PORT = re.compile(r"(?:(?<=127\.0\.0\.1:)|(?<=localhost:)|(?<=-port )|(?<=-port=))(\d{2,5})\b")
PIP_EXTRAS = re.compile(r"\.(?:\[(?P<extras>[\w,-]+)\])?")
# What a process that was stopped by Ctrl-C must not have logged on the way.
NOISE = re.compile(r"Traceback|WARNING|ERROR|CRITICAL")


@dataclass(frozen=True)
class Block:
    """A fenced block of the README and what its marker says."""

    line: int
    """Of the opening fence, from 1."""
    language: str
    text: str
    skip: str | None = None
    background: bool = False
    ctrl_c: bool = False

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.language}"

    @property
    def code(self) -> bool:
        return self.language == "python" or self.language in SHELLS

    @property
    def runs(self) -> bool:
        return self.code and self.skip is None


def read_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text`` with its marker; ValueError for a marker that is not
    understood or not right above a fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    fences: set[int] = set()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next(j for j in range(index + 1, len(lines)) if lines[j].strip() == "```")
        fences.add(index)
        body = textwrap.dedent("\n".join(lines[index + 1 : end]))
        marker = MARKER.match(lines[index - 1]) if index else None
        block = Block(index + 1, opening["language"], body)
        blocks.append(block if marker is None else _marked(block, marker["words"]))
        index = end + 1
    for number, line in enumerate(lines):
        if MARKER.match(line) and number + 1 not in fences:
            raise ValueError(f"README.md:{number + 1}: a readme-test marker not above a fence")
    return blocks


def _marked(block: Block, words: str) -> Block:
    where = f"README.md:{block.line - 1}"
    first, _, rest = words.partition(" ")
    if first == "skip":
        if not rest.strip():
            raise ValueError(f"{where}: skip says no reason")
        return Block(block.line, block.language, block.text, skip=rest.strip())
    flags = set(words.split())
    if not flags or not flags <= {"background", "ctrl-c"}:
        raise ValueError(f"{where}: not a readme-test marker: {words!r}")
    if block.language not in SHELLS:
        raise ValueError(f"{where}: only shell blocks run in the background")
    return Block(
        block.line,
        block.language,
        block.text,
        background="background" in flags,
        ctrl_c="ctrl-c" in flags,
    )


def commands(shell: str) -> list[str]:
    """The commands of a shell block: continued lines joined, comments and prompts dropped,
    ``a && b`` split in two."""
    found = []
    for line in shell.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        if line and not line.startswith("#"):
            found += [part.strip() for part in line.split(" && ")]
    return found


def pip_extras(command: str) -> list[str] | None:
    """The extras of this project ``pip install [-e] .[a,b] ...`` names; None for a command
    that is no ``pip install``."""
    words = shlex.split(command, comments=True)
    if words[:2] != ["pip", "install"]:
        return None
    targets = [w for w in words[2:] if w != "-e"]
    extras: list[str] = []
    for target in targets:
        spec = PIP_EXTRAS.fullmatch(target)  # this project; another package is not checked
        if spec is not None and spec["extras"]:
            extras += spec["extras"].split(",")
    return extras


def cli_params(words: list[str]) -> tuple[click.Command, click.Context] | None:
    """The ``openenv-broker`` subcommand ``words`` run and its parsed parameters (defaults
    included), or None for another command or a group (``keys``, ``image``)."""
    if words[:1] != ["openenv-broker"] or len(words) < 2:
        return None
    command = cli_main.commands.get(words[1])
    if command is None or isinstance(command, click.Group):
        return None
    return command, command.make_context(words[1], words[2:], resilient_parsing=True)


def spelled_out(command: str) -> str:
    """``command`` with each address or port option it leaves to its default written out, so
    that rewriting the README's ports reaches those too."""
    words = shlex.split(command, comments=True)
    parsed = cli_params(words)
    if parsed is None:
        return command
    subcommand, context = parsed
    added: list[str] = []
    for param in subcommand.params:
        name, value = param.name, context.params.get(param.name or "")
        if not isinstance(param, click.Option) or name is None or value is None:
            continue
        if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            continue
        if (isinstance(value, str) and "://" in value) or name.endswith("port"):
            added += [param.opts[0], str(value)]
    return shlex.join(words + added) if added else command


@dataclass
class Background:
    """A command started in the background, and where its output goes."""

    command: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class BrokerUp:
    """A broker a background block started, and the workers it should end up with."""

    frontend: str
    workers: int


@dataclass
class Readme:
    """Runs the README's blocks in order, keeping its background commands."""

    work: Path
    blocks: list[Block]
    ports: dict[str, str] = field(default_factory=dict)
    running: list[tuple[Block, Background]] = field(default_factory=list)
    brokers: dict[str, BrokerUp] = field(default_factory=dict)
    """By worker address (--worker-bind), which ``worker --connect`` names."""
    ran: set[int] = field(default_factory=set)

    @property
    def env(self) -> dict[str, str]:
        # This interpreter's scripts first: `python` and the openenv-broker it installed.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, "TMPDIR": str(self.work)}

    def local(self, text: str) -> str:
        """``text`` with every README port replaced by this run's free port for it."""

        def replace(match: re.Match[str]) -> str:
            port = match[1]
            if port not in self.ports:
                self.ports[port] = str(free_port())
            return self.ports[port]

        return PORT.sub(replace, text)

    def background_before(self, block: Block) -> list[Block]:
        """The background blocks running when ``block`` runs in README order."""
        wanted: list[Block] = []
        for earlier in self.blocks:
            if earlier.line > block.line or earlier.skip is not None:
                continue
            if earlier.ctrl_c:
                wanted = []
            if earlier.background and earlier.line < block.line:
                wanted.append(earlier)
        return wanted

    def reach(self, block: Block) -> None:
        """Bring the background to what runs just before ``block`` (its own Ctrl-C included),
        whatever ran before: a block selected alone gets its broker too."""
        wanted = self.background_before(block)
        started = list(dict.fromkeys(b for b, _ in self.running))
        if started != wanted[: len(started)]:
            self.ctrl_c()
            started = []
        for earlier in wanted[len(started) :]:
            self.start(earlier)

    def run(self, block: Block) -> None:
        self.ran.add(block.line)
        if block.background:
            self.start(block)
        elif block.language == "python":
            self.python(block)
        else:
            for command in commands(block.text):
                self.shell(block, command)

    def python(self, block: Block) -> None:
        script = self.work / f"readme_{block.line}.py"
        script.write_text(self.local(block.text))
        self.to_the_end([sys.executable, str(script)], block.id)

    def shell(self, block: Block, command: str) -> None:
        extras = pip_extras(command)
        if extras is not None:
            known = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
            missing = set(extras) - set(known["project"]["optional-dependencies"])
            assert not missing, f"{block.id}: {command!r} names no such extra: {missing}"
            return
        local = self.local(spelled_out(command))
        self.to_the_end(["bash", "-c", local], f"{block.id}: {local!r}")

    def to_the_end(self, args: list[str], what: str) -> None:
        """Run ``args`` in the scratch folder; it must exit 0 within :data:`RUN_TIMEOUT`."""
        with subprocess.Popen(
            args,
            cwd=self.work,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            process_group=0,  # what it starts (a broker's workers) goes with it on a timeout
        ) as process:
            try:
                _, errors = process.communicate(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise AssertionError(
                    f"{what} still ran after {RUN_TIMEOUT:g} s: a command that runs until"
                    " Ctrl-C belongs in a <!-- readme-test: background --> block"
                ) from None
        assert process.returncode == 0, f"{what} failed:\n{errors[-3000:]}"

    def start(self, block: Block) -> None:
        """Start each command of ``block`` in the background; return once they serve."""
        started: list[Background] = []
        for command in commands(block.text):
            if pip_extras(command) is not None:
                self.shell(block, command)
                continue
            local = self.local(spelled_out(command))
            log = self.work / f"background_{block.line}_{len(started)}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    ["bash", "-c", f"exec {local}"],
                    cwd=self.work,
                    # As from a terminal: rich draws a live view (status --watch) as it goes.
                    env={**self.env, "TTY_COMPATIBLE": "1"},
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    process_group=0,  # as from a terminal: Ctrl-C signals this command's group
                )
            background = Background(local, process, log)
            self.running.append((block, background))
            started.append(background)
        self.wait_until_serving(block, started)

    def wait_until_serving(self, block: Block, started: list[Background]) -> None:
        counted: list[BrokerUp] = []
        gateways: list[str] = []
        talkers: list[Background] = []
        for background in started:
            parsed = cli_params(shlex.split(background.command))
            name, params = ("", {}) if parsed is None else (parsed[0].name, parsed[1].params)
            if name == "start":
                up = BrokerUp(local_address(params["bind"]), params["workers"])
                self.brokers[params["worker_bind"]] = up
                counted.append(up)
                if params["gateway_port"] is not None:
                    gateways.append(f"http://{params['gateway_host']}:{params['gateway_port']}")
            elif name == "worker" and params["connect"] in self.brokers:
                up = self.brokers[params["connect"]]
                up.workers += 1
                if up not in counted:
                    counted.append(up)
            elif name == "gateway":
                gateways.append(f"http://{params['host']}:{params['port']}")
            elif name != "worker":
                talkers.append(background)  # status --watch: serving once it shows something

        def serving(ready: Callable[[], bool], what: str) -> None:
            def check() -> bool:
                for background in started:  # a command that ended fails the wait at once
                    assert background.process.poll() is None, (
                        f"{block.id}: {background.command!r} ended at start:\n"
                        + background.log.read_text(errors="replace")
                    )
                return ready()

            wait_until(check, READY_TIMEOUT, what)

        for up in counted:
            with _Workers(up.frontend) as workers:
                want = f"{up.workers} workers at {up.frontend}"
                serving(partial(workers.at_least, up.workers), want)
        for url in gateways:
            serving(partial(_answers, f"{url}/health"), f"{url}/health")
        for talker in talkers:
            serving(partial(_printed, talker.log), f"output of {talker.command!r}")

    def ctrl_c(self) -> None:
        """Ctrl-C to every background command, the last started first, as a reader would stop
        them (a gateway before its broker, which it still closes its envs on); each must have
        been running, exit 0 and log no warning or traceback."""
        running, self.running = self.running, []
        self.brokers.clear()
        problems = []
        for block, background in reversed(running):
            what = f"{block.id}: {background.command!r}"
            if background.process.poll() is not None:
                problems.append(f"{what} ended before Ctrl-C")
                continue
            os.killpg(background.process.pid, signal.SIGINT)
            try:
                code = background.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(background.process.pid, signal.SIGKILL)
                background.process.wait()
                problems.append(f"{what} ignored Ctrl-C")
                continue
            output = background.log.read_text(errors="replace")
            if code != 0 or NOISE.search(output):
                problems.append(f"{what} exited with {code} on Ctrl-C:\n{output}")
        assert not problems, "\n".join(problems)

    def kill(self) -> None:
        """The last resort, for a run that failed: SIGKILL to whatever still runs."""
        for _, background in self.running:
            if background.process.poll() is None:
                os.killpg(background.process.pid, signal.SIGKILL)
                background.process.wait()
        self.running = []


class _Workers:
    """The live workers of the broker at ``frontend``, asked through one client."""

    def __init__(self, frontend: str) -> None:
        self.frontend = frontend
        self.client: BatchClient | None = None

    def at_least(self, count: int) -> bool:
        """Whether ``count`` workers have joined; False while the broker does not answer."""
        if self.client is None:
            try:
                self.client = BatchClient(self.frontend, connect_timeout=1.0)
            except BrokerUnreachable:
                return False
        return len(self.client.workers()) >= count

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()


def _printed(log: Path) -> bool:
    return log.stat().st_size > 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Readme]:
    scripts = Path(sys.executable).parent
    if not (scripts / "openenv-broker").exists():
        pytest.fail(f"no openenv-broker script beside {sys.executable}: pip install -e . first")
    runner = Readme(tmp_path_factory.mktemp("readme"), BLOCKS)
    try:
        yield runner
    finally:
        runner.kill()


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.code], ids=lambda b: b.id)
def test_readme_block(readme: Readme, block: Block) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    readme.reach(block)
    readme.run(block)


def test_readme_summary(readme: Readme, capsys: pytest.CaptureFixture[str]) -> None:
    """Last: Ctrl-C to what still runs in the background, and the tally."""
    started = time.monotonic()
    readme.ctrl_c()
    stopped = time.monotonic() - started
    runnable = [b for b in BLOCKS if b.runs]
    skipped = [b for b in BLOCKS if b.code and b.skip is not None]
    text = len(BLOCKS) - len(runnable) - len(skipped)
    with capsys.disabled():
        print(
            f"\nREADME.md: {len(readme.ran)} of {len(runnable)} code blocks run,"
            f" {len(skipped)} skipped, {text} text; the last background stopped in {stopped:.1f} s"
        )
        for block in skipped:
            print(f"  skipped {block.id}: {block.skip}")
    if len(readme.ran) < len(runnable):
        pytest.skip("only some blocks were selected: no tally")
    assert sorted(readme.ran) == [b.line for b in runnable]


def test_markers_read_as_documented() -> None:
    blocks = read_blocks(
        "<!-- readme-test: skip a Docker engine -->\n```bash\ndocker ps\n```\n\n"
        "<!-- readme-test: ctrl-c background -->\n```bash\nopenenv-broker start \\\n"
        "    --workers 1  # one\nopenenv-broker worker --connect tcp://127.0.0.1:5556\n```\n"
        "```python\nprint(1)\n```\n```toml\n[x]\n```\n"
    )
    assert [(b.language, b.skip, b.background, b.ctrl_c) for b in blocks] == [
        ("bash", "a Docker engine", False, False),
        ("bash", None, True, True),
        ("python", None, False, False),
        ("toml", None, False, False),
    ]
    assert commands(blocks[1].text) == [
        "openenv-broker start      --workers 1  # one",
        "openenv-broker worker --connect tcp://127.0.0.1:5556",
    ]
    for wrong in ("<!-- readme-test: skip -->\n```bash\nx\n```\n", "<!-- readme-test: bg -->\n"):
        with pytest.raises(ValueError, match=r"README\.md:1:"):
            read_blocks(wrong)


def test_defaults_are_spelled_out_and_ports_replaced(tmp_path: Path) -> None:
    runner = Readme(tmp_path, [])
    start = runner.local(spelled_out("openenv-broker start --workers 0  # a bare broker"))
    words = shlex.split(start)
    front, back = words[words.index("--bind") + 1], words[words.index("--worker-bind") + 1]
    assert front == f"tcp://127.0.0.1:{runner.ports['5555']}"
    assert back == f"tcp://127.0.0.1:{runner.ports['5556']}"
    gateway = runner.local(spelled_out("openenv-broker gateway --env echo"))
    assert f"--port {runner.ports['8000']}" in gateway and runner.ports["5555"] in gateway
    assert runner.local('BatchClient("tcp://127.0.0.1:5555")') == f'BatchClient("{front}")'
    assert spelled_out("openenv-broker bench") == "openenv-broker bench"  # an embedded broker
    assert pip_extras('pip install -e ".[dev]"') == ["dev"]
    assert pip_extras("pip install -e .") == []
