"""Allowlist profile ``accelerate``: generated from accelerate 1.15.0.

Written by scripts/gen_profiles.py; do not edit by hand: re-run the generator and
review its warnings and the diff.
"""

REASON = (
    "an accelerate configuration or state type: enums look members up by value; the "
    "dataclasses are rebuilt with NEWOBJ and BUILD, which only fills __dict__"
)

# Enums (calling the class looks a member up by value) and classes real checkpoints
# call with arguments (reviewed).
CALLABLE: tuple[str, ...] = (
    "accelerate.utils.dataclasses:BaseEnum",
    "accelerate.utils.dataclasses:ComputeEnvironment",
    "accelerate.utils.dataclasses:CustomDtype",
    "accelerate.utils.dataclasses:DDPCommunicationHookType",
    "accelerate.utils.dataclasses:DistributedType",
    "accelerate.utils.dataclasses:DynamoBackend",
    "accelerate.utils.dataclasses:FP8BackendType",
    "accelerate.utils.dataclasses:LoggerType",
    "accelerate.utils.dataclasses:PrecisionType",
    "accelerate.utils.dataclasses:RNGType",
    "accelerate.utils.dataclasses:SageMakerDistributedType",
)

# Classes rebuilt only with NEWOBJ / copyreg reconstruction and a saved state.
NEW_ONLY: tuple[str, ...] = (
    "accelerate.utils.dataclasses:AORecipeKwargs",
    "accelerate.utils.dataclasses:AutocastKwargs",
    "accelerate.utils.dataclasses:BnbQuantizationConfig",
    "accelerate.utils.dataclasses:DataLoaderConfiguration",
    "accelerate.utils.dataclasses:DeepSpeedPlugin",
    "accelerate.utils.dataclasses:DeepSpeedSequenceParallelConfig",
    "accelerate.utils.dataclasses:DistributedDataParallelKwargs",
    "accelerate.utils.dataclasses:FP8RecipeKwargs",
    "accelerate.utils.dataclasses:FullyShardedDataParallelPlugin",
    "accelerate.utils.dataclasses:GradScalerKwargs",
    "accelerate.utils.dataclasses:GradientAccumulationPlugin",
    "accelerate.utils.dataclasses:InitProcessGroupKwargs",
    "accelerate.utils.dataclasses:MSAMPRecipeKwargs",
    "accelerate.utils.dataclasses:MegatronLMPlugin",
    "accelerate.utils.dataclasses:ProfileKwargs",
    "accelerate.utils.dataclasses:ProjectConfiguration",
    "accelerate.utils.dataclasses:TERecipeKwargs",
    "accelerate.utils.dataclasses:TensorInformation",
    "accelerate.utils.dataclasses:TorchContextParallelConfig",
    "accelerate.utils.dataclasses:TorchDynamoPlugin",
    "accelerate.utils.dataclasses:TorchTensorParallelConfig",
    "accelerate.utils.dataclasses:TorchTensorParallelPlugin",
)
