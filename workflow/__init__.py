"""A runnable sample pipeline: lab tables, the Element activated beside them, and the demo."""
