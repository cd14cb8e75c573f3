"""A token stream with one-token lookahead, positions and a depth budget.

Contract: every error it makes is a ``DhcpdConfError`` at the offending
token (end of file for a missing token).  ``enter()`` counts nesting
(blocks, parentheses, ``not``, included files) against ``MAX_DEPTH`` so deep
input fails with a parse error long before Python's recursion limit.
"""

from __future__ import annotations

from .lexer import ATOM, OP, STR, DhcpdConfError, LineIndex, Pos, scan

#: Deepest nesting of blocks, parentheses and includes the parser accepts.
#: Real files nest < 10 deep; 100 levels stay far below Python's recursion
#: limit (the parser uses at most 4 frames per level).
MAX_DEPTH = 100
EOF_KIND = "EOF"


class Cursor:
    def __init__(self, text: str, filename: str, depth: int = 0):
        self.filename = filename
        self.lines = LineIndex(text, filename)
        self.kinds, self.values, self.offsets = scan(text, filename)
        self.kinds.extend([EOF_KIND] * 3)  # peek(2) never runs off the end
        self.values.extend([""] * 3)
        self.offsets.extend([len(text)] * 3)
        self.i = 0
        self.depth = depth

    # -- looking -------------------------------------------------------------
    def peek(self, ahead: int = 0) -> tuple[str, str, int]:
        j = self.i + ahead
        return self.kinds[j], self.values[j], self.offsets[j]

    def at_op(self, op: str) -> bool:
        i = self.i
        return self.kinds[i] == OP and self.values[i] == op

    def at_word(self, *words: str) -> bool:
        i = self.i
        return self.kinds[i] == ATOM and self.values[i].lower() in words

    def at_eof(self) -> bool:
        return self.kinds[self.i] == EOF_KIND

    def pos(self, tok: tuple[str, str, int] | None = None) -> Pos:
        return self.lines.pos(tok[2] if tok else self.offsets[self.i])

    # -- taking --------------------------------------------------------------
    def next(self) -> tuple[str, str, int]:
        i = self.i
        if self.kinds[i] != EOF_KIND:
            self.i = i + 1
        return self.kinds[i], self.values[i], self.offsets[i]

    def accept_op(self, op: str) -> bool:
        if self.at_op(op):
            self.i += 1
            return True
        return False

    def accept_word(self, *words: str) -> bool:
        if self.at_word(*words):
            self.i += 1
            return True
        return False

    def expect_op(self, op: str) -> tuple[str, str, int]:
        if not self.at_op(op):
            raise self.error(f"expected '{op}'")
        return self.next()

    def expect_word(self, what: str = "a name") -> str:
        i = self.i
        if self.kinds[i] != ATOM:
            raise self.error(f"expected {what}")
        self.i = i + 1
        return self.values[i]

    def expect_name(self, what: str) -> str:
        """A bare word or a quoted string (dhcpd allows both for most names)."""
        i = self.i
        if self.kinds[i] not in (ATOM, STR):
            raise self.error(f"expected {what}")
        self.i = i + 1
        return self.values[i]

    def expect_string(self, what: str = "a quoted string") -> str:
        i = self.i
        if self.kinds[i] != STR:
            raise self.error(f"expected {what}")
        self.i = i + 1
        return self.values[i]

    # -- errors and depth ----------------------------------------------------
    def error(self, message: str, tok: tuple[str, str, int] | None = None) -> DhcpdConfError:
        tok = tok or self.peek()
        if tok[0] == EOF_KIND:
            message += " (found end of file)"
        else:
            shown = tok[1] if len(tok[1]) <= 40 else tok[1][:37] + "..."
            message += f" (found {'string' if tok[0] == STR else repr(shown)})"
        return self.lines.error(message, tok[2])

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH} levels")

    def leave(self) -> None:
        self.depth -= 1


__all__ = ["ATOM", "EOF_KIND", "MAX_DEPTH", "OP", "STR", "Cursor", "DhcpdConfError"]
