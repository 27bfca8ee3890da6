"""Stylizing photos with a trained model: the :class:`Stylizer` API, ``fst stylize`` (:mod:`fst.infer.cli`).

Needs only the network and image IO: no training stack (Hydra, Lightning, the loss network).
"""

from fst.infer.stylizer import Stylizer, stylize

__all__ = ["Stylizer", "stylize"]
