"""``moefusion demo``: a local web page to fuse a pair and see what the network decided.

Two modules, so that only the page itself needs the optional web framework:

* :mod:`moefusion.demo.logic`: the work (load a pair, fuse it, gate bars, attention
  heat-map, baseline, metrics table, files to download); numpy in, numpy out, no gradio;
* :mod:`moefusion.demo.app`: the Gradio page laying those out, imported only by
  ``moefusion demo`` (``pip install -e ".[demo]"``).
"""
