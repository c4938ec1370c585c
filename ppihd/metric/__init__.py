"""Competition metric (SPEC §8): weighted multi-label log loss, per-class log loss and ROC-AUC."""
from .log_loss import (compute_metrics, elementwise_log_loss, metric_from_config, per_class_auc,
                       per_class_log_loss, prior_probabilities, weighted_log_loss)

__all__ = ["compute_metrics", "elementwise_log_loss", "metric_from_config", "per_class_auc", "per_class_log_loss",
           "prior_probabilities", "weighted_log_loss"]
