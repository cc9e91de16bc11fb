"""Training recipes (LightningModules): the method trains a network from geogen.models.

- :class:`~geogen.methods.base.GeogenMethod`: the shared base (data description and provenance
  in checkpoints, exact resume, channels-last, ``torch.compile``);
- :class:`~geogen.methods.base.NowcastMethod`: methods that forecast lead frames from context.
"""

from geogen.methods.base import GeogenMethod, NowcastMethod

__all__ = ["GeogenMethod", "NowcastMethod"]
