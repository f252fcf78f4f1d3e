"""clipcal — audit and reduce spurious reliance in CLIP representations.

The core library behind the dashboard: benchmarks (``clipcal.data``), backbones (``clipcal.backbones``),
resumable embedding (``clipcal.embed``) into a keyed on-disk store (``clipcal.store``), calibration methods
(``clipcal.methods``) including CFR (You et al., CVPR 2024, arXiv 2403.07241), group metrics
(``clipcal.metrics``), projections and inspections. It never imports Streamlit.
"""

import os as _os

# Torch's OpenMP threads spin-wait by default. On a shared or busy CPU (the dashboard runs training, UMAP and
# the web server at once) spinning threads starve each other: the ERM stage of the demo ran 15-19x slower
# (156 s vs 8-10 s for 20 epochs, 2 cores at load 6, bench/README.md "OpenMP wait policy"). Passive waiting
# costs little when idle. Only effective if set before torch is first imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
