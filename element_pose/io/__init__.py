"""Readers and writers for the file formats labs already have (DeepLabCut, SLEAP, NWB)."""
