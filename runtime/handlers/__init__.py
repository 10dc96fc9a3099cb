"""Model handlers: the seam between the data plane and a model's own code.

:mod:`runtime.handlers.base` holds the ``ModelHandler`` protocol and ``create_handler``;
:mod:`runtime.handlers.options` each handler's ``options`` schema. Importing this package imports
neither (nor numpy or torch): ``ember up`` checks options through it without them.
"""
