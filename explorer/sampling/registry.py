"""Every sampler in one table: `build_sampler` (the API), the CLI's `sample` options and the page's controls read it.

A sampler module declares its samplers in `SAMPLERS`: `Sampler(family, name, Params, run, title, fixed=...,
defaults=...)` (see `explorer.sampling.common.Sampler`), where Params is a `SamplerParams` dataclass whose fields are
the knobs, each defined once with `knob(default, help)`, and `validate(model)` checks their ranges. To add a
sampler: write its module and add it to MODULES below.
"""

from __future__ import annotations

from dataclasses import Field

from explorer.sampling import ar, bd3lm, calm, cdcd, diffusion_gemma, dream, mdlm, refine
from explorer.sampling.common import Sampler, SamplerParams

# the order of a family's samplers: its first is the default
MODULES = (ar, mdlm, refine, dream, bd3lm, cdcd, calm, diffusion_gemma)
REGISTRY: dict[tuple[str, str], Sampler] = {(s.family, s.name): s for module in MODULES for s in module.SAMPLERS}
SAMPLERS: dict[str, tuple[str, ...]] = {}  # family -> its sampler names, the default first
for _family, _name in REGISTRY:
    SAMPLERS[_family] = SAMPLERS.get(_family, ()) + (_name,)


def sampler_for(family: str, name: str | None = None) -> Sampler:
    """The registered sampler `name` of `family` (None: the family's default)."""
    names = SAMPLERS.get(family)
    if names is None:
        raise ValueError(f"no samplers for family {family!r}; known families: {sorted(SAMPLERS)}")
    name = name or names[0]
    if name not in names:
        raise ValueError(f"sampler must be one of {names} for family {family!r}, got {name!r}")
    return REGISTRY[family, name]


def user_knobs(sampler: Sampler) -> dict[str, Field]:
    """The knobs a user sets by hand (the library sets the others, e.g. infill from the prompt's masks)."""
    return {name: f for name, f in sampler.knobs.items() if f.metadata.get("user", True)}


def every_knob() -> dict[str, Field]:
    """Each user knob of any sampler once (the first definition): the CLI's `sample` options."""
    found: dict[str, Field] = {}
    for sampler in REGISTRY.values():
        for name, f in user_knobs(sampler).items():
            found.setdefault(name, f)
    return found


def knob_home(name: str) -> str:
    """Which samplers take knob `name`: "every sampler", or per family all of them or the ones named."""
    groups, everywhere = [], True
    for family, names in SAMPLERS.items():
        having = [n for n in names if name in REGISTRY[family, n].knobs]
        everywhere &= len(having) == len(names)
        if len(having) == len(names):
            groups.append(f"{family} (every sampler)")
        elif len(having) == 1:
            groups.append(f"{family} (sampler={having[0]!r})")
        elif having:
            groups.append(f"{family} ({', '.join(having)})")
    return "every sampler" if everywhere else "; ".join(groups) or "no sampler"


def describe() -> str:
    """Every sampler with its knobs and their defaults, as text (`python -m explorer samplers`)."""
    lines = []
    for (family, name), spec in REGISTRY.items():
        knobs = ", ".join(f"{k}={spec.default(k)!r}" for k in user_knobs(spec))
        lines.append(f"{family:6s} {name:15s} {spec.title}\n{'':22s}{knobs}")
    return "\n".join(lines)


def build_sampler(family: str, sampler: str | None, **knobs) -> tuple[SamplerParams, callable]:
    """(params, run) of a registered sampler from keyword knobs: None means "the default"; a knob the sampler does
    not take is refused by name, with where it applies; ranges are checked by `params.validate(model)`."""
    spec = sampler_for(family, sampler)
    given = {k: v for k, v in knobs.items() if v is not None}
    unknown = sorted(set(given) - set(spec.knobs))
    if unknown:
        homes = "; ".join(f"{k}={given[k]!r} is a knob of {knob_home(k)}" for k in unknown)
        raise ValueError(f"{', '.join(unknown)} do not apply to {spec.title} ({family} sampler={spec.name!r}); its "
                         f"knobs are {', '.join(user_knobs(spec))}. {homes}")
    values = spec.params.resolve(spec.defaults | given)
    return spec.params(**spec.fixed, **values), spec.run
