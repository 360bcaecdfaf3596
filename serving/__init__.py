"""Serving: the production fusion model behind BentoML, fed by the Feast online store.

``predictor`` (lookup + model, no HTTP), ``schemas`` (request/response models), ``service`` (the
BentoML service), ``server`` (start/stop/call it), ``materialize`` (load the online store).
"""
