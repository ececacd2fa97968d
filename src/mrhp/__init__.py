"""MRHP: multimodal review helpfulness ranking.

The model of Nguyen et al., "Adaptive Contrastive Learning on Multimodal Transformer for Review Helpfulness
Predictions" (EMNLP 2022), with its data pipeline, losses, metrics, training and serving.
"""

__version__ = "0.1.0"
