"""Training: multimodal datasets, the two-stage PIDReg loop, DDP helpers.

Import the submodules directly (``from brainage.training.trainer import
train_model``); this file imports nothing, so ``import brainage.training`` does
not load torch.
"""
