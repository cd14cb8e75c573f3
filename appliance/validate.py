"""Validation of *rendered* installer templates, before one is saved or served.

:func:`validate` takes the kind of a template (see :func:`kind_of`) and the
text it rendered to, and returns a list of :class:`Problem` -- empty means
valid.  Only severity ``"error"`` should block a save; ``"warning"`` is shown.

* kickstart   -- pykickstart's parser for a chosen syntax version (RHEL9 by
  default), the same checks as ``ksvalidator -v RHEL9``: unknown commands and
  options, bad values, unterminated sections.  Deprecated commands/options
  come back as warnings.  ``%include`` and ``%ksappend`` are never followed
  (the validator must not fetch URLs or read files named by user text).
* autoinstall -- YAML syntax (with line/column), the ``#cloud-config``
  header, an ``autoinstall:`` mapping with ``version: 1``, and the JSON
  schema in ``appliance/schemas/autoinstall.json``.
* preseed     -- debconf-set-selections(1) syntax: ``owner question type
  value`` statements, ``#`` comments, ``\\`` continuation lines.
* snippet / text -- nothing beyond Jinja2 syntax, which is checked where
  templates are compiled.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

__all__ = ["KINDS", "Problem", "kind_of", "validate"]

KINDS = ("kickstart", "preseed", "autoinstall", "snippet", "text")
SCHEMA_PATH = Path(__file__).with_name("schemas") / "autoinstall.json"


@dataclass(frozen=True)
class Problem:
    """One finding; ``line``/``column`` are 1-based, ``None`` when unknown."""

    line: int | None
    column: int | None
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = ""
        if self.line is not None:
            where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
            where += ": "
        return f"{self.severity}: {where}{self.message}"


def kind_of(name: str) -> str:
    """The validator kind for a template name (a path under kickstarts/).

    ``snippets/...`` -> "snippet" (not a whole document); ``*.ks*``, ``ks.cfg``,
    ``anaconda-ks.cfg`` -> "kickstart"; ``*.preseed*`` -> "preseed";
    ``*autoinstall*`` / ``*user-data*`` -> "autoinstall"; other ``*.cfg`` ->
    "preseed"; anything else -> "text".
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if "snippets" in path.parts[:-1]:
        return "snippet"
    base = path.name.lower()
    if re.search(r"(^|[._-])ks(\.|$)", base):
        return "kickstart"
    if ".preseed" in base or base.startswith("preseed"):
        return "preseed"
    if "autoinstall" in base or "user-data" in base:
        return "autoinstall"
    if base.endswith(".cfg") or ".cfg." in base:
        return "preseed"
    return "text"


def validate(kind: str, text: str, *, version: str = "RHEL9") -> list[Problem]:
    """Problems found in the rendered ``text`` of a template of ``kind``.

    ``version`` is the kickstart syntax version (a pykickstart version name
    such as "RHEL9", "RHEL10", "F40"); other kinds ignore it.
    """
    if kind == "kickstart":
        return _validate_kickstart(text, version)
    if kind == "autoinstall":
        return _validate_autoinstall(text)
    if kind == "preseed":
        return _validate_preseed(text)
    if kind in ("snippet", "text"):
        return []
    raise ValueError(f"unknown template kind {kind!r} (one of {', '.join(KINDS)})")


# -- kickstart -----------------------------------------------------------------

# warnings.catch_warnings() swaps process-global state and KickstartParser
# sets class-level state; the appliance is threaded, so kickstart validations
# run one at a time.
_KS_LOCK = threading.Lock()
_LINE_RE = re.compile(r"\bline (\d+)\b")


def _ks_message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return " ".join(str(msg).split())


def _validate_kickstart(text: str, version: str) -> list[Problem]:
    from pykickstart.errors import (
        KickstartDeprecationWarning,
        KickstartError,
        KickstartParseWarning,
        KickstartVersionError,
    )
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    try:
        handler = makeVersion(version)
    except KickstartVersionError:
        raise ValueError(f"pykickstart has no kickstart version {version!r}") from None

    problems: list[Problem] = []

    class _Parser(KickstartParser):
        # pykickstart with errorsAreFatal=False prints per-command errors to
        # stderr and counts them; collect them instead.  Errors raised outside
        # _tryFunc (section bodies, a missing %end) still propagate.
        def _tryFunc(self, fn):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - as pykickstart's own _tryFunc
                self.errorsCount += 1
                problems.append(Problem(getattr(exc, "lineno", None), None, _ks_message(exc)))

    with _KS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # inside the lock: KickstartParser() sets class attributes (Script._ver)
        parser = _Parser(handler, followIncludes=False, errorsAreFatal=False,
                         missingIncludeIsFatal=False)
        try:
            # readKickstartFromString, not preprocessKickstart: %ksappend
            # would fetch URLs.  It is left as a no-op line here.
            parser.readKickstartFromString(text)
        except KickstartError as exc:
            problems.append(Problem(exc.lineno, None, _ks_message(exc)))
        except ValueError as exc:  # shlex: "No closing quotation", ...
            problems.append(Problem(_shlex_error_line(text), None, f"kickstart syntax: {exc}"))
        except Exception as exc:  # noqa: BLE001 - a parser bug must not become a 500
            problems.append(Problem(None, None, f"kickstart parser failed: "
                                                f"{type(exc).__name__}: {exc}"))
    for w in caught:
        if not issubclass(w.category, KickstartParseWarning):
            continue  # pykickstart's own API deprecations, not about the file
        msg = " ".join(str(w.message).split())
        m = _LINE_RE.search(msg)
        line = int(m.group(1)) if m else None
        if issubclass(w.category, KickstartDeprecationWarning):
            problems.append(Problem(line, None, msg, "warning"))
        else:  # ksvalidator turns parse warnings into errors; so do we
            problems.append(Problem(line, None, msg))
    problems.sort(key=lambda p: (p.line or 0, p.severity != "error"))
    return problems


def _shlex_error_line(text: str) -> int | None:
    import shlex
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                shlex.split(line, comments=True)
            except ValueError:
                return n
    return None


# -- autoinstall ---------------------------------------------------------------

# Keys that only mean something to Subiquity: at the top level of the
# cloud-config (outside `autoinstall:`) they are a misplaced autoinstall
# section, which Subiquity >= 24.04 rejects.  Keys that cloud-config also
# knows (packages, timezone, locale, apt, ...) are deliberately absent.
_AUTOINSTALL_ONLY = ("version", "interactive-sections", "early-commands", "late-commands",
                     "error-commands", "storage", "identity", "refresh-installer",
                     "kernel-crash-dumps", "active-directory", "ubuntu-pro", "codecs",
                     "drivers", "oem", "source", "debconf-selections", "shutdown")


@lru_cache(maxsize=1)
def _autoinstall_validator():
    import jsonschema
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _validate_autoinstall(text: str) -> list[Problem]:
    import yaml

    problems: list[Problem] = []
    first = text.split("\n", 1)[0].rstrip("\r")
    if first.rstrip() != "#cloud-config":
        problems.append(Problem(1, 1, "first line must be exactly '#cloud-config' "
                                      f"(cloud-init user-data), found {first[:40]!r}"))
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        what = " ".join(filter(None, [getattr(exc, "context", None),
                                      getattr(exc, "problem", None)])) or str(exc)
        problems.append(Problem(mark.line + 1 if mark else None,
                                mark.column + 1 if mark else None, f"YAML: {what}"))
        return problems

    if not isinstance(data, dict):
        problems.append(Problem(None, None, "the document must be a mapping with an "
                                            "'autoinstall:' key"))
        return problems
    for key in _AUTOINSTALL_ONLY:
        if key in data:
            line, col = _locate(root, [key], text)
            problems.append(Problem(line, col, f"'{key}' is an autoinstall key outside the "
                                               "'autoinstall:' mapping; indent it under "
                                               "'autoinstall:'"))
    if "autoinstall" not in data:
        problems.append(Problem(None, None, "no 'autoinstall:' mapping"))
        return problems
    ai = data["autoinstall"]
    if not isinstance(ai, dict):
        line, col = _locate(root, ["autoinstall"], text)
        problems.append(Problem(line, col, "'autoinstall' must be a mapping"))
        return problems

    validator = _autoinstall_validator()
    errors = sorted(validator.iter_errors(ai), key=lambda e: list(map(str, e.absolute_path)))
    for err in errors:
        path = ["autoinstall", *err.absolute_path]
        extra = _unexpected_keys(err)
        if extra:
            for key in extra:
                line, col = _locate(root, [*path, key], text)
                where = ".".join(map(str, path))
                problems.append(Problem(line, col, f"unknown key '{key}' in {where}"
                                                   f"{_suggest(key, err.schema)}"))
            continue
        line, col = _locate(root, path, text)
        where = ".".join(map(str, path))
        problems.append(Problem(line, col, f"{where}: {err.message}"))
    return problems


def _unexpected_keys(err) -> list[str]:
    if err.validator != "additionalProperties" or not isinstance(err.instance, dict):
        return []
    known = set(err.schema.get("properties", {}))
    patterns = list(err.schema.get("patternProperties", {}))
    return [k for k in err.instance
            if k not in known and not any(re.search(p, str(k)) for p in patterns)]


def _suggest(key: str, schema: dict) -> str:
    import difflib
    close = difflib.get_close_matches(str(key), list(schema.get("properties", {})), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _locate(node, path, text: str) -> tuple[int | None, int | None]:
    """Line/column (1-based) of the deepest node of ``path`` found in the
    composed YAML tree; for a mapping key, the key itself.  Falls back to a
    text search for the last key when the tree walk fails."""
    import yaml

    best: tuple[int | None, int | None] = (None, None)
    for step in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(step):
                    best = (k.start_mark.line + 1, k.start_mark.column + 1)
                    node = v
                    break
            else:
                node = None
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) \
                and 0 <= step < len(node.value):
            node = node.value[step]
            best = (node.start_mark.line + 1, node.start_mark.column + 1)
        else:
            node = None
        if node is None:
            break
    else:
        return best
    # the walk stopped early: look for the wanted key as text
    key = str(path[-1])
    m = re.search(rf"^([ \t-]*)[\"']?{re.escape(key)}[\"']?[ \t]*:", text, re.MULTILINE)
    if m:
        return text.count("\n", 0, m.start()) + 1, len(m.group(1)) + 1
    return best


# -- preseed -------------------------------------------------------------------

PRESEED_TYPES = frozenset({"string", "boolean", "select", "multiselect", "note", "text",
                           "password", "error", "title", "seen"})
_OWNER_RE = re.compile(r"^(d-i|[a-z0-9][a-z0-9+.-]*)$")


def _validate_preseed(text: str) -> list[Problem]:
    """debconf-set-selections(1) syntax: ``owner question type [value]``.

    A line ending in a backslash continues on the next line (the statement
    is reported at its first line); ``#`` starts a comment line; blank lines
    are ignored.  ``seen`` sets the seen flag (value true/false).
    """
    problems: list[Problem] = []
    seen_questions: dict[str, int] = {}
    for lineno, stmt in _preseed_statements(text, problems):
        fields = stmt.split(None, 3)
        if len(fields) < 3:
            problems.append(Problem(lineno, 1, "a statement needs at least 3 fields: "
                                               f"'owner question type [value]', got {stmt!r}"))
            continue
        owner, question, qtype = fields[:3]
        value = fields[3].strip() if len(fields) > 3 else ""
        if not _OWNER_RE.match(owner):
            problems.append(Problem(lineno, 1, f"owner {owner!r} is neither 'd-i' nor a "
                                               "package name"))
        if "/" not in question:
            problems.append(Problem(lineno, None, f"question {question!r} has no '/' "
                                                  "(expected owner/name)", "warning"))
        if qtype not in PRESEED_TYPES:
            problems.append(Problem(lineno, None, f"unknown type {qtype!r} for {question} "
                                                  f"(one of {', '.join(sorted(PRESEED_TYPES))})"))
        elif qtype in ("boolean", "seen") and value not in ("true", "false"):
            problems.append(Problem(lineno, None, f"{question}: {qtype} value must be "
                                                  f"'true' or 'false', got {value!r}"))
        key = f"{owner} {question}" if qtype != "seen" else f"{owner} {question} seen"
        if key in seen_questions:
            problems.append(Problem(lineno, None, f"{question} already set on line "
                                                  f"{seen_questions[key]}; the later value "
                                                  "wins", "warning"))
        seen_questions[key] = lineno
    return problems


def _preseed_statements(text: str, problems: list[Problem]):
    """(first line number, joined text) of each statement."""
    buf: list[str] = []
    start = 0
    lines = text.splitlines()
    for n, raw in enumerate(lines, 1):
        if not buf:
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            start = n
        line = raw.rstrip()
        if line.endswith("\\"):
            buf.append(line[:-1])
            continue
        buf.append(line)
        yield start, "".join(buf)
        buf = []
    if buf:
        problems.append(Problem(start, None, "the last statement ends with a continuation "
                                             "backslash", "warning"))
        yield start, "".join(buf)
