"""The Byzantine math: placement, worst-case analysis, vote, aggregators, attacks.

Pure numpy/scipy: no asyncio, no sockets, no torch.
"""
