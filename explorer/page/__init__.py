"""The explorer page (Gradio): denoise, compare, latent space, edit, export.

`python app.py` (the launcher at the repository root) serves it; `layout.build_demo` builds it for tests and
benchmarks. One module per tab (`denoise`, `compare`, `latent`, `edit`, `export`), what they share in `common` and
`views`; the rules without Gradio, importable without it, in `folders`, `requests`, `memory` and `examples`.
"""
