"""``fst app``: a local web page to stylize photos and clips, and to train a new style, from a browser.

The page is a Gradio app (``pip install 'fst[app]'``); :mod:`fst.app.cli` imports Gradio only
when the command runs, so the rest of fst never needs it. Stylizing goes through
:class:`fst.infer.Stylizer`; training runs ``python -m fst.train`` in a process of its own
(:mod:`fst.app.training`, :mod:`fst.app.runner`), so a closed browser or a restarted app does
not stop it. Everything the app writes lives in its data folder (:mod:`fst.app.store`),
except finished models, which go to ``$FST_HOME/models`` where every fst command finds them.
"""
