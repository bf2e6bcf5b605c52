"""Experiment E5: the feedback loop (recommend → users accept → retrain), arm by arm.

The implementation and its documentation are :mod:`embtab.experiments.feedback`; this module
keeps the import path ``embtab.feedback`` and re-exports its public names.
"""

from embtab.experiments.feedback import (
    ARMS,
    BASE_ARM,
    DEFAULT_DATASET,
    DEFAULT_ETAS,
    METRICS,
    QUICK,
    RERANKERS,
    TRAIN_OVERRIDES,
    Arm,
    DriftingTruth,
    FeedbackLoop,
    ModelTruth,
    accept_probability,
    contrasts,
    equal_bytes_rows_per_id,
    feedback_table,
    feedback_text,
    matched_pairs,
    plot_feedback,
    render_section,
    run_feedback,
)

__all__ = ["ARMS", "BASE_ARM", "DEFAULT_DATASET", "DEFAULT_ETAS", "METRICS", "QUICK",
           "RERANKERS", "TRAIN_OVERRIDES", "Arm", "DriftingTruth", "FeedbackLoop", "ModelTruth",
           "accept_probability", "contrasts", "equal_bytes_rows_per_id", "feedback_table",
           "feedback_text", "matched_pairs", "plot_feedback", "render_section", "run_feedback"]
