"""Ember on Knative: rendering and applying Knative/Kubernetes objects."""
