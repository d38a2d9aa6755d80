"""Command line: the parser is made from the command table (localaid.cli.table); each command
lives in its own module here and is imported only when it runs. A handler is `fn(args) -> int`
(the exit status); it renders what the domain modules return."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from localaid.cli.common import EX_FAIL, EX_USAGE
from localaid.cli.table import COMMANDS, Command

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _dest(cmd: Command) -> str:
    return "_".join(cmd.path + ("command",))


def check_table(commands: tuple[Command, ...] = COMMANDS) -> None:
    """The table's own rules: one root first, parents before children, no path twice, a handler
    on each leaf and none on a group."""
    if not commands or commands[0].path != ():
        raise ValueError("the command table starts with the program itself (path ())")
    seen: set[tuple[str, ...]] = set()
    for cmd in commands:
        if cmd.path in seen:
            raise ValueError(f"{cmd.name}: declared twice")
        if cmd.path and cmd.path[:-1] not in seen:
            raise ValueError(f"{cmd.name}: declared before its group {' '.join(cmd.path[:-1])!r}")
        seen.add(cmd.path)
    for cmd in commands:
        has_children = any(c.path[:-1] == cmd.path for c in commands if c.path)
        if cmd.path and has_children == bool(cmd.handler):
            raise ValueError(f"{cmd.name}: " + ("a group has no handler" if has_children else "no handler"))


def build_parser(commands: tuple[Command, ...] = COMMANDS) -> argparse.ArgumentParser:
    check_table(commands)
    root = commands[0]
    parser = argparse.ArgumentParser(prog="localaid", description=root.description, epilog=root.epilog or None,
                                     formatter_class=_FORMATTER)
    parsers = {(): parser}
    subparsers: dict[tuple[str, ...], argparse._SubParsersAction] = {}
    for cmd in commands:
        if cmd.path:
            parent = cmd.path[:-1]
            if parent not in subparsers:
                group = next(c for c in commands if c.path == parent)
                subparsers[parent] = parsers[parent].add_subparsers(
                    dest=_dest(group), metavar=group.metavar or "COMMAND", required=bool(parent))
            p = subparsers[parent].add_parser(cmd.path[-1], help=cmd.help, description=cmd.description or cmd.help,
                                              epilog=cmd.epilog or None, formatter_class=_FORMATTER)
            parsers[cmd.path] = p
        p = parsers[cmd.path]
        for a in cmd.args:
            p.add_argument(*a.flags, **a.options)
        if cmd.handler:
            p.set_defaults(handler=cmd.handler)
    return parser


def resolve(handler: str):
    """"module:function" (module relative to localaid.cli) → the function."""
    module, _, function = handler.partition(":")
    return getattr(importlib.import_module(module, __name__), function)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EX_USAGE
    try:
        return resolve(args.handler)(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_FAIL
