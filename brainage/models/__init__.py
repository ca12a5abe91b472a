"""Models: encoders, the PIDReg module, its losses and the differentiable PID.

Import the submodules directly (``from brainage.models.pid_torch import
gaussian_pid_torch``, ``from brainage.models.losses import cs_cmi_loss``);
this package file imports nothing, so ``import brainage.models`` stays cheap
and does not load torch.
"""
