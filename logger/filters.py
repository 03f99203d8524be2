"""What a ``/ws`` client asked to see: a filter over LogRecords, as pure logic.

A filter comes from the upgrade's query string (``?level=warn&service=orders``)
or a later ``{"type":"subscribe", ...}`` message, and is immutable and
hashable: the hub groups clients by filter, so clients that asked for the
same thing share one encoding of each batch. Bad input raises
:class:`FilterError` with a reason fit to show the client.

Regular expressions run in the event loop, on every record, for every group:
Python's ``re`` backtracks, and one nested quantifier on one 31-character line
froze a worker for 30 s (issue 12). They run on RE2 (``google-re2``), which
matches in time linear in the text; a pattern RE2 cannot run (backreferences,
lookaround) or that compiles to more than ``REGEX_MAX_MEMORY`` is refused.

Compiling is not free either: a 20-character pattern of repeated Unicode
classes took RE2 20-40 ms. Patterns compiled once are cached (viewers that
reconnect ask for the same ones), and new compilations share a budget of
``REGEX_COMPILE_BUDGET_S`` of CPU per second per worker; past it a new pattern
is refused ("try again") instead of holding the event loop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from logger.records import LEVELS, LEVEL_NAMES, LogRecord

MAX_TEXT = 200
MAX_SERVICES = 20
MAX_ATTRIBUTES = 10
ATTRIBUTE_PREFIX = "attr."
REGEX_MAX_MEMORY = 256 << 10  # RE2's budget for one pattern, program and match cache (its default: 8 MiB)


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.max_mem = REGEX_MAX_MEMORY
    options.log_errors = False  # RE2 would print the client's pattern to stderr
    return options


_RE2_OPTIONS = _re2_options()
REGEX_CACHE_SIZE = 64  # at most 64 × REGEX_MAX_MEMORY held for patterns no client uses any more
REGEX_COMPILE_BUDGET_S = 0.1  # CPU per second a worker spends compiling new patterns, at most…
REGEX_COMPILE_BURST_S = 0.3  # …after a burst of this much


class _RegexCompiler:
    """RE2 compilation with a cache of recent patterns and a token bucket of compile time."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._allowance = REGEX_COMPILE_BURST_S
        self._checked = time.monotonic()

    def compile(self, pattern: str) -> Any:
        cached = self._cache.get(pattern)
        if cached is not None:
            self._cache.move_to_end(pattern)
            return cached
        now = time.monotonic()
        self._allowance = min(REGEX_COMPILE_BURST_S,
                              self._allowance + (now - self._checked) * REGEX_COMPILE_BUDGET_S)
        self._checked = now
        if self._allowance <= 0:
            raise FilterError("too many new regular expressions right now: try again in a few seconds")
        try:
            compiled = re2.compile(pattern, _RE2_OPTIONS)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) \
                else str(exc)
            raise FilterError(f"invalid regex (RE2 syntax, no backreferences or lookaround): {reason}") from None
        finally:
            self._allowance -= time.monotonic() - now
        self._cache[pattern] = compiled
        if len(self._cache) > REGEX_CACHE_SIZE:
            self._cache.popitem(last=False)
        return compiled


_compiler = _RegexCompiler()


class FilterError(ValueError):
    """A filter the client must fix; ``str()`` is the reason."""


@dataclass(frozen=True)
class Filter:
    min_severity: int = 0
    services: frozenset[str] = frozenset()
    text: str = ""  # case-insensitive substring of the message
    regex: Any = field(default=None, compare=False)  # a compiled re2 pattern
    pattern: str = ""  # the regex's source: what equality and hashing use
    attributes: tuple[tuple[str, str], ...] = ()

    @property
    def everything(self) -> bool:
        return self == EVERYTHING

    def matches(self, record: LogRecord) -> bool:
        if self.min_severity and record.severity_number < self.min_severity:
            return False
        if self.services and record.service not in self.services:
            return False
        if self.text and self.text not in record.message.lower():
            return False
        if self.regex is not None and not self.regex.search(record.message):
            return False
        return all(_attribute_text(record.attributes, path) == value for path, value in self.attributes)

    def narrowed_by(self, scope: Filter) -> Filter:
        """This filter AND ``scope``: what a client sees when it asks for ``self`` and its
        token allows ``scope`` (issue 14). Pure; hub groups are keyed by the result, so
        clients of one scope asking the same thing still share one encoding per batch.

        One filter holds one condition of each kind, so two that cannot both hold raise
        :class:`FilterError` (services with nothing in common, one attribute bound to two
        values, two different texts or regexes): asking for something the scope excludes
        is refused rather than answered with silence.
        """
        if scope.everything or scope == self:
            return self
        services = self.services
        if scope.services:
            services = self.services & scope.services if self.services else scope.services
            if not services:
                raise FilterError("none of the services asked for is in this token's scope: "
                                  + ", ".join(sorted(scope.services)))
        attributes = dict(self.attributes)
        for path, value in scope.attributes:
            if attributes.setdefault(path, value) != value:
                raise FilterError(f"attribute {path} is bound to {value!r} by this token's scope")
        for name, mine, theirs in (("q", self.text, scope.text), ("regex", self.pattern, scope.pattern)):
            if mine and theirs and mine != theirs:
                raise FilterError(f"{name} is set by this token's scope")
        regex, pattern = (self.regex, self.pattern) if self.pattern else (scope.regex, scope.pattern)
        return Filter(min_severity=max(self.min_severity, scope.min_severity), services=services,
                      text=self.text or scope.text, regex=regex, pattern=pattern,
                      attributes=tuple(sorted(attributes.items())))

    def within(self, other: Filter) -> bool:
        """Every record this filter lets through, ``other`` lets through too (judged by the
        conditions, conservatively): a refreshed token's scope must be within the old one."""
        return (other.min_severity <= self.min_severity
                and (not other.services or (bool(self.services) and self.services <= other.services))
                and set(other.attributes) <= set(self.attributes)
                and other.text in ("", self.text) and other.pattern in ("", self.pattern))

    def describe(self) -> dict[str, Any]:
        """The filter as the client sees it in ``subscribed``."""
        out: dict[str, Any] = {}
        if self.min_severity:
            out["level"] = next(name for name in LEVEL_NAMES if LEVELS[name][0] == self.min_severity)
        if self.services:
            out["service"] = sorted(self.services)
        if self.text:
            out["q"] = self.text
        if self.pattern:
            out["regex"] = self.pattern
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out

    @classmethod
    def from_query(cls, query: Mapping[str, list[str]]) -> Filter:
        """From parsed query parameters: ``level``, ``service`` (repeated or comma-separated),
        ``q``, ``regex`` and ``attr.<path>=<value>``."""
        attributes = {key[len(ATTRIBUTE_PREFIX):]: values[-1] for key, values in query.items()
                      if key.startswith(ATTRIBUTE_PREFIX)}
        services = [part for value in query.get("service", []) for part in value.split(",")]
        return cls.build(level=_last(query, "level"), services=services, text=_last(query, "q"),
                         regex=_last(query, "regex"), attributes=attributes)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Filter:
        """From a ``subscribe`` message: the same names, ``service`` as a string or a list,
        ``attributes`` as an object."""
        service = message.get("service", [])
        services = [service] if isinstance(service, str) else service
        attributes = message.get("attributes", {})
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
            raise FilterError("service must be a string or a list of strings")
        if not isinstance(attributes, dict):
            raise FilterError("attributes must be an object of path: value")
        for name in ("level", "q", "regex"):
            if message.get(name) is not None and not isinstance(message[name], str):
                raise FilterError(f"{name} must be a string")
        return cls.build(level=message.get("level"), services=services, text=message.get("q"),
                         regex=message.get("regex"), attributes={str(k): v for k, v in attributes.items()})

    @classmethod
    def build(cls, *, level: str | None, services: Iterable[str], text: str | None, regex: str | None,
              attributes: Mapping[str, Any]) -> Filter:
        min_severity = 0
        if level:
            if level.lower() not in LEVEL_NAMES:
                raise FilterError(f"unknown level {level!r}: use one of {', '.join(LEVEL_NAMES)}")
            min_severity = LEVELS[level.lower()][0]
        chosen = frozenset(s.strip() for s in services if s.strip())
        if len(chosen) > MAX_SERVICES:
            raise FilterError(f"at most {MAX_SERVICES} services")
        if any(len(s) > MAX_TEXT for s in chosen):
            raise FilterError(f"a service name is longer than {MAX_TEXT} characters")
        for name, value in (("q", text), ("regex", regex)):
            if value and len(value) > MAX_TEXT:
                raise FilterError(f"{name} is longer than {MAX_TEXT} characters")
        compiled = None
        if regex:
            compiled = _compiler.compile(regex)
        if len(attributes) > MAX_ATTRIBUTES:
            raise FilterError(f"at most {MAX_ATTRIBUTES} attribute conditions")
        pairs = []
        for path, value in attributes.items():
            if not path or len(path) > MAX_TEXT or value is None or isinstance(value, (dict, list)) \
                    or len(str(value)) > MAX_TEXT:
                raise FilterError(f"bad attribute condition {path!r}: use attr.<path>=<value>")
            pairs.append((path, _scalar_text(value)))
        return cls(min_severity=min_severity, services=chosen, text=(text or "").lower(), regex=compiled,
                   pattern=regex or "", attributes=tuple(sorted(pairs)))


EVERYTHING = Filter()


def _last(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _scalar_text(value: Any) -> str:
    """Attribute values compare as text: ``attr.code=500`` matches 500 and "500"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _attribute_text(attributes: dict[str, Any], path: str) -> str | None:
    """``user.id`` finds ``{"user": {"id": 7}}`` and also a flat ``{"user.id": 7}``."""
    if path in attributes:
        value = attributes[path]
    else:
        value = attributes
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
    if isinstance(value, (dict, list)) or value is None:
        return None
    return _scalar_text(value)
