"""The systems the paper compares against (Tables 3-4; SPEC 8), rebuilt from their papers, one module each.
`mrhp.models.registry.build_model` chooses among them and the paper's model by `ModelConfig.name`."""

from mrhp.models.baselines.bimpm import BiMPM
from mrhp.models.baselines.conv_knrm import ConvKNRM
from mrhp.models.baselines.dr_net import DRNet
from mrhp.models.baselines.eg_cnn import EGCNN
from mrhp.models.baselines.mcr import MCR
from mrhp.models.baselines.prh_net import PRHNet
from mrhp.models.baselines.sse_cross import SSECross

__all__ = ["BiMPM", "ConvKNRM", "DRNet", "EGCNN", "MCR", "PRHNet", "SSECross"]
