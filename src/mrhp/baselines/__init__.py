"""The systems the paper compares against (Tables 3-4; SPEC 8), rebuilt from their papers, one module each.
`mrhp.models.build_model` chooses among them and the paper's model by `ModelConfig.name`."""

from mrhp.baselines.bimpm import BiMPM
from mrhp.baselines.conv_knrm import ConvKNRM
from mrhp.baselines.dr_net import DRNet
from mrhp.baselines.eg_cnn import EGCNN
from mrhp.baselines.mcr import MCR
from mrhp.baselines.prh_net import PRHNet
from mrhp.baselines.sse_cross import SSECross

__all__ = ["BiMPM", "ConvKNRM", "DRNet", "EGCNN", "MCR", "PRHNet", "SSECross"]
