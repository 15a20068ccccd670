"""The one place where ``pyro_ssvi`` touches Pyro's and torch's private internals.

Each private or undocumented name is used here only, and
``tests/test_pyro_compat.py`` checks its behaviour, so a release that changes
it fails loudly there. Checked against pyro-ppl 1.9.1 (commit ff6ae1c) and
1.9.2, and torch 2.14.1. Beyond this file, ``TraceSparseMeanField_ELBO``
overrides the ELBO hooks ``_get_trace`` and ``_differentiable_loss_particle``
(as ``TraceMeanField_ELBO`` does); ``tests/test_elbo.py`` checks it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from pyro.distributions import constraints

# pyro 1.9.2: public module, undocumented helpers of the autoguides.
from pyro.infer.autoguide.guides import prototype_hide_fn as _prototype_hide_fn
from pyro.infer.autoguide.initialization import InitMessenger  # noqa: F401
from pyro.infer.autoguide.utils import (  # noqa: F401
    deep_setattr,
    helpful_support_errors,
)

# pyro 1.9.2: private helper of TraceMeanField_ELBO (model/guide order check).
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement

# pyro 1.9.2: private switch behind pyro.settings "module_local_params".
from pyro.nn.module import _is_module_local_param_enabled
from pyro.ops.tensor_utils import periodic_repeat  # noqa: F401
from pyro.poutine import runtime as _runtime
from pyro.poutine.util import prune_subsample_sites  # noqa: F401

check_mean_field_requirement = _check_mean_field_requirement

#: pyro 1.9.2: the class of ``constraints.softplus_positive`` (private name
#: ``_SoftplusPositive``), subclassed to register a faster transform.
SoftplusPositive: type = type(constraints.softplus_positive)


def is_invalid_values_error(error: BaseException) -> bool:
    """Whether a ``ValueError`` is torch's argument validation rejecting NaN or
    infinite distribution parameters (its text in torch 2.14 and pyro 1.9.2:
    "... found invalid values: ...")."""
    return isinstance(error, ValueError) and "invalid values" in str(error)


def is_module_local_param_enabled() -> bool:
    """Whether ``pyro.settings.set(module_local_params=True)`` is in force."""
    return bool(_is_module_local_param_enabled())


def module_context(module: Any) -> AbstractContextManager:
    """The context a ``PyroModule`` enters in ``__call__`` (pyro 1.9.2): reading
    a ``PyroParam`` inside it synchronises with Pyro's param store."""
    return module._pyro_context


def param_store_name(module: Any, attribute: str) -> str:
    """Name of a ``PyroModule`` attribute in Pyro's global param store
    (pyro 1.9.2: ``_pyro_name`` is the path from the root, e.g. ``"AutoGuideList.0"``).
    """
    prefix = module._pyro_name
    return f"{prefix}.{attribute}" if prefix else attribute


def handler_stack() -> list[Any]:
    """The effect handlers active now, outermost first (pyro 1.9.2:
    ``pyro.poutine.runtime._PYRO_STACK``)."""
    return list(_runtime._PYRO_STACK)


def pyro_samples(module: Any) -> dict[str, Any]:
    """A ``PyroModule``'s ``PyroSample`` attributes, ``{name: prior}``
    (pyro 1.9.2: ``PyroModule._pyro_samples``)."""
    return dict(getattr(module, "__dict__", {}).get("_pyro_samples", {}))


def pyro_optim_optimizers(optim: Any) -> dict[torch.Tensor, torch.optim.Optimizer]:
    """The torch optimisers a ``PyroOptim`` has created, by parameter (pyro
    1.9.2: ``PyroOptim.optim_objs``; LR schedulers unwrapped)."""
    return {
        param: getattr(opt, "optimizer", opt) for param, opt in optim.optim_objs.items()
    }


def pyro_optim_grad_clip(optim: Any) -> dict[torch.Tensor, Any]:
    """A ``PyroOptim``'s gradient-clipping functions by parameter (None: none;
    pyro 1.9.2: the live dict ``PyroOptim.grad_clip``, read only)."""
    return optim.grad_clip


def pyro_optim_objects(optim: Any) -> dict[torch.Tensor, Any]:
    """The live dict of a ``PyroOptim``'s per-parameter optimisers (or LR
    schedulers), ``PyroOptim.optim_objs`` in pyro 1.9.2: read, don't change."""
    return optim.optim_objs


def disable_torch_function_subclass() -> AbstractContextManager:
    """torch 2.14: run torch functions on a tensor subclass as on a plain tensor."""
    return torch._C.DisableTorchFunctionSubclass()


def tensor_version(tensor: torch.Tensor) -> int:
    """torch 2.14: a tensor's in-place modification counter (``_version``)."""
    return int(tensor._version)


def unconstrained_name(attribute: str) -> str:
    """pyro 1.9.2: the attribute under which a ``PyroModule`` keeps a
    ``PyroParam``'s unconstrained tensor (``<name>_unconstrained``)."""
    return attribute + "_unconstrained"


def prototype_hide_fn(guide: Any) -> Any:
    """pyro 1.9.2: the filter ``AutoGuide._setup_prototype`` hides model sites
    with (observed sites and ``infer={"is_auxiliary": True}``)."""
    return getattr(guide, "_prototype_hide_fn", _prototype_hide_fn)


def adopt_prototype(guide: Any, trace: Any) -> None:
    """Make ``trace`` an ``AutoGuide``'s prototype, as its ``_setup_prototype``
    would (pyro 1.9.2): checked against an ``AutoGuideList`` master, its
    vectorised plates recorded in ``_prototype_frames``.

    Raises:
        NotImplementedError: For a sequential ``pyro.plate``, as Pyro does.
    """
    guide.prototype_trace = trace
    if guide.master is not None:
        guide.master()._check_prototype(trace)
    guide._prototype_frames = {}
    for _, site in trace.iter_stochastic_nodes():
        for frame in site["cond_indep_stack"]:
            if not frame.vectorized:
                raise NotImplementedError(
                    "AutoGuide does not support sequential pyro.plate"
                )
            guide._prototype_frames[frame.name] = frame


def create_plates(guide: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """pyro 1.9.2: an ``AutoGuide``'s plates by name (``_create_plates``),
    entered around a site's sample statement as the autoguides do."""
    return guide._create_plates(*args, **kwargs)
