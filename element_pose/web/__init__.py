"""The read-only web page over the lab database (``element-pose serve``)."""
