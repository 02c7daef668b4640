"""Pure functions from a Trace to pictures (HTML, plotly); no Gradio import. App and notebooks share them."""

from explorer.viz.diagnostics import (
    attention_over_steps,
    parallel_dependencies,
    reliability_diagram,
    state_drift,
)
from explorer.viz.export import trace_animation_html, trace_gif
from explorer.viz.latent import (
    Projection,
    head_samples,
    hidden_state_paths,
    latent_trajectories,
    project,
    step_preview,
    trajectory_points,
    vocabulary_points,
)
from explorer.viz.plots import confidence_heatmap, confidence_matrix, entropy_heatmap, step_heatmap, step_matrix
from explorer.viz.tokens import COLOR_MODES, COLORSCALE, frame_values, tokens_html

__all__ = ["COLOR_MODES", "COLORSCALE", "Projection", "attention_over_steps", "confidence_heatmap",
           "confidence_matrix", "entropy_heatmap", "figure_png", "frame_values", "head_samples", "hidden_state_paths",
           "latent_trajectories", "parallel_dependencies", "project", "reliability_diagram", "state_drift",
           "step_heatmap", "step_matrix", "step_preview", "tokens_html", "trace_animation_html", "trace_gif",
           "trajectory_points", "use_png_fallback", "vocabulary_points"]


def __getattr__(name: str):
    """figure_png and use_png_fallback (explorer/viz/static.py) load matplotlib, about a second: only when asked."""
    if name in ("figure_png", "use_png_fallback"):
        from explorer.viz import static

        return getattr(static, name)
    raise AttributeError(f"module 'explorer.viz' has no attribute {name!r}")
