"""The explorer page (Gradio): denoise, compare, latent space, edit, export.

`python app.py` (the launcher at the repository root) or `dlm-explorer page` serve it; `build_demo` builds it for
tests and benchmarks. Gradio is imported only when this package is.
"""

from explorer.page.layout import build_demo, launch_options, main

__all__ = ["build_demo", "launch_options", "main"]
