"""The bundled pose engine: PyTorch + NumPy + OpenCV, never DataJoint."""
