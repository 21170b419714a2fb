"""Finding policies by name: the ``rigpilot.policies`` entry-point group, and the built-ins.

A plugin package registers ``name = "module:factory"`` in that group; the factory is a class or
a zero-argument callable returning a :class:`~policies.api.Policy` (an instance with a ``decide``
method is accepted as is) whose ``name`` is the registered name. The built-ins are registered the
same way in rigpilot's own ``pyproject.toml``, and :data:`policies.builtin.BUILTIN_POLICIES`
supplies them when those entry points are not installed. Loading imports plugin code; it is the
imperative shell's job, done once at startup, never inside a decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from policies.api import Policy
from policies.builtin import BUILTIN_POLICIES

GROUP = "rigpilot.policies"


class PolicyLoadError(Exception):
    """A policy could not be loaded; the message names it and says why."""


class UnknownPolicyError(PolicyLoadError, LookupError):
    """No policy of that name is installed; the message lists the installed ones."""


@dataclass(frozen=True, slots=True)
class Registration:
    """Where a policy name points: ``module:factory``, and who registered it."""

    name: str
    value: str
    origin: str  # a distribution name, "built-in", or "entry point" when unknown


def registrations() -> dict[str, tuple[Registration, ...]]:
    """Every registered policy name with its registrations, sorted by name.

    Entry points come first, then the built-in table, so the built-ins are there whether or not
    rigpilot's own entry points are installed. The same ``module:factory`` registered twice (by
    those entry points and the table) counts once; different ones make the name ambiguous, so
    a plugin cannot silently replace a built-in (see :func:`load_policy`).
    """
    found: dict[str, list[Registration]] = {}
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        origin = str(getattr(dist, "name", "")) or "entry point"
        _add(found, Registration(ep.name, ep.value, origin))
    for name, value in BUILTIN_POLICIES.items():
        _add(found, Registration(name, value, "built-in"))
    return {name: tuple(found[name]) for name in sorted(found)}


def available_policies() -> list[str]:
    """The names :func:`load_policy` accepts, sorted."""
    return list(registrations())


def load_policy(name: str) -> Policy:
    """A new instance of the policy registered as ``name``.

    Raises :class:`UnknownPolicyError` naming ``name`` and the installed policies when none is
    registered under it, and :class:`PolicyLoadError` when the name is registered by two
    different ``module:factory`` values, when importing or calling the factory fails, or when
    what it returns is not a Policy named ``name``.
    """
    found = registrations()
    regs = found.get(name)
    if not regs:
        installed = ", ".join(found) or "none"
        raise UnknownPolicyError(f"unknown policy {name!r}; installed policies: {installed}")
    if len(regs) > 1:
        where = "; ".join(f"{r.value} ({r.origin})" for r in regs)
        raise PolicyLoadError(f"policy {name!r} is registered more than once: {where}")
    reg = regs[0]
    try:
        factory = EntryPoint(reg.name, reg.value, GROUP).load()
    except Exception as exc:
        raise PolicyLoadError(
            f"policy {name!r} ({reg.value}, {reg.origin}) failed to import: {exc!r}"
        ) from exc
    return _instantiate(reg, factory)


def _add(found: dict[str, list[Registration]], reg: Registration) -> None:
    regs = found.setdefault(reg.name, [])
    if all(r.value != reg.value for r in regs):
        regs.append(reg)


def _instantiate(reg: Registration, factory: object) -> Policy:
    policy = factory
    if isinstance(factory, type) or not isinstance(factory, Policy):
        if not callable(factory):
            raise PolicyLoadError(
                f"policy {reg.name!r} ({reg.value}) is neither a policy nor a factory"
            )
        try:
            policy = factory()
        except Exception as exc:
            raise PolicyLoadError(
                f"policy {reg.name!r} ({reg.value}) factory failed: {exc!r}"
            ) from exc
    if not isinstance(policy, Policy):
        raise PolicyLoadError(
            f"policy {reg.name!r} ({reg.value}) gave {policy!r}, which has no name and decide()"
        )
    if policy.name != reg.name:
        raise PolicyLoadError(
            f"policy registered as {reg.name!r} ({reg.value}) calls itself {policy.name!r}"
        )
    return policy
