"""Reliability tests (issue #9): each reproduces one way a run could be lost or misreported."""
