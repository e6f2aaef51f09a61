"""The VSSFlow DiT and its conditions: config, batching, condition encoders, network."""

from vssflow.model.batch import GROUPS, ConditionBatch, ConditionDrop, collate
from vssflow.model.conditions import Conditions
from vssflow.model.config import PAPER, PRESETS, SMALL, TINY, ModelConfig
from vssflow.model.dit import VSSFlowDiT

__all__ = [
    "GROUPS",
    "PAPER",
    "PRESETS",
    "SMALL",
    "TINY",
    "ConditionBatch",
    "ConditionDrop",
    "Conditions",
    "ModelConfig",
    "VSSFlowDiT",
    "collate",
]
