"""The command line (``python -m server ...``): argparse, the inspector's
formatting, the demo, the line client.  The top layer: nothing imports it.
"""
