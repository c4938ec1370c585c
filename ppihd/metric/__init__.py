"""Competition metric (docs/numbers.md, metric): weighted multi-label log loss, per-class log loss and ROC-AUC; study-level scoring
against a labels CSV (AUC, sensitivity / specificity, Youden point, bootstrap intervals)."""
from .log_loss import (compute_metrics, elementwise_log_loss, per_class_auc,
                       per_class_log_loss, prior_probabilities, weighted_log_loss)
from .study_eval import (StudyEvalError, bootstrap_ci, evaluate_class, evaluate_studies, read_labels, roc_auc,
                         roc_points, sens_spec, youden_point)

__all__ = ["compute_metrics", "elementwise_log_loss", "per_class_auc", "per_class_log_loss",
           "prior_probabilities", "weighted_log_loss",
           "StudyEvalError", "bootstrap_ci", "evaluate_class", "evaluate_studies", "read_labels", "roc_auc",
           "roc_points", "sens_spec", "youden_point"]
