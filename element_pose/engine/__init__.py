"""The bundled pose engine: PyTorch + NumPy + OpenCV, never DataJoint.

Modules are imported by their users (``from element_pose.engine.train import train``).

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set
(it only takes effect if torch is not imported yet). With OpenMP's default busy-waiting,
torch slows down 3 to 7 times on a CPU shared with other busy processes (measured on two
cores: 0.40 vs 1.30 training iterations/s); passive waiting costs next to nothing alone.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
