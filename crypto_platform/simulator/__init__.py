"""The Polygon-protocol simulator: the test double that stands in for Polygon (Massive) locally.

WebSocket ``/crypto`` and REST on one port, a deterministic synthetic market behind both.
Nothing in the platform imports it except the local stack that starts it and the tests.
"""
