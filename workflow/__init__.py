"""A runnable sample pipeline: lab tables, the Element activated beside them, and the demo."""

import element_pose  # noqa: F401  (first: it quiets DataJoint's warning about datajoint.json)
