"""Allowlist profile ``transformers``: generated from transformers 5.23.0.

Written by scripts/gen_profiles.py; do not edit by hand: re-run the generator and
review its warnings and the diff.
"""

REASON = (
    "a transformers training configuration type (TrainingArguments, its enums and the"
    " accelerate types it holds): enums look members up by value; the dataclasses are"
    " rebuilt with NEWOBJ and BUILD, which only fills __dict__"
)

# Enums (calling the class looks a member up by value) and classes real checkpoints
# call with arguments (reviewed).
CALLABLE: tuple[str, ...] = (
    "accelerate.utils.dataclasses:DistributedType",
    "transformers.debug_utils:DebugOption",
    "transformers.generation.configuration_utils:GenerationMode",
    "transformers.trainer_utils:FSDPOption",
    "transformers.trainer_utils:HPSearchBackend",
    "transformers.trainer_utils:HubStrategy",
    "transformers.trainer_utils:IntervalStrategy",
    "transformers.trainer_utils:SaveStrategy",
    "transformers.trainer_utils:SchedulerType",
    "transformers.training_args:OptimizerNames",
    "transformers.training_args:ParallelMode",
    "transformers.utils.generic:ExplicitEnum",
    "transformers.utils.generic:PaddingStrategy",
    "transformers.utils.generic:TensorType",
)

# Classes rebuilt only with NEWOBJ / copyreg reconstruction and a saved state.
NEW_ONLY: tuple[str, ...] = (
    "accelerate.state:PartialState",
    "transformers.generation.configuration_utils:BaseWatermarkingConfig",
    "transformers.generation.configuration_utils:CompileConfig",
    "transformers.generation.configuration_utils:ContinuousBatchingConfig",
    "transformers.generation.configuration_utils:SynthIDTextWatermarkingConfig",
    "transformers.generation.configuration_utils:WatermarkingConfig",
    "transformers.trainer_pt_utils:AcceleratorConfig",
    "transformers.trainer_pt_utils:LabelSmoother",
    "transformers.training_args:TrainingArguments",
    "transformers.training_args_seq2seq:Seq2SeqTrainingArguments",
)
