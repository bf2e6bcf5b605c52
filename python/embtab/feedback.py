"""Experiment E5: the feedback loop (recommend → users accept → retrain), arm by arm.

The implementation and its documentation are :mod:`embtab.experiments.feedback`; this module
keeps the import path ``embtab.feedback`` and re-exports its public names.
"""

from embtab.experiments.feedback import (
    ARMS,
    DEFAULT_DATASET,
    METRICS,
    MINORITY,
    FeedbackLoop,
    ModelTruth,
    accept_probability,
    feedback_table,
    feedback_text,
    plot_feedback,
    render_section,
    run_feedback,
)

__all__ = ["ARMS", "DEFAULT_DATASET", "METRICS", "MINORITY", "FeedbackLoop", "ModelTruth",
           "accept_probability", "feedback_table", "feedback_text", "plot_feedback",
           "render_section", "run_feedback"]
