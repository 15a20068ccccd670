"""The one place where ``pyro_ssvi`` imports Pyro internals.

Pyro's autoguide helpers below are not part of its documented public API, so
they are imported here and nowhere else; a Pyro release that moves them breaks
this file only.
"""

from __future__ import annotations

from typing import Any

from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.autoguide.utils import deep_setattr, helpful_support_errors
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.nn.module import _is_module_local_param_enabled
from pyro.ops.tensor_utils import periodic_repeat
from pyro.poutine.util import prune_subsample_sites

__all__ = [
    "InitMessenger",
    "create_optimizer",
    "check_mean_field_requirement",
    "deep_setattr",
    "helpful_support_errors",
    "is_module_local_param_enabled",
    "periodic_repeat",
    "prune_subsample_sites",
]

check_mean_field_requirement = _check_mean_field_requirement


def create_optimizer(optim: Any, param: Any, args: dict[str, Any]) -> Any:
    """Create ``optim``'s torch optimiser for ``param`` now, with ``args``.

    Pyro's ``PyroOptim`` creates them lazily, looking up per-parameter
    arguments by global param-store name (None under module-local params).
    """
    optimizer = optim.pt_optim_constructor([param], **args)
    optim.optim_objs[param] = optimizer
    optim.grad_clip[param] = optim._get_grad_clip(param)
    return optimizer


def is_module_local_param_enabled() -> bool:
    """Whether ``pyro.settings.set(module_local_params=True)`` is in force."""
    return bool(_is_module_local_param_enabled())
