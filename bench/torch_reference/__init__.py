"""Our own PyTorch DEKR (HRNet + DEKR head, mmpose's state-dict names) used as the peer of ampkit:
golden files (tests/golden/gen_dekr.py), the step benchmark (bench/torch_dekr_step.py) and the
W32 comparison (bench/torch_reference/compare_w32.py). Runs on torch 1.13 (CPU) and 2.x. See
README.md. Import with `sys.path.insert(0, "<repo>/bench")`.
"""

from .loss import dekr_loss, random_targets
from .model import DEKR, count_parameters, dekr_config, fp16_emulation, hrnet_config, init_mmpose
from .weights import from_ampkit, load_ampkit_state, randomize, state_to_ampkit, to_ampkit

__all__ = ["DEKR", "count_parameters", "dekr_config", "dekr_loss", "fp16_emulation", "from_ampkit", "hrnet_config",
           "init_mmpose", "load_ampkit_state", "random_targets", "randomize", "state_to_ampkit", "to_ampkit"]
