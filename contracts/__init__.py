"""What Ember's packages share: the contracts between its parts and the host helpers they all use.

The ``ember.yaml`` schema (:mod:`contracts.stack`), reading config files and telling their
problems (:mod:`contracts.configfile`), durations (:mod:`contracts.durations`), pre-warm windows
(:mod:`contracts.schedule`), the model-name rule (:mod:`contracts.names`), the replica's wire
contract with the activator (:mod:`contracts.replica`), and process, socket and logging helpers.
A leaf: it imports nothing of Ember's other packages, and every one of them may import it.
"""
