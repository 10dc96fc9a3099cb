"""Ember's offline analysis: what the event log says after the fact.

The cost report (:mod:`analysis.cost`: replay and billing; :mod:`analysis.cost_groups`,
:mod:`analysis.cost_sleep` and :mod:`analysis.cost_markdown`: groups billed once, sleep savings,
the text; :mod:`analysis.report_html` and :mod:`analysis.charts`: the HTML page and its
matplotlib charts, the ``report`` extra) and the policy simulator (:mod:`analysis.simulate`,
:mod:`analysis.simulate_tiered`: a trace or an event log replayed under a keep-alive policy;
:mod:`analysis.simulate_trace`: the traces; :mod:`analysis.simulate_tokens`: the figures
weighted by tokens).

Never in the serving path nor the activator's image: it reads the activator's event and policy
types (it may import :mod:`contracts` and :mod:`activator`), the activator never imports it, and
the CLI (``ember cost-report``, ``ember simulate``) imports it lazily.
"""
