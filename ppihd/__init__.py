"""ppihd: end-to-end Swin + sequence-transformer intracranial hemorrhage detection in PaddlePaddle.

Reproduction of Shang et al., "An Effective Transformer-based Solution for RSNA Intracranial
Hemorrhage Detection" (arXiv 2205.07556).
"""
__version__ = "0.1.0"

#: The six RSNA labels, always in this order (docs/numbers.md).
LABELS = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
#: Competition weights per label (docs/numbers.md, metric): ``any`` counts twice.
LABEL_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 2.0)
