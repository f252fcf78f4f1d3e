"""clipcal — audit and reduce spurious reliance in CLIP representations.

The core library behind the dashboard: benchmarks (``clipcal.data``), backbones (``clipcal.backbones``),
resumable embedding (``clipcal.embed``) into a keyed on-disk store (``clipcal.store``), calibration methods
(``clipcal.methods``) including CFR (You et al., CVPR 2024, arXiv 2403.07241), group metrics
(``clipcal.metrics``), projections and inspections. It never imports Streamlit.
"""

__version__ = "0.1.0"
