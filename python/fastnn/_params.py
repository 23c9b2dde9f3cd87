"""scikit-learn's parameter contract without scikit-learn: the estimator's parameters are the
arguments of its __init__, stored as given; get_params / set_params read and write them."""

from __future__ import annotations

import inspect


class ParamsMixin:
    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        return {k: getattr(self, k) for k in self._get_param_names()}

    def set_params(self, **params):
        valid = self._get_param_names()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"set_params: invalid parameter {k!r} for {type(self).__name__}; "
                                 f"valid parameters: {', '.join(valid)}")
            setattr(self, k, v)
        return self
