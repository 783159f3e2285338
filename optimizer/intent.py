"""Declarative intents: what the operator wants of the routing, not how to get it.

An intent is a YAML file with an objective and constraints::

    objective:
      minimize: mean_delay          # mean_delay | delay_percentile | max_utilization
      percentile: 95                # with delay_percentile: the q-th percentile across paths
    constraints:
      max_utilization: 0.8          # every link at most 80 % loaded
      delay_bounds:                 # per pair, or per class of pairs; "10ms", "250us", "0.01" (s)
        - {src: a, dst: c, max_delay: 10ms}
        - {name: gold, pairs: [[a, d], [b, d]], max_delay: 15ms, max_jitter: 2ms, max_loss: 0.1%}
        - {src: b, dst: c, max_p99: 25ms}
      avoid_links: [[a, b]]         # no traffic on these links
      weight_bounds: [1, 20]        # OSPF weights allowed
      max_changed_weights: 4        # at most 4 links get a new weight
    search:
      max_evaluations: 3000         # twin calls, one per candidate routing
      time_limit_s: 60

A bound may limit the mean delay (``max_delay``), the jitter (``max_jitter``: the standard deviation
of the delay, a duration), the loss (``max_loss``: a share of packets, ``0.001`` or ``0.1%``) and the
99th percentile of the delay (``max_p99``, a duration: what the predicted mean and jitter imply,
:mod:`twin.models.tails`), any of them. Jitter, loss and p99 bounds need a model that predicts jitter
and loss (``routenet_f`` or ``qt``).

Every field is checked when the file is read; an error names the field and value.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace

from twin.state.errors import NdtError, shown
from twin.state.files import read_text

OBJECTIVES = ("mean_delay", "delay_percentile", "max_utilization")
MAX_INTENT_BYTES = 2**20  # an intent is a few lines; a larger file or request is refused unread
MAX_DURATION_CHARS = 40
_DURATION = re.compile(r"^\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|μs)?\s*$")
_UNIT = {None: 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6}  # micro sign and Greek mu


class IntentError(NdtError, ValueError):
    """An intent file is malformed; the message names the field and the value."""


@dataclass(frozen=True)
class DelayBound:
    """Every pair in ``pairs`` must have mean delay <= ``max_delay`` (s), delay standard deviation <=
    ``max_jitter`` (s), loss <= ``max_loss`` (share of packets) and a 99th percentile of delay <= ``max_p99``
    (s); a limit left None is not bounded."""

    name: str
    pairs: tuple[tuple[str, str], ...]
    max_delay: float | None = None
    max_jitter: float | None = None
    max_loss: float | None = None
    max_p99: float | None = None

    def limits(self) -> list[tuple[str, float]]:
        """(head, limit) of each limit set: ``delay`` s, ``jitter`` s (standard deviation), ``loss`` share,
        ``p99`` s."""
        return [(head, limit) for head, limit in (("delay", self.max_delay), ("jitter", self.max_jitter),
                                                  ("loss", self.max_loss), ("p99", self.max_p99))
                if limit is not None]


@dataclass(frozen=True)
class Intent:
    objective: str = "mean_delay"
    percentile: float = 95.0
    max_utilization: float | None = None
    delay_bounds: tuple[DelayBound, ...] = ()
    avoid_links: tuple[tuple[str, str], ...] = ()
    weight_bounds: tuple[int, int] = (1, 20)
    max_changed_weights: int | None = None
    max_evaluations: int = 3000
    time_limit_s: float = 60.0
    source: str = field(default="", compare=False)  # the file it was read from, named in its errors

    @property
    def heads(self) -> tuple[str, ...]:
        """What the intent needs predicted besides the mean delay: ``jitter`` (also for a p99 bound), ``loss``,
        or neither."""
        wanted = {head for bound in self.delay_bounds for head, _ in bound.limits()} - {"delay"}
        if "p99" in wanted:
            wanted.add("jitter")
        return tuple(head for head in ("jitter", "loss") if head in wanted)

    def check_against(self, state) -> None:
        """Refuse an intent that names nodes, pairs or links the state does not have."""
        try:
            self._check_against(state)
        except IntentError as exc:
            raise IntentError(f"{self.source}: {exc}" if self.source else str(exc)) from None

    def _check_against(self, state) -> None:
        nodes = set(state.nodes)
        pairs = {(f.src, f.dst) for f in state.flows}
        for bound in self.delay_bounds:
            for pair in bound.pairs:
                if pair not in pairs:
                    missing = [n for n in pair if n not in nodes]
                    why = f"unknown node {missing[0]!r}" if missing else "no traffic between them"
                    raise IntentError(f"constraints.delay_bounds[{bound.name}]: pair {pair[0]}->{pair[1]}: {why}")
        for link in self.avoid_links:
            if link not in state.link_index:
                raise IntentError(f"constraints.avoid_links: {link[0]}->{link[1]} is not a link of the network")
        low, high = self.weight_bounds
        current = state.link_arrays["weight"]
        if self.max_changed_weights is not None and ((current < low) | (current > high)).any():
            raise IntentError(
                f"constraints.weight_bounds {list(self.weight_bounds)}: the current weights fall outside them, "
                "so max_changed_weights cannot be honoured"
            )


def load_intent(path) -> Intent:
    """Read and check an intent YAML file."""
    text = read_text(path, "the intent", IntentError, max_bytes=MAX_INTENT_BYTES)
    if not text.strip():
        raise IntentError(f"{path}: empty; an intent names at least its objective (docs/optimizer.md)")
    try:
        return replace(parse_intent_text(text), source=str(path))
    except IntentError as exc:
        raise IntentError(f"{path}: {exc}") from None


def parse_intent_text(text: str) -> Intent:
    """An :class:`Intent` from YAML text. Aliases and duplicate keys are refused with their line; tags
    beyond plain YAML, texts over ``MAX_INTENT_BYTES`` characters and too deep nesting are refused too."""
    import yaml

    if len(text) > MAX_INTENT_BYTES:
        raise IntentError(f"{len(text)} characters, more than an intent may have ({MAX_INTENT_BYTES})")
    try:
        data = yaml.load(text or "{}", Loader=_strict_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise IntentError(f"not valid YAML{where}" + (f" ({problem})" if problem else "")) from None
    except RecursionError:
        raise IntentError("YAML nested too deeply") from None
    except IntentError:
        raise
    except ValueError as exc:  # Python refuses integers of more than 4,300 digits
        raise IntentError(f"a number ndt cannot read ({exc})") from None
    return parse_intent(data)


@functools.cache
def _strict_loader():
    """PyYAML's safe loader, refusing aliases (no expansion bombs) and keys given twice."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise IntentError(f"line {mark.line + 1}: YAML aliases (*name) are not allowed in an intent")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                if key in seen:
                    raise IntentError(f"line {key_node.start_mark.line + 1}: key {shown(key)} is given twice")
                seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


def parse_intent(data) -> Intent:
    """An :class:`Intent` from the parsed YAML mapping."""
    data = {} if data is None else data
    _mapping(data, "the intent")
    _only(data, ("objective", "constraints", "search"), "")
    objective = data.get("objective", {}) or {}
    _mapping(objective, "objective")
    _only(objective, ("minimize", "percentile"), "objective.")
    kind = objective.get("minimize", "mean_delay")
    if kind not in OBJECTIVES:
        raise IntentError(f"objective.minimize: {shown(kind)} is not one of {', '.join(OBJECTIVES)}")
    percentile = _number(objective.get("percentile", 95), "objective.percentile", 0, 100)
    constraints = data.get("constraints", {}) or {}
    _mapping(constraints, "constraints")
    _only(constraints, ("max_utilization", "delay_bounds", "avoid_links", "weight_bounds", "max_changed_weights"),
          "constraints.")
    max_util = constraints.get("max_utilization")
    if max_util is not None:
        max_util = _number(max_util, "constraints.max_utilization", 0, None, open_low=True)
    bounds = tuple(_delay_bound(item, i) for i, item in enumerate(_list(constraints, "delay_bounds")))
    avoid = tuple(_pair(item, f"constraints.avoid_links[{i}]") for i, item in enumerate(_list(constraints, "avoid_links")))
    weight_bounds = constraints.get("weight_bounds", [1, 20])
    if (not isinstance(weight_bounds, list) or len(weight_bounds) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) for w in weight_bounds)
            or not 1 <= weight_bounds[0] < weight_bounds[1] <= 65535):
        raise IntentError(f"constraints.weight_bounds: expected [low, high] integers with 1 <= low < high <= 65535, "
                          f"got {shown(weight_bounds)}")
    changed = constraints.get("max_changed_weights")
    if changed is not None and (not isinstance(changed, int) or isinstance(changed, bool) or changed < 1):
        raise IntentError(f"constraints.max_changed_weights: expected a whole number >= 1, got {shown(changed)}")
    search = data.get("search", {}) or {}
    _mapping(search, "search")
    _only(search, ("max_evaluations", "time_limit_s"), "search.")
    evaluations = int(_number(search.get("max_evaluations", 3000), "search.max_evaluations", 1, None))
    time_limit = _number(search.get("time_limit_s", 60), "search.time_limit_s", 0, None, open_low=True)
    return Intent(objective=kind, percentile=percentile, max_utilization=max_util, delay_bounds=bounds,
                  avoid_links=avoid, weight_bounds=tuple(weight_bounds), max_changed_weights=changed,
                  max_evaluations=evaluations, time_limit_s=time_limit)


def parse_duration(value, where: str) -> float:
    """Seconds from a number (s) or a string with a unit: '10ms', '250us', '0.5s'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = _float(value, where)
    elif isinstance(value, str) and len(value) <= MAX_DURATION_CHARS and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
    else:
        raise IntentError(f"{where}: expected a delay such as 10ms, 250us or 0.01 (seconds), got {shown(value)}")
    if not seconds > 0 or not math.isfinite(seconds):
        raise IntentError(f"{where}: a delay bound must be positive, got {shown(value)}")
    return seconds


def _delay_bound(item, i: int) -> DelayBound:
    where = f"constraints.delay_bounds[{i}]"
    _mapping(item, where)
    _only(item, ("name", "src", "dst", "pairs", "max_delay", "max_jitter", "max_loss", "max_p99"), where + ".")
    if not {"max_delay", "max_jitter", "max_loss", "max_p99"} & set(item):
        raise IntentError(f"{where}: missing max_delay (or max_jitter, max_loss, max_p99)")
    if "pairs" in item:
        if "src" in item or "dst" in item:
            raise IntentError(f"{where}: give either src/dst or pairs, not both")
        pairs = tuple(_pair(p, f"{where}.pairs[{k}]") for k, p in enumerate(_list(item, "pairs", where)))
        if not pairs:
            raise IntentError(f"{where}.pairs: empty")
    elif "src" in item and "dst" in item:
        pairs = ((str(item["src"]), str(item["dst"])),)
    else:
        raise IntentError(f"{where}: needs src and dst, or pairs")
    name = str(item.get("name", f"{pairs[0][0]}->{pairs[0][1]}" if len(pairs) == 1 else f"class {i}"))
    durations = {key: parse_duration(item[key], f"{where}.{key}") for key in ("max_delay", "max_jitter", "max_p99")
                 if key in item}
    loss = _loss_share(item["max_loss"], f"{where}.max_loss") if "max_loss" in item else None
    return DelayBound(name=name, pairs=pairs, max_loss=loss, **durations)


def _loss_share(value, where: str) -> float:
    """A share of packets in (0, 1): a number (0.001) or a percentage string ('0.1%')."""
    if isinstance(value, str) and value.strip().endswith("%") and len(value) <= MAX_DURATION_CHARS:
        try:
            share = float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise IntentError(f"{where}: expected a share of packets such as 0.001 or 0.1%, got {shown(value)}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        share = float(value)
    else:
        raise IntentError(f"{where}: expected a share of packets such as 0.001 or 0.1%, got {shown(value)}")
    if not 0 < share < 1:
        raise IntentError(f"{where}: a loss bound must lie between 0 and 1 (0 % and 100 %), got {shown(value)}")
    return share


def _pair(item, where: str) -> tuple[str, str]:
    if not isinstance(item, list) or len(item) != 2:
        raise IntentError(f"{where}: expected [src, dst], got {shown(item)}")
    return str(item[0]), str(item[1])


def _mapping(value, where: str) -> None:
    if not isinstance(value, dict):
        raise IntentError(f"{where}: expected a mapping, got {type(value).__name__}")


def _only(data: dict, allowed, prefix: str) -> None:
    unknown = sorted(map(str, set(data) - set(allowed)))
    if unknown:
        raise IntentError(f"{prefix}{unknown[0]}: unknown field (allowed: {', '.join(allowed)})")


def _list(data: dict, key: str, where: str = "constraints") -> list:
    value = data.get(key, []) or []
    if not isinstance(value, list):
        raise IntentError(f"{where}.{key}: expected a list, got {type(value).__name__}")
    return value


def _float(value, where: str) -> float:
    """``value`` as a float; an integer too large for one (hundreds of digits) raises IntentError."""
    try:
        return float(value)
    except OverflowError:
        raise IntentError(f"{where}: {shown(value)} is too large") from None


def _number(value, where: str, low, high, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(_float(value, where)):
        raise IntentError(f"{where}: expected a number, got {shown(value)}")
    if (low is not None and (value <= low if open_low else value < low)) or (high is not None and value > high):
        bounds = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise IntentError(f"{where}: must be {bounds}, got {shown(value)}")
    return float(value)
