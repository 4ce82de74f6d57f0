"""How every ``fmnist`` command reports a usage error: one line naming the problem, then where its help is.

argparse's own report is the whole usage block, and for a mistyped option
beside a missing required one it names only the missing one ("the following
arguments are required: --input"), never the typo. :class:`CommandParser`
checks a command line's options before argparse does: an option neither the
command nor another parser it hands options to knows is named, with the
closest one it does know. Every usage error then reads::

    fmnist batch: error: unknown option --inptu (did you mean --input?)
    see 'fmnist batch --help'

and the command exits with :data:`USAGE`, before any work.

Usage::

    parser = CommandParser(prog="fmnist batch", description="...")
    parser = CommandParser(prog="fmnist batch", passes_on=beam_option_names)   # Beam takes those
    sys.exit(refuse("fmnist", "unknown command 'bacth' (did you mean batch?)"))  # without a parser

Thread safety: parsers are built and used by one thread, as argparse's are.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from typing import NoReturn

USAGE = 2  # exit code of a usage error: the command line cannot be used as given; checked before any work
_CLOSE_TO_ANOTHER_PARSER = 0.8  # how alike a typo and another parser's option must be for a guess (Beam has ~200)
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # a value such as -1 or -0.5, not an option


def usage_message(prog: str, message: str) -> str:
    """The two lines of a usage error: what is wrong, and where the command's help is."""
    return f"{prog}: error: {message}\nsee '{prog} --help'\n"


def refuse(prog: str, message: str) -> int:
    """Print a usage error for a command line no parser reads (the top-level ``fmnist``); returns :data:`USAGE`."""
    sys.stderr.write(usage_message(prog, message))
    return USAGE


def closest(name: str, known: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The known name most like ``name`` (a typo's likely meaning), if one is at least ``cutoff`` alike (0 to 1)."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def _likeness(one: str, other: str) -> float:
    return difflib.SequenceMatcher(None, one, other).ratio()


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line and a pointer to ``--help`` (exit 2), and which names
    an unknown option, with a guess, before reporting anything else.

    Args:
        passes_on: the options of another parser the command hands what it
            does not know to (Beam's pipeline options): not unknown, and
            among the guesses.
    """

    def __init__(self, *args, passes_on: Collection[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.passes_on = frozenset(passes_on)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        for name in self._unknown_options(args):
            self.error(f"unknown option {name}" + (f" (did you mean {guess}?)" if (guess := self._guess(name)) else ""))
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, usage_message(self.prog, message))

    def _unknown_options(self, args: Sequence[str]) -> Iterable[str]:
        """The options in ``args`` that neither this parser (abbreviated, where it allows that) nor ``passes_on``
        takes; what follows ``--`` is no option."""
        for arg in args:
            if arg == "--":
                return
            if len(arg) < 2 or arg[0] not in self.prefix_chars or _NEGATIVE_NUMBER.match(arg):
                continue
            name = arg.split("=", 1)[0]
            if name in self._option_string_actions or name in self.passes_on:
                continue
            if self.allow_abbrev and name.startswith("--") and any(o.startswith(name) for o in self._long_options()):
                continue  # argparse takes a prefix of one option, and names an ambiguous one itself
            if not name.startswith("--") and len(name) > 2 and name[:2] in self._option_string_actions:
                continue  # a short option with its value attached (-k3)
            yield name

    def _guess(self, name: str) -> str | None:
        """The option ``name`` likely meant: the command's own, unless one of ``passes_on``, which are many and
        which the user may not have meant at all, is closer still and very close."""
        own = closest(name, self._long_options())
        other = closest(name, self.passes_on, cutoff=_CLOSE_TO_ANOTHER_PARSER)
        if other and (own is None or _likeness(name, other) > _likeness(name, own)):
            return other
        return own

    def _long_options(self) -> list[str]:
        return [option for option in self._option_string_actions if option.startswith("--")]
