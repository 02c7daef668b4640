"""Pure functions from a Trace to pictures (HTML, plotly); no Gradio import. App and notebooks share them."""

from explorer.viz.latent import Projection, head_samples, latent_trajectories, project, trajectory_points
from explorer.viz.plots import confidence_heatmap, confidence_matrix, entropy_heatmap, step_heatmap, step_matrix
from explorer.viz.tokens import COLOR_MODES, COLORSCALE, frame_values, tokens_html

__all__ = ["COLOR_MODES", "COLORSCALE", "Projection", "confidence_heatmap", "confidence_matrix", "entropy_heatmap",
           "frame_values", "head_samples", "latent_trajectories", "project", "step_heatmap", "step_matrix",
           "tokens_html", "trajectory_points"]
