"""diffusion-LM explorer: small language models of several families and samplers that record every step.

    import explorer
    model = explorer.load("mdlm-tiny")
    trace = explorer.generate(model, prompt="ROMEO:", sampler="low_confidence", gen_length=64, steps=64)
"""

from explorer.hub import load, shipped
from explorer.sampling import generate, stream
from explorer.sampling.trace import Frame, Trace

__all__ = ["Frame", "Trace", "generate", "load", "shipped", "stream"]
