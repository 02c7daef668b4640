"""diffusion-LM explorer: small language models of several families and samplers that record every step.

    import explorer
    model = explorer.load("mdlm-tiny")
    trace = explorer.generate(model, prompt="ROMEO:", sampler="low_confidence", gen_length=64, steps=64)
"""

import importlib

try:  # every sampler needs the kernels: a broken install should say so here, not deep inside a sampler
    importlib.import_module("explorer.kernels")
except ImportError as err:
    raise ImportError(
        f"dlm-explorer's sampling kernels (explorer.kernels) could not be imported: {err}. The install is incomplete "
        "or broken; reinstall it from the source checkout with `pip install --force-reinstall --no-deps -e .` (or "
        "`pip install -c constraints.txt -e .` in a fresh virtual environment)") from err

from explorer.hub import load, shipped  # noqa: E402
from explorer.sampling import generate, stream  # noqa: E402
from explorer.sampling.trace import Frame, Trace  # noqa: E402

__all__ = ["Frame", "Trace", "generate", "load", "shipped", "stream"]
