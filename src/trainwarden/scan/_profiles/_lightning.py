"""Allowlist profile ``lightning``: generated from lightning 2.6.6.

Written by scripts/gen_profiles.py; do not edit by hand: re-run the generator and
review its warnings and the diff.
"""

REASON = (
    "a Lightning checkpoint helper type (AttributeDict hyperparameters, trainer state"
    " enums): a dict subclass and enums that store data only"
)

# Enums (calling the class looks a member up by value) and classes real checkpoints
# call with arguments (reviewed).
CALLABLE: tuple[str, ...] = (
    "lightning.fabric.utilities.data:_WrapAttrTag",
    "lightning.pytorch.trainer.states:RunningStage",
    "lightning.pytorch.trainer.states:TrainerFn",
    "lightning.pytorch.trainer.states:TrainerStatus",
    "lightning.pytorch.utilities.enums:GradClipAlgorithmType",
    "lightning_fabric.utilities.data:_WrapAttrTag",
    "pytorch_lightning.trainer.states:RunningStage",
    "pytorch_lightning.trainer.states:TrainerFn",
    "pytorch_lightning.trainer.states:TrainerStatus",
)

# Classes rebuilt only with NEWOBJ / copyreg reconstruction and a saved state.
NEW_ONLY: tuple[str, ...] = (
    "lightning.fabric.utilities.data:AttributeDict",
    "lightning.pytorch.utilities.parsing:AttributeDict",
    "lightning_fabric.utilities.data:AttributeDict",
    "pytorch_lightning.utilities.parsing:AttributeDict",
)
