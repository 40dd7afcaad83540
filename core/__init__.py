"""rnnpolicy: train recurrent RL agents, export them with explicit hidden state, serve them over gRPC.

The top package is torch-free: the policy spec and observation encoding that every stage shares.
"""

from rnnpolicy.encoding import ObsEncoding, ObsPart
from rnnpolicy.spec import FORMAT_VERSION, ActionSpec, ImageSpec, LmuSpec, ObsNormSpec, PolicySpec, StateTensorSpec

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "ActionSpec",
    "ImageSpec",
    "LmuSpec",
    "ObsEncoding",
    "ObsNormSpec",
    "ObsPart",
    "PolicySpec",
    "StateTensorSpec",
    "__version__",
]
