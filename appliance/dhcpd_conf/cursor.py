"""A token stream with one-token lookahead, positions and a depth budget.

Contract: every error it makes is a ``DhcpdConfError`` at the offending
token (end of file for a missing token).  ``enter()`` counts nesting
(blocks, parentheses, ``not``, included files) against ``MAX_DEPTH`` so deep
input fails with a parse error long before Python's recursion limit.
"""

from __future__ import annotations

from .lexer import ATOM, OP, STR, DhcpdConfError, LineIndex, Pos, tokenize

#: Deepest nesting of blocks, parentheses and includes the parser accepts.
#: Real files nest < 10 deep; 100 levels stay far below Python's recursion
#: limit (the parser uses at most 4 frames per level).
MAX_DEPTH = 100
EOF_KIND = "EOF"


class Cursor:
    def __init__(self, text: str, filename: str, depth: int = 0):
        self.filename = filename
        self.lines = LineIndex(text, filename)
        self.toks = tokenize(text, filename)
        self.toks.append((EOF_KIND, "", len(text)))
        self.i = 0
        self.depth = depth

    # -- looking -------------------------------------------------------------
    def peek(self, ahead: int = 0) -> tuple[str, str, int]:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def at_op(self, op: str) -> bool:
        tok = self.toks[self.i]
        return tok[0] == OP and tok[1] == op

    def at_word(self, *words: str) -> bool:
        tok = self.toks[self.i]
        return tok[0] == ATOM and tok[1].lower() in words

    def at_eof(self) -> bool:
        return self.toks[self.i][0] == EOF_KIND

    def pos(self, tok: tuple[str, str, int] | None = None) -> Pos:
        return self.lines.pos((tok or self.toks[self.i])[2])

    # -- taking --------------------------------------------------------------
    def next(self) -> tuple[str, str, int]:
        tok = self.toks[self.i]
        if tok[0] != EOF_KIND:
            self.i += 1
        return tok

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
        tok = self.toks[self.i]
        if tok[0] != ATOM:
            raise self.error(f"expected {what}")
        self.i += 1
        return tok[1]

    def expect_name(self, what: str) -> str:
        """A bare word or a quoted string (dhcpd allows both for most names)."""
        tok = self.toks[self.i]
        if tok[0] not in (ATOM, STR):
            raise self.error(f"expected {what}")
        self.i += 1
        return tok[1]

    def expect_string(self, what: str = "a quoted string") -> str:
        tok = self.toks[self.i]
        if tok[0] != STR:
            raise self.error(f"expected {what}")
        self.i += 1
        return tok[1]

    # -- errors and depth ----------------------------------------------------
    def error(self, message: str, tok: tuple[str, str, int] | None = None) -> DhcpdConfError:
        tok = tok or self.toks[self.i]
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
