"""pytest plugin for llama.cpp's server suite: start servers per test only.

The suite's session fixture starts every preset once to download its model
(router mode, a reranker, a multimodal model among them). Nothing is
downloaded here and those presets are not under test, so that warm-up is
turned off once collection has imported the suite's ``utils``.
"""

import sys


def pytest_collection_finish(session: object) -> None:
    """Make ``ServerPreset.load_all`` a no-op."""
    utils = sys.modules.get("utils")
    if utils is not None:
        utils.ServerPreset.load_all = staticmethod(lambda: None)
