"""load(): read the main file and conf.d, check each, merge, build Config, run the checks across keys.

Symbolic links in conf.d are refused (a problem naming the link and its target), not followed:

- conf.d is where packages and configuration management drop files, and what localaid reads as
  root must be what ``ls -l /etc/localaid/conf.d`` shows.  A link would make a file's content and
  trust depend on a second directory that listing does not show, and one that changes without
  conf.d changing;
- errors then always name the file to edit, and ``sources`` the files actually read;
- a link can dangle, or lead to a FIFO or a device; refusing them all is one simple rule.

Copy the file into conf.d instead.  The main file (one path, named on purpose: the default or
``--config``) may be a link; it is followed, and with the trust checks on, the directories holding
both the link and its target are checked (trust.py).
"""

from __future__ import annotations

import dataclasses
import os

import localaid.config.trust as trust
from localaid import modelchoice
from localaid.config.checks import CHECKS
from localaid.config.convert import Ctx
from localaid.config.keys import SCHEMA, Config
from localaid.config.schema import build, keys
from localaid.config.values import ConfigError, Problem
from localaid.config.yamlfile import Item, conf_d_files, merge, read, show

DEFAULT_PATH = "/etc/localaid/localaid.yaml"
DEFAULT_CONF_D = "/etc/localaid/conf.d"

_PATHS = [p for p, _ in keys(SCHEMA)]


def load(path: str = DEFAULT_PATH, conf_d: str | None = DEFAULT_CONF_D, *, missing_ok: bool = True,
         trusted_uid: int | None = trust.AUTO, choice: bool = True) -> Config:
    """Read, merge and validate the configuration; raise ConfigError listing every problem.

    A missing main file means all defaults (missing_ok=False makes it an error, for
    `localaid config check FILE`).  conf_d=None skips the drop-in directory; a missing one is fine.
    Only conf.d entries named *.yaml (and not starting with ".") are read, in name order.

    trusted_uid: files and directories must be owned by root or this uid and writable by no one
    else (trust.py).  The default checks for root (uid 0) when running as root and checks nothing
    otherwise; None never checks.

    With `ollama.models: auto`, the model localaid picked for this machine (modelchoice.py) is
    ollama.models once it is recorded; choice=False leaves it out (checking a file as written).
    """
    path = os.fspath(path)
    conf_d = None if conf_d is None else os.fspath(conf_d)
    trusted = trust.resolve(trusted_uid)
    seen: set[tuple[int, int]] = set()           # directories already found untrustworthy
    problems: list[Problem] = []
    files = [path] + conf_d_files(conf_d, problems)
    merged, sources = None, []
    for i, file in enumerate(files):
        if i == 1 and trusted is not None:       # conf.d itself, once, after the main file
            problems += [Problem(conf_d, None, None, r) for r in trust.dir_problems(conf_d, trusted, seen, True)]
        was_read, item = read(file, problems, missing_ok=missing_ok or i > 0, follow=i == 0,
                              trusted=trusted, seen=seen)
        if was_read:
            sources.append(file)
        if item is None:
            continue
        if item.kind != "map":
            problems.append(Problem(file, item.line, None, f"expected a mapping at the top level, got {show(item)}"))
            continue
        build(SCHEMA, item, "", Ctx(problems, file, _PATHS))    # every value of every file is checked,
        merged = merge(merged, item)                           # even one a later file overrides

    # The merged document holds only values already checked above: its own conversion problems
    # would be repeats, so they go to a scratch list; the checks across keys report for real.
    ctx = Ctx([], path, _PATHS)
    config = build(SCHEMA, merged or Item("map", path, 1, {}), "", ctx)
    ctx.problems = problems
    for check in CHECKS:
        check(config, ctx)
    if problems:
        order: dict[str | None, int] = {}
        for file in (path, conf_d, *files):
            order.setdefault(file, len(order))
        problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line or 0))
        raise ConfigError(problems)
    config = dataclasses.replace(config, sources=tuple(sources))
    return modelchoice.applied(config, modelchoice.read() if config.ollama.picks_model and choice else None)
