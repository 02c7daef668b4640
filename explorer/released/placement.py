"""Where a released checkpoint's weights live: one device, or several through `accelerate` device maps.

`device_map` (the knob of `explorer.load`, `load_released` and the layout loaders) is one of
    None                     one device (`device`, default CUDA if any, else the CPU): no hooks, as before;
    "auto" / "balanced"      accelerate's `infer_auto_device_map`, whole blocks spread evenly over the GPUs
                             (then the CPU), within `max_memory` (e.g. {0: "20GiB", 1: "20GiB", "cpu": "60GiB"};
                             default: what each device has free);
    "sequential"             the same, but GPU 0 is filled before GPU 1;
    {module name: device}    explicit: e.g. {"backbone.embed": 0, "backbone.blocks.0": 0, ..., "backbone.head": 1};
                             a device is "cpu", a GPU index (0) or "cuda:N". Every parameter must be covered, a
                             block is never split, and module names nest nowhere.
A module mapped to "cpu" runs on the CPU (accelerate's offloading, which copies CPU weights to a GPU at every
forward, is not used): each module computes where its weights are.

The pattern a loader follows (llada.py and dream.py do):
    1. build the model on the meta device (no memory, no random init);
    2. `placement = plan_placement(model, device_map, max_memory, dtype, no_split=(block class names), device=device)`
       says which device every parameter goes to, and the dtype (bf16 when a GPU is used, fp32 on the CPU);
    3. `check_placement_memory(placement, what)` refuses, per device, before a single weight is read;
    4. read the state dict one tensor at a time, each straight to `placement.device_of(key)`, then
       `load_state_dict(state, assign=True)` (no full copy of the model on one device first);
    5. rebuild non-persistent buffers (rotary tables) on `placement.main`, the embedding's device;
    6. `finish_placement(model, placement, root)` attaches accelerate's hooks: every mapped module moves its
       inputs to its own device, and the output of `root` (the module the samplers call) comes back to the
       device its input came from, so logits land on `model.device` and the samplers work unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from explorer.models.weights import (
    GiB,
    NotEnoughMemory,
    available_bytes,
    bytes_per_element,
    check_memory,
    estimate_bytes,
    pick_dtype,
    resolve_device,
)

STRATEGIES = ("auto", "balanced", "sequential")  # the string values of device_map
DEVICES_ALLOWED = "'cpu', a GPU index such as 0, or 'cuda:N'"


def require_accelerate():
    """The accelerate package, imported only when a device map is asked for (clear error when missing)."""
    try:
        import accelerate
    except ImportError:
        raise ImportError("device_map needs the accelerate package: pip install accelerate (or pip install "
                          "'dlm-explorer[gpu]'); device_map=None loads on one device without it") from None
    return accelerate


@dataclass(frozen=True)
class Placement:
    """A plan: the device of each mapped module, where inputs enter, the dtype, and each device's share."""

    modules: dict[str, torch.device]  # module name ("" = the whole model) -> device, in module order
    main: torch.device  # the embedding's device: inputs enter and outputs return here (model.device)
    dtype: torch.dtype  # the dtype every weight is read in
    elements: dict[torch.device, int]  # parameters (tied ones once) held by each device
    hooks: bool  # True for a device map: finish_placement attaches accelerate's hooks
    knob: str  # how the plan was asked for, for error messages: "device='cpu'", "device_map='auto'", ...

    def device_of(self, name: str) -> torch.device:
        """The device of a parameter or module name: that of the longest mapped module name containing it;
        the main device for names outside the map (buffer-only modules such as rotary tables)."""
        owner = _owner(name, self.modules)
        return self.main if owner is None else self.modules[owner]

    def as_dict(self) -> dict[str, str]:
        """{module name: device name}, for display (`model.device_map`)."""
        return {name: str(device) for name, device in self.modules.items()}


def _owner(name: str, modules: Mapping[str, object]) -> str | None:
    """The longest key of `modules` that is `name` or a module path containing it ("" contains everything)."""
    best = None
    for key in modules:
        if (key == "" or name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def parse_device(value, knob: str) -> torch.device:
    """A device_map / max_memory device as a torch.device ("cpu", a GPU index, "cuda", "cuda:N", torch.device)."""
    device = None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:  # True must not mean GPU 1
        device = torch.device("cuda", value)
    elif isinstance(value, (str, torch.device)):
        with contextlib.suppress(RuntimeError, ValueError):
            device = torch.device(value)
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{knob} = {value!r} is not a device; allowed: {DEVICES_ALLOWED} "
                         "(disk offloading and other accelerators are not supported)")
    return torch.device("cuda", device.index or 0) if device.type == "cuda" else torch.device("cpu")


def check_device_exists(device: torch.device, knob: str) -> None:
    """Refuse a CUDA device this machine does not have, naming the knob and the devices it does have."""
    if device.type != "cuda":
        return
    count = torch.cuda.device_count()
    if device.index >= count:
        have = "'cpu'" + (f" or a GPU index 0..{count - 1}" if count else "")
        raise ValueError(f"{knob}: {device} is not on this machine ({count} CUDA devices); allowed here: {have}")


def split_units(model: nn.Module, no_split: tuple[str, ...]) -> list[str]:
    """The smallest modules a device map may name, in order: whole blocks (`no_split` classes) and the other
    modules that hold parameters directly."""
    units, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(outer + ".") for outer in inside):
            continue
        if type(module).__name__ in no_split:
            units.append(name)
            inside.append(name)
        elif next(module.parameters(recurse=False), None) is not None:
            units.append(name)
    return units


def _examples(units: list[str]) -> str:
    shown = units if len(units) <= 5 else units[:3] + ["..."] + units[-2:]
    return ", ".join(shown)


def validate_device_map(model: nn.Module, device_map: dict, no_split: tuple[str, ...]) -> dict[str, torch.device]:
    """An explicit {module name: device} map checked against the model: names exist, hold parameters, do not
    split a block nor nest, devices exist, every parameter is covered, tied parameters share a device."""
    modules = dict(model.named_modules())
    units = split_units(model, no_split)
    blocks = [name for name, m in modules.items() if type(m).__name__ in no_split]
    placed: dict[str, torch.device] = {}
    for name, value in device_map.items():
        if not isinstance(name, str) or name not in modules:
            raise ValueError(f"device_map: unknown module name {name!r}; names are module paths of the model, "
                             f"such as {_examples(units)}")
        if not _has_parameters(modules[name]):
            raise ValueError(f"device_map: {name!r} holds no parameters (its buffers follow the embedding's "
                             f"device); map modules such as {_examples(units)}")
        block = next((b for b in blocks if name.startswith(b + ".")), None)
        if block is not None:
            raise ValueError(f"device_map: {name!r} splits {block!r}, which must stay on one device; map the "
                             f"whole {type(modules[block]).__name__} ({block!r})")
        device = parse_device(value, f"device_map[{name!r}]")
        check_device_exists(device, f"device_map[{name!r}]")
        placed[name] = device
    for name in placed:
        outer = _owner(name, {k: None for k in placed if k != name})
        if outer is not None:
            raise ValueError(f"device_map: {name!r} lies inside {outer!r}; name each module once")
    unmapped = [n for n, _ in model.named_parameters(remove_duplicate=False) if _owner(n, placed) is None]
    if unmapped:
        raise ValueError(f"device_map leaves {len(unmapped)} parameters without a device ({unmapped[:3]}); "
                         f"cover every module, e.g. {_examples(units)} (or \"\" for the whole model)")
    _check_tied(model, placed)
    return placed


def _check_tied(model: nn.Module, placed: Mapping[str, torch.device]) -> None:
    """Refuse tied parameters (a tied head and embedding) mapped to different devices."""
    from accelerate.utils import find_tied_parameters

    for group in find_tied_parameters(model):
        devices = {str(placed[_owner(n, placed)]) for n in group}
        if len(devices) > 1:
            raise ValueError(f"device_map: tied parameters {group} are mapped to {sorted(devices)}; "
                             "put their modules on one device")


def parse_max_memory(max_memory) -> dict[int | str, int]:
    """max_memory as accelerate reads it: {GPU index or "cpu": bytes}, sizes given as ints or "20GiB"-style strings."""
    from accelerate.utils import convert_file_size_to_int

    if not isinstance(max_memory, Mapping):  # a bad knob value: ValueError like the others
        raise ValueError(f"max_memory must be a dict such as {{0: '20GiB', 1: '20GiB', 'cpu': '60GiB'}}, "  # noqa: TRY004
                         f"got {max_memory!r}")
    parsed = {}
    for key, size in max_memory.items():
        device = parse_device(key, f"max_memory key {key!r}")
        try:
            size = convert_file_size_to_int(size)
        except (ValueError, TypeError):
            size = -1
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"max_memory[{key!r}] = {max_memory[key]!r} is not a size; use bytes or a string "
                             "such as '20GiB' or '500MB'")
        parsed["cpu" if device.type == "cpu" else device.index] = size
    return parsed


def infer_device_map(model: nn.Module, strategy: str, max_memory, dtype: torch.dtype,
                     no_split: tuple[str, ...]) -> dict[str, torch.device]:
    """accelerate's device map for `strategy` within `max_memory` (parsed; None = what is free on each device);
    refuses with NotEnoughMemory when part of the model fits nowhere."""
    from accelerate.utils import (
        get_balanced_memory,
        get_max_memory,
        infer_auto_device_map,
    )

    limits = get_max_memory(max_memory)
    budget = limits
    if strategy in ("auto", "balanced"):  # per-GPU budgets that spread the blocks evenly
        budget = get_balanced_memory(model, max_memory=limits, no_split_module_classes=list(no_split), dtype=dtype)
    inferred = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=list(no_split), dtype=dtype)
    left = [name for name, device in inferred.items() if device == "disk"]
    if left:
        need = sum(p.numel() for n, p in model.named_parameters() if _owner(n, {k: 0 for k in left}) is not None)
        sizes = ", ".join(f"{k!r}: {v / GiB:.2f} GiB" for k, v in limits.items())
        raise NotEnoughMemory(
            f"device_map={strategy!r}: {len(left)} modules ({left[0]!r}, ...; {need / 1e9:.2f}B parameters in "
            f"{str(dtype).removeprefix('torch.')}) fit on no device within max_memory {{{sizes}}}; raise "
            f"max_memory or add 'cpu' to it{_smaller(dtype)}")
    modules = {name: parse_device(device, f"device_map={strategy!r}") for name, device in inferred.items()}
    return {name: device for name, device in modules.items() if _has_parameters(model.get_submodule(name))}


def _smaller(dtype: torch.dtype) -> str:
    """The dtype advice of a refusal: halve the bytes when the weights are wider than 16 bits."""
    return ", or pass dtype='bfloat16'" if bytes_per_element(dtype) > 2 else ""


def _pick_dtype(device_map, max_memory, dtype) -> torch.dtype:
    """bf16 when the plan can use a GPU (and dtype is not given), fp32 when it is CPU-only."""
    if isinstance(device_map, Mapping):
        gpu = any(parse_device(v, "device_map").type == "cuda" for v in device_map.values())
    else:
        gpu = torch.cuda.is_available() and (max_memory is None or any(k != "cpu" for k in max_memory))
    return pick_dtype(torch.device("cuda" if gpu else "cpu"), dtype)


def plan_placement(model: nn.Module, device_map=None, max_memory=None, dtype=None, no_split: tuple[str, ...] = (),
                   device=None) -> Placement:
    """Where every parameter of `model` (built on the meta device) goes, and in what dtype. `device_map`: None
    (everything on `device`), "auto" / "balanced" / "sequential", or {module name: device}; `max_memory`
    budgets the strings; `no_split`: class names of modules kept whole on one device (the blocks)."""
    if device_map is None:
        if max_memory is not None:
            raise ValueError("max_memory needs device_map='auto' (or 'balanced' / 'sequential'); "
                             "with device_map=None everything loads on one device")
        device = resolve_device(device)
        dtype = pick_dtype(device, dtype)
        return _placement(model, {"": device}, dtype, hooks=False, knob=f"device='{device}'")
    if device is not None:
        raise ValueError(f"pass device={device!r} or device_map, not both (device_map={{'': {device!r}}} "
                         "puts everything on one device)")
    require_accelerate()
    if isinstance(device_map, str):
        if device_map not in STRATEGIES:
            raise ValueError(f"device_map={device_map!r} is unknown; allowed: None, "
                             f"{', '.join(repr(s) for s in STRATEGIES)}, or a dict {{module name: device}}")
        budget = None if max_memory is None else parse_max_memory(max_memory)
        dtype = _pick_dtype(device_map, budget, dtype)
        modules = infer_device_map(model, device_map, budget, dtype, no_split)
        return _placement(model, modules, dtype, hooks=True, knob=f"device_map={device_map!r}")
    if isinstance(device_map, Mapping):
        if max_memory is not None:
            raise ValueError("max_memory applies to device_map='auto' / 'balanced' / 'sequential'; an explicit "
                             "device_map dict already says where everything goes")
        modules = validate_device_map(model, device_map, no_split)
        dtype = _pick_dtype(device_map, None, dtype)
        return _placement(model, modules, dtype, hooks=True, knob="device_map={...}")
    raise ValueError(f"device_map must be None, {', '.join(repr(s) for s in STRATEGIES)}, or a dict "
                     f"{{module name: device}}, got {device_map!r}")


def _placement(model: nn.Module, modules: dict[str, torch.device], dtype: torch.dtype, hooks: bool,
               knob: str) -> Placement:
    """A Placement from a checked module map: the main device is the first parameter's (the embedding's)."""
    first = next(name for name, _ in model.named_parameters())
    main = modules[_owner(first, modules)]
    elements: dict[torch.device, int] = {}
    for name, p in model.named_parameters():  # tied parameters once
        device = modules[_owner(name, modules)]
        elements[device] = elements.get(device, 0) + p.numel()
    return Placement(modules=modules, main=main, dtype=dtype, elements=elements, hooks=hooks, knob=knob)


def check_placement_memory(placement: Placement, what: str) -> dict[torch.device, int]:
    """Refuse (NotEnoughMemory) before any weight is read when a device's share would not fit its free memory
    (GPU: torch.cuda.mem_get_info, CPU: available RAM); return each device's estimated bytes."""
    if not placement.hooks:  # one device: the single-device check and message, as without device maps
        (device, n), = placement.elements.items()
        return {device: check_memory(n, device, placement.dtype, what)}
    estimates = {}
    dtype_name = str(placement.dtype).removeprefix("torch.")
    for device, n in placement.elements.items():
        check_device_exists(device, placement.knob)
        needed = estimate_bytes(n, placement.dtype)
        free = available_bytes(device)
        if free is not None and needed > free:
            raise NotEnoughMemory(
                f"{what}: {placement.knob} gives {device} {n / 1e9:.2f}B parameters in {dtype_name}, about "
                f"{needed / GiB:.2f} GiB, but {device} has {free / GiB:.2f} GiB available; move modules off "
                f"it (an explicit device_map, or a lower max_memory for it){_smaller(placement.dtype)}")
        estimates[device] = needed
    return estimates


def finish_placement(model: nn.Module, placement: Placement, root: str = "") -> nn.Module:
    """Attach accelerate's hooks for a device map (nothing for one device): each mapped module runs on its
    device with its inputs moved there; the output of the submodule `root` (the module callers run, e.g.
    "backbone") returns to its input's device. Call once every weight and buffer is off the meta device."""
    if not placement.hooks:
        return model
    from accelerate.hooks import attach_align_device_hook_on_blocks
    from accelerate.utils import find_tied_parameters, retie_parameters

    prefix = root + "." if root else ""
    execution: dict[str, torch.device] = {}
    for name, device in placement.modules.items():
        if _owner(root, {name: None}) is not None:  # the entry holds root itself (or the whole model)
            execution[""] = device
        elif name.startswith(prefix):
            execution[name.removeprefix(prefix)] = device
        else:
            raise ValueError(f"device_map: {name!r} lies outside {root!r}, the module the samplers call")
    offload = {name: False for name in execution}  # weights stay where they are: no per-forward copies
    execution.setdefault("", placement.main)  # inputs of root go to the embedding's device
    target = model.get_submodule(root)
    tied = find_tied_parameters(target)
    attach_align_device_hook_on_blocks(target, execution_device=execution, offload=offload)
    retie_parameters(target, tied)  # the hooks re-wrap each parameter: keep tied ones one object
    return model
